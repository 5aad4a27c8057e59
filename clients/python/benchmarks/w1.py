"""W1 (../shared/BENCHMARKS.md) for the Python worker: enqueue 20,000 no-op
jobs in batches, then time one `kyu.Worker` (concurrency 16) from its start
until all are completed. Prints one JSON line.

    python benchmarks/w1.py --url http://127.0.0.1:7700 [--jobs 20000] [--handler async|thread]

Run it beside ``kyu bench --via http`` on the same server's database to
compare with kyu's Rust worker in the same run.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import kyu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--handler", choices=["async", "thread"], default="async")
    p.add_argument("--batch", type=int, default=None, help="most jobs per claim (default: the worker's own)")
    p.add_argument("--prefetch", type=int, default=None, help="jobs held ahead of slots (default: the worker decides)")
    args = p.parse_args()
    queue = f"w1-{uuid.uuid4().hex[:8]}"
    client = kyu.Client(args.url)
    started = time.perf_counter()
    for start in range(0, args.jobs, 1000):
        n = min(1000, args.jobs - start)
        client.enqueue_many([{"queue": queue, "kind": "noop", "payload": None} for _ in range(n)])
    enqueue_s = time.perf_counter() - started

    worker = kyu.Worker(
        client, queues=[queue], concurrency=args.concurrency, batch=args.batch, prefetch=args.prefetch, poll=1
    )
    done = threading.Event()

    def count() -> None:
        if worker.processed >= args.jobs:
            done.set()

    if args.handler == "async":

        @worker.task("noop")
        async def noop_async(payload: Any, ctx: kyu.AsyncContext) -> Any:
            count()
            return None

    else:

        @worker.task("noop")
        def noop_thread(payload: Any, ctx: kyu.Context) -> Any:
            count()
            return None

    t0 = time.perf_counter()
    t = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    t.start()
    # Completed means reported and acknowledged: wait on the server's count.
    while True:
        (q,) = [x for x in client.queues() if x.name == queue] or [None]
        if q is not None and q.counts.get("completed", 0) >= args.jobs:
            break
        time.sleep(0.05)
    process_s = time.perf_counter() - t0
    worker.stop()
    t.join(30)
    print(
        json.dumps(
            {
                "handler": args.handler,
                "jobs": args.jobs,
                "concurrency": args.concurrency,
                "enqueue_jobs_per_s": round(args.jobs / enqueue_s),
                "process_jobs_per_s": round(args.jobs / process_s),
            }
        )
    )


if __name__ == "__main__":
    main()
