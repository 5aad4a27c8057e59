"""The worker side of the controller/worker example: a `kyu.Worker` that
drains the ``images`` queue K jobs at a time in parallel, with retries and
timeouts kept by kyu instead of an ``attempts`` column.

    KYU_URL=http://127.0.0.1:7700 python -m kyu worker worker_pool:worker
    # or: python examples/python/worker_pool.py
"""

from __future__ import annotations

import os
import time
from typing import Any

import kyu

QUEUE = os.environ.get("KYU_EXAMPLE_QUEUE", "images")
K = int(os.environ.get("KYU_EXAMPLE_CONCURRENCY", "4"))

worker = kyu.Worker(queues=[QUEUE], concurrency=K, poll=1)


@worker.task("resize")
def resize(payload: Any, ctx: kyu.Context) -> Any:
    ctx.log(f"resizing {payload['image']} to {payload['width']} px")
    time.sleep(0.05)  # the real work
    return {"image": payload["image"], "width": payload["width"], "bytes": 1000 + payload["width"]}


@worker.task("always_fails")
def always_fails(payload: Any, ctx: kyu.Context) -> Any:
    raise kyu.NoRetry(payload.get("why", "this job always fails"))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    worker.run()
