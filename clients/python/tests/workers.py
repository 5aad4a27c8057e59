"""Workers the tests run as real processes (``python -m kyu worker
tests.workers:NAME``). Each records every run in the directory named by
KYU_TEST_RUNS, one file per job id and attempt, so a test can count runs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import kyu

QUEUE = os.environ.get("KYU_TEST_QUEUE", "py-proc")
RUNS = Path(os.environ.get("KYU_TEST_RUNS", "."))


def _record(ctx: kyu.Context, what: str) -> None:
    (RUNS / f"{ctx.job_id}.{ctx.attempt}.{what}.{os.getpid()}").touch()


slow = kyu.Worker(queues=[QUEUE], concurrency=4, lease=1, poll=1, shutdown_grace=20)


@slow.task("sleep")
def sleep(payload: Any, ctx: kyu.Context) -> Any:
    _record(ctx, "start")
    time.sleep(float(payload["seconds"]))
    _record(ctx, "end")
    return {"slept": payload["seconds"], "pid": os.getpid()}
