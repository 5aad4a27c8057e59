"""`Worker`: runs Python functions as kyu jobs over HTTP.

One asyncio loop does all the talking: it claims into free slots with long
polls, sends every finished job's outcome in batched ``POST /v1/reports``
and every running job's lease in batched ``POST /v1/heartbeats``. Plain
handlers run in a thread pool, ``async def`` handlers on the loop.
Delivery is at least once: a job whose worker dies runs again elsewhere,
so handlers (or their steps, see `Context.step`) should be idempotent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import queue
import signal
import socket
import threading
import traceback
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Callable, Optional, TypeVar, Union

from . import _calls as calls
from ._errors import Conflict, KyuError, LeaseLost, NotFound, TransportError, Unavailable
from ._model import JSON, Seconds, to_ms
from .canvas import Signature
from .client import AsyncClient, Client

log = logging.getLogger("kyu.worker")

T = TypeVar("T")
Handler = Callable[[Any, Any], Any]

STEPS_KEY = "steps"
#: The server keeps the first 8 KiB of an error; a traceback's end matters most.
MAX_ERROR = 8000
#: The store fails a job whose run outlives its timeout by this much anyway.
TIMEOUT_GRACE_S = 5.0


class Retry(Exception):
    """Raise to fail this attempt and retry after ``delay`` seconds (arq's
    ``Retry(defer=...)``); without a delay the job's backoff decides."""

    def __init__(self, delay: Optional[Seconds] = None, message: str = "retry requested") -> None:
        super().__init__(message)
        self.delay_ms = None if delay is None else to_ms(delay, "delay")
        self.message = message


class NoRetry(Exception):
    """Raise to fail the job at once, whatever attempts are left."""

    def __init__(self, message: str = "failed without retry") -> None:
        super().__init__(message)
        self.message = message


class Snooze(Exception):
    """Raise to run the job again after ``delay`` seconds without spending
    an attempt (the resource it needs is not ready yet)."""

    def __init__(self, delay: Seconds) -> None:
        super().__init__(f"snoozed for {delay} s")
        self.delay_ms = to_ms(delay, "delay")


class WaitingForChildren(BaseException):
    """Raised by `Context.wait_for_children` when the job now waits for its
    children: this run ends, and the job runs again once they finished. It
    is a BaseException so that ``except Exception`` in a handler lets it by."""


class _Run:
    """One claimed job inside the worker: its lease, what the handler asked
    to write, and how it ended. Lives on the loop's thread."""

    def __init__(self, worker: Worker, claimed: Mapping[str, Any]) -> None:
        self.worker = worker
        self.id: str = claimed["id"]
        self.token: str = claimed["token"]
        self.claimed = claimed
        self.cancel_event = threading.Event()
        self.cancel_reason: Optional[str] = None
        self.lost = False
        self.task: Optional[asyncio.Task[Any]] = None
        #: The handler's own future; cancelled to stop an ``async def`` one.
        self.future: Optional[asyncio.Future[Any]] = None
        self.is_async = False
        self.pending_log: list[str] = []
        self.pending_progress: Any = _NOTHING
        self.checkpoint: JSON = claimed.get("checkpoint")

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.cancel_event.set()

    def lose(self, why: str) -> None:
        if not self.lost:
            log.info("job %s: %s; another worker owns it now, its outcome here is dropped", self.id, why)
        self.lost = True
        self.cancel("lease lost")

    def add_log(self, line: str) -> None:
        self.pending_log.append(line)
        self.worker._dirty(self)

    def set_progress(self, value: JSON) -> None:
        self.pending_progress = value
        self.worker._dirty(self)

    async def flush(self) -> None:
        """Sends what the handler wrote since the last flush (progress, log)."""
        http = self.worker._http
        if self.lost or http is None:
            self.pending_log.clear()
            self.pending_progress = _NOTHING
            return
        try:
            if self.pending_progress is not _NOTHING:
                value, self.pending_progress = self.pending_progress, _NOTHING
                await http.call(calls.progress(self.id, self.token, value))
            if self.pending_log:
                lines, self.pending_log = self.pending_log, []
                await http.call(calls.append_log(self.id, self.token, lines))
        except (Conflict, NotFound) as e:
            self.lose(f"write refused ({e.message})")
        except KyuError as e:
            log.warning("job %s: could not write progress or log: %s", self.id, e)

    async def save_checkpoint(self, value: JSON) -> None:
        http = self.worker._http
        if self.lost or http is None:
            raise LeaseLost(f"job {self.id} is no longer this worker's")
        try:
            await http.call(calls.checkpoint(self.id, self.token, value))
        except (Conflict, NotFound) as e:
            self.lose(f"checkpoint refused ({e.message})")
            raise LeaseLost(f"job {self.id} is no longer this worker's: {e.message}") from None
        self.checkpoint = value

    async def add_children(self, specs: list[dict[str, Any]], wait: bool) -> bool:
        http = self.worker._http
        if self.lost or http is None:
            raise LeaseLost(f"job {self.id} is no longer this worker's")
        try:
            return await http.call(calls.children(self.id, self.token, specs, wait))
        except (Conflict, NotFound) as e:
            self.lose(f"adding children refused ({e.message})")
            raise LeaseLost(f"job {self.id} is no longer this worker's: {e.message}") from None

    async def child_results(self, ids: list[str]) -> dict[str, Any]:
        http = self.worker._http
        assert http is not None
        return {i: (await http.call(calls.get(i))).result for i in ids}


