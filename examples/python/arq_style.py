"""arq's worker settings on kyu: ``max_jobs``, ``job_timeout``,
``keep_result``, custom job ids, ``Retry(defer=...)``, cron jobs, and the
dead-letter queue people build by hand (here: failed jobs, redriven by
filter).

    KYU_URL=http://127.0.0.1:7700 python examples/python/arq_style.py

It runs a worker in the background, enqueues, checks what happened, and
exits 0.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import timedelta
from typing import Any

import kyu

QUEUE = os.environ.get("KYU_EXAMPLE_QUEUE", f"arq-{uuid.uuid4().hex[:6]}")
client = kyu.Client()

# arq: WorkerSettings.max_jobs = 10, job_timeout = 2 s
worker = kyu.Worker(client, queues=[QUEUE], concurrency=10, poll=1)
flaky_calls: dict[str, int] = {}


@worker.task("download")
async def download(payload: Any, ctx: kyu.AsyncContext) -> Any:
    # arq: raise Retry(defer=ctx['job_try'] * 0.1)
    flaky_calls[payload["url"]] = flaky_calls.get(payload["url"], 0) + 1
    if ctx.attempt < 3:
        raise kyu.Retry(delay=ctx.attempt * 0.1, message=f"{payload['url']} answered 503")
    return {"url": payload["url"], "bytes": 1234}


@worker.task("slow")
async def slow(payload: Any, ctx: kyu.AsyncContext) -> Any:
    import asyncio

    await asyncio.sleep(30)  # longer than its timeout


@worker.task("heartbeat")
def heartbeat(payload: Any, ctx: kyu.Context) -> Any:
    return "tick"


@worker.task("charge")
def charge(payload: Any, ctx: kyu.Context) -> Any:
    if payload.get("card") == "expired":
        raise kyu.NoRetry("card expired")
    return "charged"


def main() -> None:
    t = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    t.start()
    try:
        # arq: await redis.enqueue_job('download', url, _job_id='dl-1')
        job = client.enqueue(
            QUEUE, "download", {"url": "https://example.com"}, id=f"{QUEUE}-dl-1", keep_result=timedelta(hours=1)
        )
        assert client.enqueue(QUEUE, "download", {"url": "x"}, id=f"{QUEUE}-dl-1").duplicate, "the same id: no new job"
        done = client.result(job.id, wait=30)
        assert done.state == "completed" and done.attempt == 3, done
        assert [e.message for e in done.errors] == ["https://example.com answered 503"] * 2
        print(f"download: completed on attempt {done.attempt} after two deferred retries")

        # arq: job_timeout
        slow_job = client.enqueue(QUEUE, "slow", timeout=0.5, max_attempts=1)
        slow_done = client.result(slow_job.id, wait=30)
        assert (slow_done.state, slow_done.error) == ("failed", "timeout"), slow_done
        print("slow: failed with 'timeout' after 0.5 s")

        # arq: cron(heartbeat, second={0, 30}); run it now once instead of waiting
        client.schedule(f"{QUEUE}-heartbeat", "*/30 * * * * *", QUEUE, "heartbeat")
        tick = client.result(client.run_schedule(f"{QUEUE}-heartbeat").id, wait=30)
        assert tick.result == "tick"
        client.unschedule(f"{QUEUE}-heartbeat")
        print("cron: the schedule's job ran")

        # The dead-letter queue: failed jobs stay, listed and redriven by filter.
        bad = [client.enqueue(QUEUE, "charge", {"card": "expired", "n": i}, max_attempts=1) for i in range(3)]
        for b in bad:
            assert client.result(b.id, wait=30).state == "failed"
        dead = list(client.jobs(queue=QUEUE, state="failed", kind="charge"))
        assert len(dead) == 3 and all(d.error == "card expired" for d in dead)
        assert client.retry_failed(queue=QUEUE, kind="charge", error="card expired") == 3
        for b in bad:
            assert client.result(b.id, wait=30).state == "failed"
        assert client.delete_failed(queue=QUEUE, kind="charge") == 3
        print("dead letters: 3 listed, redriven, failed again, deleted")
    finally:
        worker.stop()
        t.join(30)
    print("arq-style example: ok")


if __name__ == "__main__":
    main()
