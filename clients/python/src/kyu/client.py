"""`Client` and `AsyncClient`: the whole HTTP API of `kyu server`, sync and
async, over one keep-alive connection pool each.

Both run the call descriptions of `kyu._calls`; what differs is only
whether a request blocks or is awaited.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Optional, TypeVar, Union

import httpx

from . import _calls as calls
from ._calls import UNSET, Call
from ._errors import KyuError, Timeout, TransportError, Unavailable, error_from
from ._model import JSON, Event, Flow, Job, LogLine, Queue, Schedule, Seconds, WorkerInfo, to_ms

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:7700"
PAGE = 500

FlowTree = Union[Mapping[str, Any], Any]


def _tls(ca_file: Optional[str]) -> ssl.SSLContext:
    """Verification against the system's roots, or only the given CA file
    (as ``kyu --cacert`` does)."""
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    return ctx


class _Settings:
    """What both clients are made from: the server URL, the token, TLS,
    timeouts and how often to retry a call that is safe to resend."""

    def __init__(
        self,
        url: Optional[str],
        token: Optional[str],
        ca_file: Optional[str],
        timeout: float,
        retries: int,
    ) -> None:
        self.url = (url or os.environ.get("KYU_URL") or DEFAULT_URL).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"kyu server URL must start with http:// or https://, got {self.url!r}")
        self.token = token if token is not None else os.environ.get("KYU_TOKEN")
        self.ca_file = ca_file if ca_file is not None else os.environ.get("KYU_CACERT")
        self.timeout = timeout
        self.retries = retries
        self.headers = {"User-Agent": "kyu-python/0.1", "Accept": "application/json"}
        if self.token:
            self.headers["Authorization"] = f"Bearer {self.token}"

    def transport_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.url,
            "headers": self.headers,
            "timeout": httpx.Timeout(self.timeout),
            "verify": _tls(self.ca_file) if self.url.startswith("https://") else True,
        }

    def request_kwargs(self, call: Call[Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {"params": call.params}
        if call.body is not None:
            kw["json"] = call.body
        if call.hold:
            kw["timeout"] = httpx.Timeout(self.timeout + call.hold)
        return kw

    def backoff(self, attempt: int) -> float:
        """Seconds before the next try: 0.1, 0.2, 0.4 ... capped at 5, jittered."""
        return min(5.0, 0.1 * 2.0**attempt) * random.uniform(0.8, 1.2)

    def answer(self, call: Call[T], response: httpx.Response) -> T:
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        if response.status_code >= 400:
            raise error_from(response.status_code, body)
        return call.read(body)

    def retryable(self, call: Call[Any], err: KyuError, attempt: int) -> bool:
        return call.idempotent and attempt < self.retries and isinstance(err, (TransportError, Unavailable))


def _transport_error(call: Call[Any], url: str, e: Exception) -> TransportError:
    hint = ""
    if isinstance(e, httpx.ConnectError) and "CERTIFICATE" not in str(e):
        hint = " (is kyu server running there? give the URL, or set KYU_URL)"
    return TransportError(f"{call.method} {url}{call.path}: {type(e).__name__}: {e}{hint}")


def _tree(flow: FlowTree) -> dict[str, Any]:
    to_flow = getattr(flow, "to_flow", None)
    return to_flow() if callable(to_flow) else dict(flow)


def _schedule_body(
    cron: str,
    queue: Optional[str],
    kind: str,
    payload: JSON,
    timezone: Optional[str],
    catchup: Optional[bool],
    enabled: Optional[bool],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    if "id" in options:
        raise TypeError("a schedule's job has no id: each tick's id comes from the schedule's name and the tick")
    body: dict[str, Any] = {"cron": cron, "job": calls.job_spec(queue, kind, payload, options)}
    for name, value in (("timezone", timezone), ("catchup", catchup), ("enabled", enabled)):
        if value is not None:
            body[name] = value
    return body


class Client:
    """The kyu HTTP API, blocking. ``url`` defaults to ``KYU_URL`` (else
    http://127.0.0.1:7700), ``token`` to ``KYU_TOKEN``, ``ca_file`` to
    ``KYU_CACERT``. Calls that are safe to resend are retried with backoff
    on a dropped connection or a 503. Use it as a context manager, or call
    ``close()``."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        ca_file: Optional[str] = None,
        timeout: float = 30.0,
        retries: int = 4,
    ) -> None:
        self._s = _Settings(url, token, ca_file, timeout, retries)
        self._http = httpx.Client(**self._s.transport_kwargs())

    @property
    def url(self) -> str:
        return self._s.url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, call: Call[T]) -> T:
        """Runs one call description (see `kyu._calls`), retrying where safe."""
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **self._s.request_kwargs(call))
                return self._s.answer(call, response)
            except httpx.TransportError as e:
                err: KyuError = _transport_error(call, self._s.url, e)
            except Unavailable as e:
                err = e
            if not self._s.retryable(call, err, attempt):
                raise err
            time.sleep(self._s.backoff(attempt))
            attempt += 1

    # Producing.

    def enqueue(self, queue: str, kind: str, payload: JSON = None, **options: Any) -> Job:
        """Enqueues one job; options are its fields (``id``, ``priority``,
        ``delay``/``timeout``/``keep_result`` in seconds or a timedelta,
        ``depends_on``, ``tags`` ...). An id that exists returns that job
        with ``duplicate`` set."""
        return self.call(calls.enqueue(calls.job_spec(queue, kind, payload, options)))

    def enqueue_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Enqueues many jobs atomically (all or none); each is a dict with
        ``queue``, ``kind``, ``payload`` and options. Returns their ids."""
        return self.call(calls.enqueue_many([_spec_of(j) for j in jobs]))

    def flow(self, flow: FlowTree) -> Flow:
        """Enqueues a tree atomically: each parent waits for its children.
        Takes ``{"job": {...}, "children": [...]}`` or a canvas
        (`kyu.chain`, `kyu.chord`, `kyu.task`)."""
        return self.call(calls.flow(_tree(flow)))

    # Reading and operating.

    def get(self, job_id: str) -> Job:
        return self.call(calls.get(job_id))

    def result(self, job_id: str, wait: Optional[Seconds] = None) -> Job:
        """The job once it finished. With ``wait`` (seconds), long-polls up
        to that long and raises `kyu.Timeout` if it has not finished; without,
        answers at once whatever the state."""
        if wait is None:
            return self.get(job_id)
        deadline = time.monotonic() + to_ms(wait, "wait") / 1000
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            job = self.call(calls.result(job_id, max(0, left_ms)))
            if job.finished:
                return job
            if left_ms <= 0:
                raise Timeout(f"job {job_id} is still {job.state} after waiting {wait} s", code="timeout")

    def cancel(self, job_id: str) -> Job:
        return self.call(calls.cancel(job_id))

    def retry(self, job_id: str, dependents: bool = False) -> Job:
        """Runs a failed or cancelled job again; with ``dependents`` the jobs
        that failed because of it are reset too."""
        return self.call(calls.retry(job_id, dependents))

    def delete(self, job_id: str) -> None:
        self.call(calls.delete(job_id))

    def retry_failed(
        self,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        error: Optional[str] = None,
        since: Optional[datetime] = None,
        until: Optional[datetime] = None,
        state: Optional[str] = None,
    ) -> int:
        """Redrives the dead-letter set by filter; returns how many."""
        return self.call(calls.retry_failed(calls.dead_letter_filter(queue, kind, state, error, since, until)))

    def delete_failed(
        self,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        error: Optional[str] = None,
        since: Optional[datetime] = None,
        until: Optional[datetime] = None,
        state: Optional[str] = None,
    ) -> int:
        """Deletes failed (or cancelled) jobs by filter; returns how many."""
        return self.call(calls.delete_failed(calls.dead_letter_filter(queue, kind, state, error, since, until)))

    def jobs(self, **filters: Any) -> Iterator[Job]:
        """Every job matching the filters (``queue``, ``state``, ``kind``,
        ``tag``, ``error``, ``since``, ``until``), newest first, page by page."""
        cursor: Optional[str] = None
        while True:
            page, cursor = self.call(calls.jobs_page(filters, cursor, PAGE))
            yield from page
            if cursor is None:
                return

    def events(self, job_id: str) -> list[Event]:
        return self.call(calls.events(job_id))

    def log(self, job_id: str, attempt: Optional[int] = None) -> list[LogLine]:
        return self.call(calls.log(job_id, attempt))

    def queues(self) -> list[Queue]:
        return self.call(calls.queues())

    def pause(self, queue: str) -> Queue:
        return self.call(calls.pause(queue))

    def resume(self, queue: str) -> Queue:
        return self.call(calls.resume(queue))

    def set_limits(
        self,
        queue: str,
        *,
        concurrency: Optional[int] = UNSET,
        rate_limit: Any = UNSET,
        group_concurrency: Optional[int] = UNSET,
        timeout: Optional[Seconds] = UNSET,
    ) -> Queue:
        """Changes a queue's limits; None removes one, an omitted one stays.
        ``rate_limit`` is ``(count, per_seconds)``."""
        return self.call(calls.set_limits(queue, concurrency, rate_limit, group_concurrency, timeout))

    def schedule(
        self,
        name: str,
        cron: str,
        queue: Optional[str],
        kind: str,
        payload: JSON = None,
        *,
        timezone: Optional[str] = None,
        catchup: Optional[bool] = None,
        enabled: Optional[bool] = None,
        **options: Any,
    ) -> Schedule:
        """Creates or replaces a cron schedule enqueueing this job each tick."""
        body = _schedule_body(cron, queue, kind, payload, timezone, catchup, enabled, options)
        return self.call(calls.schedule(name, body))

    def schedules(self) -> list[Schedule]:
        return self.call(calls.schedules())

    def get_schedule(self, name: str) -> Schedule:
        return self.call(calls.get_schedule(name))

    def unschedule(self, name: str) -> None:
        self.call(calls.unschedule(name))

    def run_schedule(self, name: str) -> Job:
        """Enqueues the schedule's job now, outside its ticks."""
        return self.call(calls.run_schedule(name))

    def workers(self) -> list[WorkerInfo]:
        return self.call(calls.workers())

    def stats(self, queue: Optional[str] = None, since: Optional[datetime] = None) -> list[dict[str, Any]]:
        return self.call(calls.stats(queue, since))

    def health(self) -> Any:
        return self.call(calls.health())