_NOTHING: Any = object()


class _BaseContext:
    """What every handler is told about its job, sync or async."""

    def __init__(self, run: _Run) -> None:
        c = run.claimed
        self._run = run
        self.job_id: str = run.id
        self.queue: str = c.get("queue", "")
        self.kind: str = c.get("kind", "")
        self.attempt: int = int(c.get("attempt") or 1)
        self.max_attempts: int = int(c.get("max_attempts") or 1)
        self.timeout_ms: Optional[int] = c.get("timeout_ms")
        self.dependency_results: dict[str, Any] = dict(c.get("dependency_results") or {})

    @property
    def checkpoint(self) -> JSON:
        """The last checkpoint saved, by this attempt or an earlier one."""
        return self._run.checkpoint

    @property
    def cancelled(self) -> bool:
        """True once the job should stop: its timeout passed, an operator
        cancelled it, the worker is shutting down, or the lease was lost."""
        return self._run.cancel_event.is_set()

    @property
    def cancel_reason(self) -> Optional[str]:
        return self._run.cancel_reason

    def _saved_step(self, name: str) -> tuple[bool, Any]:
        cp = self._run.checkpoint
        steps = cp.get(STEPS_KEY) if isinstance(cp, dict) else None
        if isinstance(steps, dict) and name in steps:
            return True, steps[name]
        return False, None

    def _with_step(self, name: str, value: Any) -> dict[str, Any]:
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise NoRetry(f"step {name!r} returned a value that is not JSON: {e}") from None
        cp = self._run.checkpoint
        new = dict(cp) if isinstance(cp, dict) else {}
        steps = dict(new.get(STEPS_KEY) or {}) if isinstance(new.get(STEPS_KEY), dict) else {}
        steps[name] = value
        new[STEPS_KEY] = steps
        return new

    def _children(
        self, jobs: Iterable[Union[Mapping[str, Any], Signature]], name: str
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Child specs with ids derived from this job and ``name``, so adding
        them again after a crash creates nothing twice."""
        specs: list[dict[str, Any]] = []
        for i, j in enumerate(jobs):
            spec = dict(j.spec) if isinstance(j, Signature) else _spec(j)
            if "id" not in spec:
                derived = f"{self.job_id}:{name}:{i}"
                if len(derived) <= 255:
                    spec["id"] = derived
            specs.append(spec)
        return specs, [s["id"] for s in specs if "id" in s]

    def _known(self, ids: list[str], count: int) -> Optional[dict[str, Any]]:
        if ids and len(ids) == count and all(i in self.dependency_results for i in ids):
            return {i: self.dependency_results[i] for i in ids}
        return None


def _spec(job: Mapping[str, Any]) -> dict[str, Any]:
    rest = dict(job)
    kind = rest.pop("kind", None)
    if not isinstance(kind, str):
        raise TypeError("every child job needs a kind")
    return calls.job_spec(rest.pop("queue", None), kind, rest.pop("payload", None), rest)


class Context(_BaseContext):
    """What a plain (threaded) handler gets: its job, and blocking methods
    to save work as it goes."""

    def _wait(self, coro: Awaitable[T]) -> T:
        loop = self._run.worker._loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(_as_coro(coro), loop).result()

    def progress(self, value: JSON) -> None:
        """Reports progress (latest wins; sent in the background)."""
        loop = self._run.worker._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._run.set_progress, value)

    def log(self, line: str) -> None:
        """Appends a line to the job's log (sent in the background)."""
        loop = self._run.worker._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._run.add_log, str(line))

    def save_checkpoint(self, value: JSON) -> None:
        """Saves a checkpoint now (fenced by this attempt's lease); a later
        attempt starts from it. Raises `kyu.LeaseLost` if the job is no
        longer this worker's."""
        self._wait(self._run.save_checkpoint(value))

    def step(self, name: str, fn: Callable[[], T]) -> T:
        """Runs ``fn`` once across all attempts: its return value is saved in
        the checkpoint, and a later attempt gets it back without running
        ``fn`` again."""
        done, saved = self._saved_step(name)
        if done:
            return saved  # type: ignore[no-any-return]
        out = fn()
        self.save_checkpoint(self._with_step(name, out))
        return out

    def wait_for_children(
        self, jobs: Iterable[Union[Mapping[str, Any], Signature]], name: str = "children"
    ) -> dict[str, Any]:
        """Adds child jobs and waits for them (BullMQ's
        ``moveToWaitingChildren``): this run ends here, and the job runs again
        once every child finished, when this call returns their results by
        id. Safe to call again on that later run, or after a crash."""
        jobs = list(jobs)
        specs, ids = self._children(jobs, name)
        known = self._known(ids, len(specs))
        if known is not None:
            return known
        if not self._wait(self._run.add_children(specs, wait=True)):
            return self._wait(self._run.child_results(ids))
        raise WaitingForChildren()

    def add_children(self, jobs: Iterable[Union[Mapping[str, Any], Signature]], name: str = "children") -> list[str]:
        """Adds child jobs that run on their own; this job goes on."""
        specs, ids = self._children(list(jobs), name)
        self._wait(self._run.add_children(specs, wait=False))
        return ids


