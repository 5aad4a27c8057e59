"""``python -m kyu worker MODULE:WORKER`` runs a `kyu.Worker` defined in a
module; ``python -m kyu enqueue QUEUE KIND [PAYLOAD]`` enqueues one job.
The server is ``--url`` or ``KYU_URL``, the token ``KYU_TOKEN``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any, Optional

from ._errors import KyuError
from .client import Client
from .worker import Worker


def _load(target: str) -> Worker:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"give the worker as MODULE:NAME (e.g. tasks:worker), not {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit(f"cannot import {module_name!r}: {e}") from None
    worker = getattr(module, attr, None)
    if not isinstance(worker, Worker):
        raise SystemExit(f"{target} is not a kyu.Worker (it is {type(worker).__name__})")
    return worker


def main(argv: Optional[list[str]] = None) -> int:
    # The global options are taken before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help="the kyu server (default: KYU_URL, else http://127.0.0.1:7700)"
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="python -m kyu", description=__doc__, parents=[common])
    parser.set_defaults(url=None, verbose=False)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a kyu.Worker until SIGTERM", parents=[common])
    w.add_argument("target", metavar="MODULE:WORKER")
    w.add_argument("--concurrency", type=int, help="override the worker's concurrency")
    w.add_argument("--burst", action="store_true", help="exit once no job is ready and none is running")
    w.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    e = sub.add_parser("enqueue", help="enqueue one job and print it as JSON", parents=[common])
    e.add_argument("queue")
    e.add_argument("kind")
    e.add_argument("payload", nargs="?", help="JSON (default: null)")
    e.add_argument("--id")
    e.add_argument("--delay", type=float, help="seconds")
    e.add_argument("--priority", type=int)
    e.add_argument("--max-attempts", type=int)
    e.add_argument("--timeout", type=float, help="seconds per attempt")
    e.add_argument("--tag", action="append", dest="tags")
    e.add_argument("--wait", type=float, help="wait this many seconds for the job to finish, print it then")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        if args.command == "worker":
            worker = _load(args.target)
            if args.url:
                worker._client_args = {**worker._client_args, "url": args.url}
            if args.concurrency:
                worker.concurrency = args.concurrency
                worker.batch = min(worker.batch, args.concurrency) if worker.batch else args.concurrency
            worker.burst = worker.burst or args.burst
            if args.max_jobs is not None:
                worker.max_jobs = args.max_jobs
            worker.run()
            return 0
        payload: Any = None
        if args.payload is not None:
            try:
                payload = json.loads(args.payload)
            except ValueError as err:
                print(f"the payload is not JSON: {err}", file=sys.stderr)
                return 2
        opts = {
            k: v
            for k, v in {
                "id": args.id,
                "delay": args.delay,
                "priority": args.priority,
                "max_attempts": args.max_attempts,
                "timeout": args.timeout,
                "tags": args.tags,
            }.items()
            if v is not None
        }
        with Client(args.url) as client:
            job = client.enqueue(args.queue, args.kind, payload, **opts)
            if args.wait is not None:
                job = client.result(job.id, wait=args.wait)
            print(json.dumps(job.raw))
        return 0 if args.wait is None or job.state == "completed" else 1
    except KyuError as err:
        print(f"kyu: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
