"""Every client call against a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import kyu

from .conftest import Server, free_port


def test_enqueue_with_every_option_and_read_it_back(client: kyu.Client, q: str) -> None:
    dep = client.enqueue(q, "dep", {"n": 0})
    job = client.enqueue(
        q,
        "send",
        {"to": "a@example.com"},
        id=f"{q}-1",
        priority=5,
        delay=timedelta(hours=1),
        max_attempts=3,
        backoff={"kind": "fixed", "delay_ms": 250},
        timeout=2.5,
        keep_result=60,
        keep_failed=timedelta(days=1),
        unique_key=f"{q}-u",
        unique_for=30,
        depends_on=[dep],
        continue_on_failure=True,
        tags=["a", "b"],
        group="tenant-1",
    )
    assert job.id == f"{q}-1" and job.queue == q and job.kind == "send"
    assert job.payload == {"to": "a@example.com"}
    assert job.state == "waiting" and job.priority == 5 and job.max_attempts == 3
    assert job.raw["timeout_ms"] == 2500 and job.raw["keep_result_ms"] == 60_000
    assert job.raw["keep_failed_ms"] == 86_400_000 and job.raw["unique_for_ms"] == 30_000
    assert job.depends_on == [dep.id] and job.tags == ["a", "b"] and job.group == "tenant-1"
    assert job.run_at is not None and job.run_at > datetime.now(timezone.utc) + timedelta(minutes=59)
    assert not job.duplicate
    again = client.enqueue(q, "send", {"to": "someone else"}, id=f"{q}-1")
    assert again.duplicate and again.payload == {"to": "a@example.com"}, "an id that exists creates nothing"
    assert client.get(job.id).id == job.id
    at = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    assert client.enqueue(q, "later", run_at=at).run_at == at


def test_errors_are_exceptions_named_after_the_api_codes(client: kyu.Client, q: str) -> None:
    with pytest.raises(kyu.NotFound) as nf:
        client.get("no-such-job")
    assert nf.value.status == 404 and nf.value.code == "not_found" and "not found" in str(nf.value)
    with pytest.raises(kyu.Invalid) as inv:
        client.enqueue(q, "k", max_attempts=0)
    assert "max_attempts" in str(inv.value)
    with pytest.raises(kyu.Invalid):
        client.enqueue("bad queue name!", "k")
    with pytest.raises(TypeError, match="unknown job option 'retries'"):
        client.enqueue(q, "k", retries=3)
    with pytest.raises(TypeError, match="delay or delay_ms"):
        client.enqueue(q, "k", delay=1, delay_ms=5)
    with pytest.raises(ValueError, match="must not be negative"):
        client.enqueue(q, "k", delay=-1)
    job = client.enqueue(q, "k")
    client.cancel(job.id)
    with pytest.raises(kyu.Conflict):
        client.cancel(job.id)
    assert issubclass(kyu.Conflict, kyu.KyuError)


def test_enqueue_many_is_all_or_nothing(client: kyu.Client, q: str) -> None:
    ids = client.enqueue_many([{"queue": q, "kind": "k", "payload": i, "delay": 60} for i in range(3)])
    assert len(ids) == 3
    assert [j.payload for j in client.jobs(queue=q)] == [2, 1, 0], "newest first"
    with pytest.raises(kyu.Invalid):
        client.enqueue_many(
            [{"queue": q, "kind": "k", "id": f"{q}-new"}, {"queue": q, "kind": "k", "priority": "high"}]
        )
    with pytest.raises(kyu.NotFound):
        client.get(f"{q}-new")


def test_jobs_iterates_every_page(client: kyu.Client, q: str) -> None:
    client.enqueue_many(
        [{"queue": q, "kind": "k", "payload": i, "tags": ["even" if i % 2 == 0 else "odd"]} for i in range(1100)]
    )
    assert sum(1 for _ in client.jobs(queue=q)) == 1100
    assert sum(1 for _ in client.jobs(queue=q, tag="odd")) == 550
    assert sum(1 for _ in client.jobs(queue=q, state="completed")) == 0


def test_queues_pause_resume_and_limits(client: kyu.Client, q: str) -> None:
    client.enqueue(q, "k")
    (mine,) = [x for x in client.queues() if x.name == q]
    assert mine.counts.get("queued") == 1 and not mine.paused and mine.oldest_ready_at is not None
    assert client.pause(q).paused
    assert not client.resume(q).paused
    limited = client.set_limits(
        q, concurrency=3, rate_limit=(10, 1.5), group_concurrency=1, timeout=timedelta(minutes=2)
    )
    assert limited.concurrency == 3 and limited.rate_limit == {"max": 10, "per_ms": 1500}
    assert limited.group_concurrency == 1 and limited.timeout_ms == 120_000
    partly = client.set_limits(q, concurrency=None)
    assert partly.concurrency is None and partly.group_concurrency == 1, "an omitted limit stays"
    with pytest.raises(TypeError):
        client.set_limits(q)


def test_schedules(client: kyu.Client, q: str) -> None:
    s = client.schedule(
        f"{q}-nightly", "0 3 * * *", q, "report", {"full": True}, timezone="Europe/Paris", tags=["cron"]
    )
    assert s.cron == "0 3 * * *" and s.timezone == "Europe/Paris" and s.enabled and s.next_run_at is not None
    assert any(x.name == s.name for x in client.schedules())
    assert client.get_schedule(s.name).job["kind"] == "report"
    job = client.run_schedule(s.name)
    assert job.queue == q and job.kind == "report" and job.payload == {"full": True}
    assert not client.schedule(s.name, "0 3 * * *", q, "report", enabled=False).enabled
    with pytest.raises(kyu.Invalid):
        client.schedule(f"{q}-bad", "not a cron", q, "report")
    client.unschedule(s.name)
    with pytest.raises(kyu.NotFound):
        client.get_schedule(s.name)


def test_result_waits_and_times_out(client: kyu.Client, server: Server, q: str) -> None:
    job = client.enqueue(q, "k")
    with pytest.raises(kyu.Timeout):
        client.result(job.id, wait=0.3)
    assert client.result(job.id).state == "queued", "without wait it answers at once"

    def finish() -> None:
        with kyu.Client(server.url) as c:
            claimed = c.call(kyu._calls.claim([q], "t", 1, 10_000, 5_000))["jobs"][0]
            c.call(
                kyu._calls.reports(
                    [{"outcome": "complete", "id": claimed["id"], "token": claimed["token"], "result": 7}]
                )
            )

    t = threading.Thread(target=finish)
    t.start()
    done = client.result(job.id, wait=20)
    t.join()
    assert done.state == "completed" and done.result == 7 and done.finished


def test_dead_letter_redrive_and_delete_by_filter(client: kyu.Client, q: str) -> None:
    for i in range(3):
        client.enqueue(q, "k", id=f"{q}-{i}", max_attempts=1)
    claimed = client.call(kyu._calls.claim([q], "t", 3, 10_000, 0))["jobs"]
    reports = [
        {"outcome": "fail", "id": j["id"], "token": j["token"], "error": "db down" if j["id"].endswith("0") else "bug"}
        for j in claimed
    ]
    client.call(kyu._calls.reports(reports))
    assert {j.state for j in client.jobs(queue=q)} == {"failed"}
    assert client.get(f"{q}-0").error == "db down"
    assert client.retry_failed(queue=q, error="db down") == 1
    assert client.get(f"{q}-0").state == "queued"
    assert client.delete_failed(queue=q, since=datetime.now(timezone.utc) - timedelta(hours=1)) == 2
    assert [j.id for j in client.jobs(queue=q)] == [f"{q}-0"]
    client.cancel(f"{q}-0")
    retried = client.retry(f"{q}-0")
    assert retried.state == "queued"
    client.cancel(f"{q}-0")
    client.delete(f"{q}-0")
    with pytest.raises(kyu.NotFound):
        client.get(f"{q}-0")


def test_events_log_workers_stats(client: kyu.Client, q: str) -> None:
    job = client.enqueue(q, "k")
    claimed = client.call(kyu._calls.claim([q], f"{q}-w", 1, 10_000, 0))["jobs"][0]
    client.call(kyu._calls.progress(job.id, claimed["token"], {"done": 1}))
    client.call(kyu._calls.append_log(job.id, claimed["token"], ["hello", "world"]))
    client.call(kyu._calls.reports([{"outcome": "complete", "id": job.id, "token": claimed["token"], "result": None}]))
    types = [e.type for e in client.events(job.id)]
    assert types[0] == "enqueued" and "claimed" in types and types[-1] == "completed", types
    assert [line.line for line in client.log(job.id)] == ["hello", "world"]
    assert [line.line for line in client.log(job.id, attempt=2)] == []
    assert any(w.name == f"{q}-w" for w in client.workers())
    series = client.stats(queue=q, since=datetime.now(timezone.utc) - timedelta(minutes=5))
    assert sum(p["completed"] for p in series) == 1


def test_flows_and_canvas(client: kyu.Client, q: str) -> None:
    c = kyu.chain(kyu.task("fetch", 1, queue=q), kyu.task("parse", queue=q), kyu.task("store", queue=q))
    flow = client.flow(c)
    root = client.get(flow.root)
    assert root.kind == "store" and len(flow.ids) == 3
    parse = client.get(root.depends_on[0])
    assert parse.kind == "parse" and client.get(parse.depends_on[0]).kind == "fetch"
    chord = client.flow(kyu.chord([kyu.task("part", i, queue=q) for i in range(3)], kyu.task("sum", queue=q)))
    assert len(client.get(chord.root).depends_on) == 3
    by_hand = client.flow(
        kyu.tree(kyu.task("parent", queue=q), kyu.task("a", queue=q), kyu.tree(kyu.task("b", queue=q)))
    )
    assert len(by_hand.ids) == 3
    with pytest.raises(TypeError, match="one root"):
        kyu.chain(kyu.task("a"), kyu.group(kyu.task("b"), kyu.task("c")))
    with pytest.raises(TypeError, match="only start a chain"):
        kyu.chain(kyu.task("a"), kyu.group(kyu.task("b")), kyu.task("c"))
    ids = client.enqueue_many(kyu.group(kyu.task("x", queue=q), kyu.task("y", queue=q)).jobs())
    assert len(ids) == 2


async def test_async_client_covers_the_same_calls(server: Server, q: str) -> None:
    async with kyu.AsyncClient(server.url) as c:
        job = await c.enqueue(q, "k", {"a": 1}, delay=30, id=f"{q}-a")
        assert (await c.get(job.id)).payload == {"a": 1}
        assert (await c.enqueue(q, "k", id=f"{q}-a")).duplicate
        ids = await c.enqueue_many([{"queue": q, "kind": "k"} for _ in range(3)])
        assert len([j async for j in c.jobs(queue=q)]) == 4 and len(ids) == 3
        assert (await c.pause(q)).paused and not (await c.resume(q)).paused
        assert (await c.set_limits(q, concurrency=2)).concurrency == 2
        assert any(x.name == q for x in await c.queues())
        with pytest.raises(kyu.Timeout):
            await c.result(job.id, wait=0.2)
        assert (await c.cancel(job.id)).state == "cancelled"
        assert (await c.retry(job.id)).state in ("queued", "scheduled")
        flow = await c.flow(kyu.chain(kyu.task("a", queue=q), kyu.task("b", queue=q)))
        assert len(flow.ids) == 2
        await c.schedule(f"{q}-s", "*/5 * * * *", q, "tick")
        assert (await c.run_schedule(f"{q}-s")).kind == "tick"
        await c.unschedule(f"{q}-s")
        assert (await c.events(job.id))[0].type == "enqueued"
        assert await c.log(job.id) == []
        assert isinstance(await c.workers(), list) and isinstance(await c.stats(), list)
        assert await c.retry_failed(queue=q) == 0 and await c.delete_failed(queue=q) == 0
        with pytest.raises(kyu.NotFound):
            await c.get("nope")


def test_tokens_and_https(workdir: Path, q: str) -> None:
    ca, cert, key = (os.environ.get(n) for n in ("KYU_TEST_TLS_CA", "KYU_TEST_TLS_CERT", "KYU_TEST_TLS_KEY"))
    assert ca and cert and key, "KYU_TEST_TLS_CA/CERT/KEY are not set: run the tests with scripts/test"
    d = workdir / "tls"
    d.mkdir(exist_ok=True)
    extra = ["--tls-cert", cert, "--tls-key", key, "--token", "admin:adm1n-secret", "--token", "producer:pr0d-secret"]
    s = Server(str(d / "kyu.db"), d, extra, scheme="https").start()
    try:
        s.wait_ready(ca_file=ca)
        with kyu.Client(s.url, ca_file=ca) as anonymous, pytest.raises(kyu.Unauthorized):
            anonymous.queues()
        with kyu.Client(s.url, token="pr0d-secret", ca_file=ca) as producer:
            job = producer.enqueue(q, "k")
            assert producer.get(job.id).state == "queued"
            with pytest.raises(kyu.Forbidden):
                producer.pause(q)
        with (
            kyu.Client(s.url, token="adm1n-secret") as system_roots,
            pytest.raises(kyu.TransportError, match="CERTIFICATE"),
        ):
            system_roots.queues()
    finally:
        s.stop()


def test_idempotent_calls_ride_out_a_server_that_is_not_up_yet(workdir: Path, q: str) -> None:
    d = workdir / "late"
    d.mkdir(exist_ok=True)
    port = free_port()
    s = Server(str(d / "kyu.db"), d)
    s.port, s.url = port, f"http://127.0.0.1:{port}"
    with kyu.Client(s.url, retries=0) as impatient, pytest.raises(kyu.TransportError):
        impatient.queues()
    with kyu.Client(s.url, retries=8) as patient:
        starter = threading.Timer(0.3, s.start)
        starter.start()
        try:
            assert isinstance(patient.queues(), list)
        finally:
            starter.join()
            s.stop()


def test_python_m_kyu_enqueue(server: Server, q: str) -> None:
    def kyu_cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KYU_")}
        return subprocess.run([sys.executable, "-m", "kyu", *args], env=env, capture_output=True, text=True, timeout=60)

    out = kyu_cli("enqueue", q, "k", '{"a": 1}', "--id", f"{q}-cli", "--delay", "60", "--url", server.url)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert (job["id"], job["payload"], job["state"]) == (f"{q}-cli", {"a": 1}, "scheduled")
    bad = kyu_cli("--url", server.url, "enqueue", q, "k", "not json")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    late = kyu_cli("enqueue", q, "k", "--url", server.url, "--wait", "0.2")
    assert late.returncode == 1 and "still queued" in late.stderr
    down = kyu_cli("enqueue", q, "k", "--url", "http://127.0.0.1:9")
    assert down.returncode == 1 and "set KYU_URL" in down.stderr