class AsyncContext(_BaseContext):
    """What an ``async def`` handler gets: `Context`'s methods, awaited
    where they talk to the server."""

    def progress(self, value: JSON) -> None:
        self._run.set_progress(value)

    def log(self, line: str) -> None:
        self._run.add_log(str(line))

    async def save_checkpoint(self, value: JSON) -> None:
        await self._run.save_checkpoint(value)

    async def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """`Context.step`; ``fn`` may be a plain function or ``async def``."""
        done, saved = self._saved_step(name)
        if done:
            return saved
        out = fn()
        if inspect.isawaitable(out):
            out = await out
        await self.save_checkpoint(self._with_step(name, out))
        return out

    async def wait_for_children(
        self, jobs: Iterable[Union[Mapping[str, Any], Signature]], name: str = "children"
    ) -> dict[str, Any]:
        jobs = list(jobs)
        specs, ids = self._children(jobs, name)
        known = self._known(ids, len(specs))
        if known is not None:
            return known
        if not await self._run.add_children(specs, wait=True):
            return await self._run.child_results(ids)
        raise WaitingForChildren()

    async def add_children(
        self, jobs: Iterable[Union[Mapping[str, Any], Signature]], name: str = "children"
    ) -> list[str]:
        specs, ids = self._children(list(jobs), name)
        await self._run.add_children(specs, wait=False)
        return ids


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR else "…" + text[-MAX_ERROR:]