class AsyncClient:
    """`Client` for asyncio: the same calls, awaited."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        ca_file: Optional[str] = None,
        timeout: float = 30.0,
        retries: int = 4,
    ) -> None:
        self._s = _Settings(url, token, ca_file, timeout, retries)
        self._http = httpx.AsyncClient(**self._s.transport_kwargs())

    @property
    def url(self) -> str:
        return self._s.url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, **self._s.request_kwargs(call))
                return self._s.answer(call, response)
            except httpx.TransportError as e:
                err: KyuError = _transport_error(call, self._s.url, e)
            except Unavailable as e:
                err = e
            if not self._s.retryable(call, err, attempt):
                raise err
            await asyncio.sleep(self._s.backoff(attempt))
            attempt += 1

    async def enqueue(self, queue: str, kind: str, payload: JSON = None, **options: Any) -> Job:
        return await self.call(calls.enqueue(calls.job_spec(queue, kind, payload, options)))

    async def enqueue_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
        return await self.call(calls.enqueue_many([_spec_of(j) for j in jobs]))

    async def flow(self, flow: FlowTree) -> Flow:
        return await self.call(calls.flow(_tree(flow)))

    async def get(self, job_id: str) -> Job:
        return await self.call(calls.get(job_id))

    async def result(self, job_id: str, wait: Optional[Seconds] = None) -> Job:
        if wait is None:
            return await self.get(job_id)
        deadline = time.monotonic() + to_ms(wait, "wait") / 1000
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            job = await self.call(calls.result(job_id, max(0, left_ms)))
            if job.finished:
                return job
            if left_ms <= 0:
                raise Timeout(f"job {job_id} is still {job.state} after waiting {wait} s", code="timeout")

    async def cancel(self, job_id: str) -> Job:
        return await self.call(calls.cancel(job_id))

    async def retry(self, job_id: str, dependents: bool = False) -> Job:
        return await self.call(calls.retry(job_id, dependents))

    async def delete(self, job_id: str) -> None:
        await self.call(calls.delete(job_id))

    async def retry_failed(
        self,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        error: Optional[str] = None,
        since: Optional[datetime] = None,
        until: Optional[datetime] = None,
        state: Optional[str] = None,
    ) -> int:
        return await self.call(calls.retry_failed(calls.dead_letter_filter(queue, kind, state, error, since, until)))

    async def delete_failed(
        self,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        error: Optional[str] = None,
        since: Optional[datetime] = None,
        until: Optional[datetime] = None,
        state: Optional[str] = None,
    ) -> int:
        return await self.call(calls.delete_failed(calls.dead_letter_filter(queue, kind, state, error, since, until)))

    async def jobs(self, **filters: Any) -> AsyncIterator[Job]:
        cursor: Optional[str] = None
        while True:
            page, cursor = await self.call(calls.jobs_page(filters, cursor, PAGE))
            for job in page:
                yield job
            if cursor is None:
                return

    async def events(self, job_id: str) -> list[Event]:
        return await self.call(calls.events(job_id))

    async def log(self, job_id: str, attempt: Optional[int] = None) -> list[LogLine]:
        return await self.call(calls.log(job_id, attempt))

    async def queues(self) -> list[Queue]:
        return await self.call(calls.queues())

    async def pause(self, queue: str) -> Queue:
        return await self.call(calls.pause(queue))

    async def resume(self, queue: str) -> Queue:
        return await self.call(calls.resume(queue))

    async def set_limits(
        self,
        queue: str,
        *,
        concurrency: Optional[int] = UNSET,
        rate_limit: Any = UNSET,
        group_concurrency: Optional[int] = UNSET,
        timeout: Optional[Seconds] = UNSET,
    ) -> Queue:
        return await self.call(calls.set_limits(queue, concurrency, rate_limit, group_concurrency, timeout))

    async def schedule(
        self,
        name: str,
        cron: str,
        queue: Optional[str],
        kind: str,
        payload: JSON = None,
        *,
        timezone: Optional[str] = None,
        catchup: Optional[bool] = None,
        enabled: Optional[bool] = None,
        **options: Any,
    ) -> Schedule:
        body = _schedule_body(cron, queue, kind, payload, timezone, catchup, enabled, options)
        return await self.call(calls.schedule(name, body))

    async def schedules(self) -> list[Schedule]:
        return await self.call(calls.schedules())

    async def get_schedule(self, name: str) -> Schedule:
        return await self.call(calls.get_schedule(name))

    async def unschedule(self, name: str) -> None:
        await self.call(calls.unschedule(name))

    async def run_schedule(self, name: str) -> Job:
        return await self.call(calls.run_schedule(name))

    async def workers(self) -> list[WorkerInfo]:
        return await self.call(calls.workers())

    async def stats(self, queue: Optional[str] = None, since: Optional[datetime] = None) -> list[dict[str, Any]]:
        return await self.call(calls.stats(queue, since))

    async def health(self) -> Any:
        return await self.call(calls.health())


def _spec_of(job: Mapping[str, Any]) -> dict[str, Any]:
    """One job of a batch, in the same spelling as `Client.enqueue`."""
    rest = dict(job)
    if "kind" not in rest:
        raise TypeError("every job of a batch needs a kind")
    kind = rest.pop("kind")
    queue = rest.pop("queue", None)
    payload = rest.pop("payload", None)
    return calls.job_spec(queue, kind, payload, rest)
