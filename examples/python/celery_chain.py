"""A Celery canvas on kyu: ``chain(fetch.s(url), parse.s(), store.s())``.
When a link fails, Celery's chain is over, and re-running it re-runs the
links that had succeeded. In kyu the chain is a flow of jobs: retry the
failed link with its dependents and only it (and what waited on it) runs
again, with the earlier results kept.

    KYU_URL=http://127.0.0.1:7700 python examples/python/celery_chain.py
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import kyu

QUEUE = os.environ.get("KYU_EXAMPLE_QUEUE", f"celery-{uuid.uuid4().hex[:6]}")
client = kyu.Client()
worker = kyu.Worker(client, queues=[QUEUE], concurrency=2, poll=1)
runs = {"fetch": 0, "parse": 0, "store": 0}
parser_fixed = threading.Event()


@worker.task("fetch")
def fetch(url: Any, ctx: kyu.Context) -> Any:
    runs["fetch"] += 1
    return f"<html>{url}</html>"


@worker.task("parse")
def parse(payload: Any, ctx: kyu.Context) -> Any:
    runs["parse"] += 1
    if not parser_fixed.is_set():
        raise kyu.NoRetry("parser bug: unexpected <html>")
    (html,) = ctx.dependency_results.values()
    return {"title": html[6:-7]}


@worker.task("store")
def store(payload: Any, ctx: kyu.Context) -> Any:
    runs["store"] += 1
    (parsed,) = ctx.dependency_results.values()
    return {"stored": parsed["title"]}


def main() -> None:
    t = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    t.start()
    try:
        flow = client.flow(
            kyu.chain(
                kyu.task("fetch", "example.com", queue=QUEUE),
                kyu.task("parse", queue=QUEUE),
                kyu.task("store", queue=QUEUE),
            )
        )
        assert client.result(flow.root, wait=30).state == "failed", "store failed: its dependency did"
        parse_id = client.get(flow.root).depends_on[0]
        assert client.get(parse_id).error == "parser bug: unexpected <html>"
        parser_fixed.set()  # deploy the fix, then redrive the failed link
        client.retry(parse_id, dependents=True)
        done = client.result(flow.root, wait=30)
        assert done.state == "completed" and done.result == {"stored": "example.com"}, done
        assert runs == {"fetch": 1, "parse": 2, "store": 1}, runs
        print(f"runs per link: {runs} (fetch was not run again)")
    finally:
        worker.stop()
        t.join(30)
    print("Celery-style example: ok")


if __name__ == "__main__":
    main()