class Worker:
    """Runs registered handlers for the jobs of ``queues``, up to
    ``concurrency`` at a time.

    ``client`` is a `Client`/`AsyncClient` (its URL, token and CA are used)
    or a server URL. ``lease`` is how long a claim holds a job between
    heartbeats; ``poll`` how long one claim waits on the server for work;
    ``shutdown_grace`` how long `stop` lets running jobs finish before it
    gives them back to the queue. ``prefetch`` jobs (default: as many as
    ``concurrency``) are claimed ahead of free slots, so the next ones are
    here when a handler returns (Celery's prefetch; ``0`` claims only into
    free slots); they are heartbeated while they wait, and given back at
    once by `stop`. ``batch`` caps one claim (default ``concurrency``)."""

    def __init__(
        self,
        client: Union[Client, AsyncClient, str, None] = None,
        queues: Iterable[str] = ("default",),
        concurrency: int = 10,
        *,
        name: Optional[str] = None,
        lease: Seconds = 30,
        poll: Seconds = 5,
        shutdown_grace: Seconds = 30,
        batch: Optional[int] = None,
        prefetch: Optional[int] = None,
        max_jobs: Optional[int] = None,
        burst: bool = False,
    ) -> None:
        if isinstance(client, (Client, AsyncClient)):
            s = client._s
            self._client_args: dict[str, Any] = {"url": s.url, "token": s.token, "ca_file": s.ca_file}
        else:
            self._client_args = {"url": client}
        self.queues = list(queues)
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self.batch = min(batch or concurrency, 1000)
        self.prefetch = concurrency if prefetch is None else max(0, prefetch)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.lease_ms = to_ms(lease, "lease")
        self.poll_ms = min(to_ms(poll, "poll"), calls.MAX_WAIT_MS)
        self.shutdown_grace = to_ms(shutdown_grace, "shutdown_grace") / 1000
        self.max_jobs = max_jobs
        self.burst = burst
        self.handlers: dict[str, Handler] = {}
        self.processed = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._http: Optional[AsyncClient] = None
        self._stopping: Optional[asyncio.Event] = None
        self._runs: dict[str, _Run] = {}
        self._reports: list[dict[str, Any]] = []
        self._reports_wake: Optional[asyncio.Event] = None
        self._slot_freed: Optional[asyncio.Event] = None
        self._dirty_runs: set[_Run] = set()
        self._dirty_wake: Optional[asyncio.Event] = None
        self._busy = 0
        self._started = 0
        #: Claimed, waiting for a free slot (prefetched).
        self._waiting: collections.deque[_Run] = collections.deque()
        self._threads: Optional[_Threads] = None

    def task(self, kind: str) -> Callable[[Handler], Handler]:
        """Registers ``fn(payload, ctx)`` as the handler of jobs of ``kind``."""

        def register(fn: Handler) -> Handler:
            if kind in self.handlers:
                raise ValueError(f"kind {kind!r} already has a handler: {self.handlers[kind]!r}")
            self.handlers[kind] = fn
            return fn

        return register

    def run(self, install_signal_handlers: bool = True) -> None:
        """Runs until `stop` (or SIGTERM/SIGINT), then finishes or gives back
        the jobs it holds."""
        asyncio.run(self.run_async(install_signal_handlers=install_signal_handlers))

    def stop(self) -> None:
        """Stops claiming; running jobs get ``shutdown_grace`` to finish.
        Safe to call from any thread or a signal handler."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)

    def _dirty(self, run: _Run) -> None:
        self._dirty_runs.add(run)
        if self._dirty_wake is not None:
            self._dirty_wake.set()

    async def run_async(self, install_signal_handlers: bool = False) -> None:
        if not self.handlers:
            raise ValueError("no handlers: register one with @worker.task('kind')")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._reports_wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._dirty_wake = asyncio.Event()
        self._threads = _Threads(self.concurrency, self._loop)
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stopping.set)
        self._http = AsyncClient(**self._client_args)
        log.info(
            "worker %s: queues %s, concurrency %d, kinds %s",
            self.name,
            self.queues,
            self.concurrency,
            sorted(self.handlers),
        )
        helpers = [
            asyncio.create_task(self._reporter()),
            asyncio.create_task(self._heartbeater()),
            asyncio.create_task(self._writer()),
            asyncio.create_task(self._presence()),
        ]
        try:
            await self._claimer()
            await self._drain()
        finally:
            for h in helpers:
                h.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._flush_reports_now()
            await self._http.aclose()
            self._threads.shutdown()
            if install_signal_handlers and threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            log.info("worker %s stopped after %d jobs", self.name, self.processed)

    # Claiming.

    def _free(self) -> int:
        free = self.concurrency + self.prefetch - self._busy - len(self._waiting)
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self._started)
        return max(0, min(free, self.batch))

    async def _claimer(self) -> None:
        assert self._http is not None and self._stopping is not None and self._slot_freed is not None
        failures = 0
        while not self._stopping.is_set():
            if self.max_jobs is not None and self._started >= self.max_jobs:
                log.info("worker %s: took its %d jobs", self.name, self.max_jobs)
                return
            free = self._free()
            if free == 0:
                self._slot_freed.clear()
                await _first(self._slot_freed.wait(), self._stopping.wait())
                continue
            wait_ms = 0 if self.burst else self.poll_ms
            try:
                answer = await self._http.call(calls.claim(self.queues, self.name, free, self.lease_ms, wait_ms))
                failures = 0
            except (TransportError, Unavailable) as e:
                failures += 1
                log.warning("worker %s: claim failed (%s); trying again", self.name, e)
                await _first(asyncio.sleep(min(10.0, 0.2 * 2**failures)), self._stopping.wait())
                continue
            jobs = answer.get("jobs") or []
            if self._stopping.is_set():
                # Claimed while stopping: give them straight back.
                for j in jobs:
                    self._give_back(j["id"], j["token"])
                return
            for j in jobs:
                self._start(j)
            if self.burst and not jobs and self._busy == 0 and not self._waiting:
                log.info("worker %s: no job ready and none running; burst done", self.name)
                return

    def _start(self, claimed: Mapping[str, Any]) -> None:
        run = _Run(self, claimed)
        self._runs[run.id] = run
        self._started += 1
        if self._busy < self.concurrency:
            self._launch(run)
        else:
            self._waiting.append(run)

    def _launch(self, run: _Run) -> None:
        self._busy += 1
        run.task = asyncio.create_task(self._execute(run))

    def _release(self, run: _Run) -> None:
        """Gives a job back to its queue now, without spending its attempt."""
        self._give_back(run.id, run.token)
        run.lost = True  # its outcome, if any, is no longer ours to report

    async def _drain(self) -> None:
        """After the claimer stopped: on `stop`, give back the prefetched
        jobs, let running ones finish within the grace, then give back the
        rest; at the end of a burst or of ``max_jobs``, run them all."""
        assert self._stopping is not None
        if not self._stopping.is_set():
            while True:
                busy = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
                if not busy:
                    return
                await asyncio.wait(busy)
        while self._waiting:
            self._release(self._waiting.popleft())
        running = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        if not running:
            return
        grace = self.shutdown_grace if self._stopping.is_set() else None
        if grace is not None:
            log.info("worker %s: waiting up to %.0f s for %d running jobs", self.name, grace, len(running))
        _, pending = await asyncio.wait(running, timeout=grace)
        for run in list(self._runs.values()):
            if run.task in pending:
                run.cancel("shutdown")
                self._release(run)
                log.info("job %s given back to its queue at shutdown", run.id)
                self._cancel_task(run)

    # Running one job.

    async def _execute(self, run: _Run) -> None:
        kind = run.claimed.get("kind", "")
        handler = self.handlers.get(kind)
        try:
            report: Optional[dict[str, Any]]
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                report = _fail(
                    run, f"no handler for kind {kind!r} in worker {self.name} (it runs: {known})", None, True
                )
            else:
                report = await self._call(run, handler)
            if report is not None and not run.lost:
                await run.flush()
                if not run.lost:
                    self._queue_report(report)
                    return
            self._forget(run)
        except Exception:
            log.exception("job %s: the worker failed around its handler", run.id)
            self._forget(run)
        finally:
            self._busy -= 1
            self.processed += 1
            assert self._slot_freed is not None and self._stopping is not None
            if self._waiting and not self._stopping.is_set():
                self._launch(self._waiting.popleft())
            self._slot_freed.set()

    async def _call(self, run: _Run, handler: Handler) -> Optional[dict[str, Any]]:
        """Runs the handler under the job's timeout; the report to send, or
        None when there is nothing to report (waiting for children, lease lost)."""
        timeout_ms = run.claimed.get("timeout_ms")
        timeout = timeout_ms / 1000 if isinstance(timeout_ms, int) else None
        payload = run.claimed.get("payload")
        is_async = inspect.iscoroutinefunction(handler)
        if is_async:
            fut: asyncio.Future[Any] = asyncio.ensure_future(handler(payload, AsyncContext(run)))
        else:
            assert self._threads is not None
            fut = self._threads.submit(
                functools.partial(contextvars.copy_context().run, handler, payload, Context(run))
            )
        run.future, run.is_async = fut, is_async
        done, _ = await asyncio.wait({fut}, timeout=timeout)
        if not done:
            run.cancel("timeout")
            if is_async:
                fut.cancel()
                await asyncio.wait({fut}, timeout=TIMEOUT_GRACE_S)
            else:
                log.warning(
                    "job %s: handler ran past its timeout of %d ms; the attempt fails now, its thread "
                    "(which Python cannot stop) keeps its slot until it returns: check ctx.cancelled",
                    run.id,
                    timeout_ms,
                )
                report = _fail(run, "timeout", None, True)
                if not run.lost:
                    await run.flush()
                    self._queue_report(report)
                    run.lost = True  # already reported
                await asyncio.wait({fut})
                _retrieve(fut)
                return None
            return _fail(run, "timeout", None, True)
        return self._outcome(run, fut)

    def _outcome(self, run: _Run, fut: asyncio.Future[Any]) -> Optional[dict[str, Any]]:
        if run.lost:
            _retrieve(fut)  # its outcome is dropped: another worker owns the job
            return None
        if fut.cancelled():
            why = run.cancel_reason or "cancelled"
            return _fail(run, why, None, True)
        err = fut.exception()
        if err is None:
            result = fut.result()
            try:
                json.dumps(result)
            except (TypeError, ValueError) as e:
                return _fail(run, f"the handler's return value is not JSON: {e}", None, False)
            return {"outcome": "complete", "id": run.id, "token": run.token, "result": result}
        if isinstance(err, Retry):
            return _fail(run, err.message, err.delay_ms, True)
        if isinstance(err, NoRetry):
            return _fail(run, err.message, None, False)
        if isinstance(err, Snooze):
            return {"outcome": "snooze", "id": run.id, "token": run.token, "delay_ms": err.delay_ms}
        if isinstance(err, WaitingForChildren):
            return None
        if isinstance(err, LeaseLost):
            run.lose(str(err))
            return None
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        return _fail(run, _clip(text.rstrip()), None, True)

    def _forget(self, run: _Run) -> None:
        self._runs.pop(run.id, None)
        self._dirty_runs.discard(run)

    # Reports, heartbeats, progress and log, presence.

    def _give_back(self, job_id: str, token: str) -> None:
        """A snooze of 0: the job is queued again with its attempt given back."""
        self._queue_report({"outcome": "snooze", "id": job_id, "token": token, "delay_ms": 0})

    def _queue_report(self, report: dict[str, Any]) -> None:
        self._reports.append(report)
        assert self._reports_wake is not None
        self._reports_wake.set()

    async def _reporter(self) -> None:
        assert self._reports_wake is not None
        while True:
            await self._reports_wake.wait()
            self._reports_wake.clear()
            await self._flush_reports_now()

    async def _flush_reports_now(self) -> None:
        """Sends every queued report, 1,000 at a time; keeps them through
        network trouble (they are fenced by token, so a resend is safe)."""
        failures = 0
        while self._reports and self._http is not None:
            batch = self._reports[:1000]
            try:
                results = await self._http.call(calls.reports(batch))
            except (TransportError, Unavailable) as e:
                failures += 1
                if failures > 8:
                    log.error(
                        "worker %s: giving up on %d reports after repeated failures: %s", self.name, len(batch), e
                    )
                    del self._reports[: len(batch)]
                    for r in batch:
                        self._runs.pop(r["id"], None)
                    return
                log.warning("worker %s: sending reports failed (%s); trying again", self.name, e)
                await asyncio.sleep(min(10.0, 0.2 * 2**failures))
                continue
            del self._reports[: len(batch)]
            for sent, answer in zip(batch, results):
                self._answered(sent, answer)

    def _answered(self, sent: dict[str, Any], answer: dict[str, Any]) -> None:
        self._runs.pop(sent["id"], None)
        err = answer.get("error")
        if not isinstance(err, dict):
            return
        code, message = err.get("code"), err.get("message", "")
        if code == "too_large" and sent["outcome"] == "complete":
            # The result can never be stored: fail the attempt for good now
            # rather than let the lease expire and run it again.
            self._reports.append(
                {"outcome": "fail", "id": sent["id"], "token": sent["token"], "error": message, "retry": False}
            )
        elif code in ("conflict", "not_found"):
            log.info("job %s: report refused (%s); another worker owns it now", sent["id"], message)
        else:
            log.warning("job %s: report refused: %s %s", sent["id"], code, message)

    async def _heartbeater(self) -> None:
        """Extends every held lease each third of it; learns of cancels and
        of leases lost. A failed request is tried again, never taken as a
        lost lease: the server decides that."""
        interval = self.lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            runs = list(self._runs.values())
            for i in range(0, len(runs), 1000):
                chunk = runs[i : i + 1000]
                items = [{"id": r.id, "token": r.token, "lease_ms": self.lease_ms} for r in chunk]
                try:
                    assert self._http is not None
                    answers = await self._http.call(calls.heartbeats(items))
                except KyuError as e:
                    log.warning("worker %s: heartbeats failed (%s); trying again", self.name, e)
                    continue
                for run, answer in zip(chunk, answers):
                    if isinstance(answer.get("error"), dict):
                        run.lose(f"heartbeat refused ({answer['error'].get('message')})")
                        self._cancel_task(run)
                    elif answer.get("cancel_requested"):
                        run.cancel("cancelled by an operator")
                        self._cancel_task(run)

    def _cancel_task(self, run: _Run) -> None:
        """An ``async def`` handler is cancelled; a thread cannot be, so a
        plain handler learns it from ``ctx.cancelled``."""
        if run.is_async and run.future is not None:
            run.future.cancel()

    async def _writer(self) -> None:
        """Sends progress and log lines the handlers wrote, at most five
        times a second per job."""
        assert self._dirty_wake is not None
        while True:
            await self._dirty_wake.wait()
            self._dirty_wake.clear()
            runs, self._dirty_runs = list(self._dirty_runs), set()
            await asyncio.gather(*(r.flush() for r in runs))
            await asyncio.sleep(0.2)

    async def _presence(self) -> None:
        """Tells the server who this worker is, every 30 s."""
        kinds = ", ".join(sorted(self.handlers))
        me = {
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self.queues,
            "concurrency": self.concurrency,
            "runs": f"python: {kinds}"[:1000],
        }
        while True:
            try:
                assert self._http is not None
                await self._http.call(calls.hello(me))
            except KyuError as e:
                log.debug("worker %s: presence not recorded: %s", self.name, e)
            await asyncio.sleep(30)


def _fail(run: _Run, error: str, retry_in_ms: Optional[int], retry: bool) -> dict[str, Any]:
    report: dict[str, Any] = {"outcome": "fail", "id": run.id, "token": run.token, "error": error or "failed"}
    if retry_in_ms is not None:
        report["retry_in_ms"] = retry_in_ms
    if not retry:
        report["retry"] = False
    return report


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Marks a finished handler's exception as seen (asyncio complains of
    one never retrieved) when its outcome is not reported."""
    if fut.done() and not fut.cancelled():
        fut.exception()


async def _first(*aws: Awaitable[Any]) -> None:
    """Waits until the first of ``aws`` is done and cancels the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


class _Threads:
    """Daemon threads for plain handlers. Not a ThreadPoolExecutor: its
    threads are joined at interpreter exit, so one handler that ignores its
    timeout would keep a stopped worker from exiting. The worker never runs
    more than ``concurrency`` handlers (a timed-out one keeps its slot until
    it returns), so that many threads always suffice."""

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._work: queue.SimpleQueue[Optional[tuple[Callable[[], Any], asyncio.Future[Any]]]] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"kyu-job-{i}", daemon=True) for i in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._work.put((fn, fut))
        return fut

    def shutdown(self) -> None:
        for _ in self._threads:
            self._work.put(None)

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            fn, fut = item
            try:
                out = fn()
            except BaseException as e:
                self._settle(fut, None, e)
            else:
                self._settle(fut, out, None)

    def _settle(self, fut: asyncio.Future[Any], out: Any, err: Optional[BaseException]) -> None:
        def settle() -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(out)

        # A closed loop means the worker stopped and gave the job back.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle)
