"""`kyu.Worker` against a real server: in-process for the behaviour of
handlers, as real processes for SIGTERM and SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import kyu

from .conftest import Server, wait_until


@contextmanager
def running(worker: kyu.Worker) -> Iterator[kyu.Worker]:
    """Runs ``worker`` in a thread for the block, then stops it."""
    errors: list[BaseException] = []

    def main() -> None:
        try:
            worker.run(install_signal_handlers=False)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=main, daemon=True)
    t.start()
    wait_until(lambda: worker._loop is not None or errors, what="the worker to start")
    try:
        yield worker
    finally:
        worker.stop()
        t.join(60)
        assert not t.is_alive(), "the worker did not stop"
        if errors:
            raise errors[0]


def finished(client: kyu.Client, job_id: str, timeout: float = 30) -> kyu.Job:
    return client.result(job_id, wait=timeout)


def test_concurrency_is_respected_and_every_job_completes(client: kyu.Client, server: Server, q: str) -> None:
    worker = kyu.Worker(server.url, queues=[q], concurrency=4, poll=1)
    lock = threading.Lock()
    now = {"running": 0, "most": 0}

    @worker.task("sleepy")
    def sleepy(payload: Any, ctx: kyu.Context) -> Any:
        with lock:
            now["running"] += 1
            now["most"] = max(now["most"], now["running"])
        time.sleep(0.2)
        with lock:
            now["running"] -= 1
        return payload * 2

    ids = client.enqueue_many([{"queue": q, "kind": "sleepy", "payload": i} for i in range(12)])
    with running(worker):
        results = [finished(client, i) for i in ids]
    assert [j.result for j in results] == [i * 2 for i in range(12)]
    assert now["most"] == 4, now


def test_steps_survive_a_retry(client: kyu.Client, server: Server, q: str) -> None:
    worker = kyu.Worker(server.url, queues=[q], concurrency=2, poll=1)
    calls: dict[str, int] = {"download": 0, "transform": 0}

    @worker.task("etl")
    def etl(payload: Any, ctx: kyu.Context) -> Any:
        def download() -> list[int]:
            calls["download"] += 1
            return [1, 2, 3]

        def transform() -> int:
            calls["transform"] += 1
            if ctx.attempt == 1:
                raise RuntimeError("transform broke on the first attempt")
            return sum(rows)

        rows = ctx.step("download", download)
        total = ctx.step("transform", transform)
        ctx.progress({"done": 2})
        return total

    job = client.enqueue(q, "etl", backoff={"kind": "fixed", "delay_ms": 10})
    with running(worker):
        done = finished(client, job.id)
    assert done.state == "completed" and done.result == 6 and done.attempt == 2
    assert calls == {"download": 1, "transform": 2}, "a finished step does not run again"
    assert done.checkpoint == {"steps": {"download": [1, 2, 3], "transform": 6}}
    assert "RuntimeError: transform broke on the first attempt" in done.errors[0].message
    assert "Traceback (most recent call last)" in done.errors[0].message, "the full traceback"


def test_retry_noretry_snooze(client: kyu.Client, server: Server, q: str) -> None:
    worker = kyu.Worker(server.url, queues=[q], concurrency=3, poll=1)
    seen: dict[str, list[int]] = {"retry": [], "snooze": []}

    @worker.task("retry")
    def retry(payload: Any, ctx: kyu.Context) -> Any:
        seen["retry"].append(ctx.attempt)
        if ctx.attempt == 1:
            raise kyu.Retry(delay=0.2, message="not yet")
        return "ok"

    @worker.task("noretry")
    def noretry(payload: Any, ctx: kyu.Context) -> Any:
        raise kyu.NoRetry("the address is invalid")

    @worker.task("snooze")
    def snooze(payload: Any, ctx: kyu.Context) -> Any:
        seen["snooze"].append(ctx.attempt)
        if len(seen["snooze"]) == 1:
            raise kyu.Snooze(delay=0.1)
        return "woke"

    r = client.enqueue(q, "retry", max_attempts=3)
    n = client.enqueue(q, "noretry", max_attempts=5)
    s = client.enqueue(q, "snooze", max_attempts=1)
    with running(worker):
        r, n, s = finished(client, r.id), finished(client, n.id), finished(client, s.id)
    assert r.state == "completed" and seen["retry"] == [1, 2] and r.errors[0].message == "not yet"
    assert n.state == "failed" and n.attempt == 1 and n.error == "the address is invalid"
    assert s.state == "completed" and seen["snooze"] == [1, 1], "a snooze gives its attempt back"


def test_timeouts_cancel_async_handlers_and_tell_plain_ones(client: kyu.Client, server: Server, q: str) -> None:
    worker = kyu.Worker(server.url, queues=[q], concurrency=2, poll=1)
    noticed = threading.Event()

    @worker.task("slow-async")
    async def slow_async(payload: Any, ctx: kyu.AsyncContext) -> Any:
        await asyncio.sleep(30)

    @worker.task("slow-plain")
    def slow_plain(payload: Any, ctx: kyu.Context) -> Any:
        deadline = time.monotonic() + 30
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.cancelled and ctx.cancel_reason == "timeout":
            noticed.set()
        return "too late"

    a = client.enqueue(q, "slow-async", timeout=0.3, max_attempts=1)
    p = client.enqueue(q, "slow-plain", timeout=0.3, max_attempts=1)
    started = time.monotonic()
    with running(worker):
        a, p = finished(client, a.id), finished(client, p.id)
        assert noticed.wait(10), "the plain handler saw ctx.cancelled"
    assert time.monotonic() - started < 15
    assert (a.state, a.error) == ("failed", "timeout")
    assert (p.state, p.error) == ("failed", "timeout")


def test_async_handlers_progress_log_and_dynamic_children(client: kyu.Client, server: Server, q: str) -> None:
    worker = kyu.Worker(server.url, queues=[q], concurrency=4, poll=1)
    parent_runs: list[int] = []

    @worker.task("child")
    async def child(payload: Any, ctx: kyu.AsyncContext) -> Any:
        return payload * 10

    @worker.task("parent")
    async def parent(payload: Any, ctx: kyu.AsyncContext) -> Any:
        parent_runs.append(ctx.attempt)
        ctx.log(f"run {len(parent_runs)}")
        prepared = await ctx.step("prepare", lambda: list(range(3)))
        results = await ctx.wait_for_children([{"queue": q, "kind": "child", "payload": i} for i in prepared])
        ctx.progress({"children": len(results)})
        return sorted(results.values())

    job = client.enqueue(q, "parent")
    with running(worker):
        done = finished(client, job.id)
        assert done.state == "completed" and done.result == [0, 10, 20]
        assert parent_runs == [1, 1], "waiting for children gives the attempt back"
        assert len(done.depends_on) == 3 and all(d.startswith(job.id + ":children:") for d in done.depends_on)
        wait_until(lambda: [x.line for x in client.log(job.id)] == ["run 1", "run 2"], what="the log")
        assert client.get(job.id).progress == {"children": 3}
        types = [e.type for e in client.events(job.id)]
        assert "waiting" in types and types[-1] == "completed", types


def test_chain_reruns_only_the_failed_link(client: kyu.Client, server: Server, q: str) -> None:
    worker = kyu.Worker(server.url, queues=[q], concurrency=2, poll=1)
    runs: dict[str, int] = {"fetch": 0, "parse": 0, "store": 0}
    broken = {"parse": True}

    def link(name: str) -> Callable[[Any, kyu.Context], Any]:
        def handler(payload: Any, ctx: kyu.Context) -> Any:
            runs[name] += 1
            if broken.get(name):
                raise kyu.NoRetry(f"{name} is broken")
            return [name, *[v for r in ctx.dependency_results.values() for v in r]]

        return handler

    for name in runs:
        worker.task(name)(link(name))
    flow = client.flow(kyu.chain(*(kyu.task(n, queue=q) for n in ("fetch", "parse", "store"))))
    with running(worker):
        assert finished(client, flow.root).state == "failed"
        parse_id = client.get(flow.root).depends_on[0]
        assert client.get(parse_id).state == "failed"
        broken["parse"] = False
        client.retry(parse_id, dependents=True)
        done = finished(client, flow.root)
    assert done.state == "completed" and done.result == ["store", "parse", "fetch"]
    assert runs == {"fetch": 1, "parse": 2, "store": 1}


def test_results_that_cannot_be_stored_fail_without_retry(client: kyu.Client, server: Server, q: str) -> None:
    worker = kyu.Worker(server.url, queues=[q], concurrency=1, poll=1)

    @worker.task("huge")
    def huge(payload: Any, ctx: kyu.Context) -> Any:
        return "x" * (2 * 1024 * 1024)

    @worker.task("not-json")
    def not_json(payload: Any, ctx: kyu.Context) -> Any:
        return object()

    h = client.enqueue(q, "huge", max_attempts=5)
    n = client.enqueue(q, "not-json", max_attempts=5)
    with running(worker):
        h, n = finished(client, h.id), finished(client, n.id)
    assert h.state == "failed" and h.attempt == 1 and "over the limit" in (h.error or "")
    assert n.state == "failed" and n.attempt == 1 and "not JSON" in (n.error or "")


def test_operator_cancel_reaches_the_handler(client: kyu.Client, server: Server, q: str) -> None:
    worker = kyu.Worker(server.url, queues=[q], concurrency=1, poll=1, lease=0.6)
    started = threading.Event()

    @worker.task("long")
    async def long(payload: Any, ctx: kyu.AsyncContext) -> Any:
        started.set()
        await asyncio.sleep(60)

    job = client.enqueue(q, "long")
    with running(worker):
        assert started.wait(20)
        client.cancel(job.id)
        done = finished(client, job.id)
    assert done.state == "cancelled"


def run_files(d: Path, suffix: str) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.split(".")[-2] == suffix)


def test_sigterm_finishes_the_jobs_in_flight(client: kyu.Client, spawn_worker: Any, q: str, tmp_path: Path) -> None:
    env = {"KYU_TEST_QUEUE": q, "KYU_TEST_RUNS": str(tmp_path)}
    ids = client.enqueue_many([{"queue": q, "kind": "sleep", "payload": {"seconds": 1.0}} for _ in range(4)])
    proc = spawn_worker("slow", env=env)
    wait_until(lambda: len(run_files(tmp_path, "start")) == 4, what="four jobs to start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    jobs = [client.get(i) for i in ids]
    assert [j.state for j in jobs] == ["completed"] * 4, "jobs in flight finish within the grace"
    assert len(run_files(tmp_path, "end")) == 4


def test_sigkilled_worker_jobs_complete_once_elsewhere(
    client: kyu.Client, spawn_worker: Any, q: str, tmp_path: Path
) -> None:
    env = {"KYU_TEST_QUEUE": q, "KYU_TEST_RUNS": str(tmp_path)}
    ids = client.enqueue_many([{"queue": q, "kind": "sleep", "payload": {"seconds": 0.5}} for _ in range(6)])
    doomed = spawn_worker("slow", env=env)
    wait_until(lambda: len(run_files(tmp_path, "start")) >= 2, what="the first worker to start jobs")
    doomed.kill()
    doomed.wait()
    spawn_worker("slow", env=env)
    jobs = [finished(client, i, timeout=60) for i in ids]
    assert [j.state for j in jobs] == ["completed"] * 6
    starts, ends = run_files(tmp_path, "start"), run_files(tmp_path, "end")
    held = {n.split(".")[0] for n in starts if n.endswith(f".{doomed.pid}")} - {
        n.split(".")[0] for n in ends if n.endswith(f".{doomed.pid}")
    }
    assert held, "the killed worker held jobs when it died"
    for j in jobs:
        finishers = [n for n in ends if n.startswith(j.id + ".")]
        assert len(finishers) == 1, f"{j.id} ran to its end once: {finishers}"
        if j.id in held:
            assert j.result["pid"] != doomed.pid and any("lease expired" in e.message for e in j.errors), j


def test_a_lost_lease_ends_the_handlers_writes(client: kyu.Client, server: Server, q: str) -> None:
    # No prefetch: the job must not be claimed again while its first run still waits.
    worker = kyu.Worker(server.url, queues=[q], concurrency=1, poll=1, lease=0.3, prefetch=0)

    async def no_heartbeats() -> None:
        await asyncio.Event().wait()

    worker._heartbeater = no_heartbeats  # type: ignore[method-assign]  # the first run's lease runs out
    seen: list[str] = []

    @worker.task("slow")
    def slow(payload: Any, ctx: kyu.Context) -> Any:
        if ctx.attempt == 1:
            wait_until(lambda: client.get(ctx.job_id).state != "running", what="the lease to expire")
            try:
                ctx.save_checkpoint({"from": "the first run"})
            except kyu.LeaseLost:
                seen.append("lost")
                raise
        return ctx.checkpoint

    job = client.enqueue(q, "slow", backoff={"kind": "fixed", "delay_ms": 10})
    with running(worker):
        done = finished(client, job.id)
    assert seen == ["lost"], "the stale write was refused and ended the handler"
    assert done.state == "completed" and done.attempt == 2 and done.result is None
    assert done.errors[0].message == "lease expired"


def test_stop_gives_prefetched_jobs_back_at_once(client: kyu.Client, server: Server, q: str) -> None:
    worker = kyu.Worker(server.url, queues=[q], concurrency=1, prefetch=2, poll=1)
    started = threading.Event()

    @worker.task("slow")
    def slow(payload: Any, ctx: kyu.Context) -> Any:
        started.set()
        time.sleep(0.5)
        return "done"

    ids = client.enqueue_many([{"queue": q, "kind": "slow"} for _ in range(3)])
    with running(worker):
        assert started.wait(20)
        wait_until(lambda: sum(client.get(i).state == "running" for i in ids) == 3, what="two more jobs prefetched")
    jobs = [client.get(i) for i in ids]
    assert sorted(j.state for j in jobs) == ["completed", "queued", "queued"], jobs
    assert all(j.attempt == 0 for j in jobs if j.state == "queued"), "a prefetched job spends no attempt"
