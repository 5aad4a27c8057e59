"""Every API call, described once: method, path, body, and how to read the
answer. `Client` and `AsyncClient` only run these descriptions, so the sync
and async doors cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Generic, Optional, TypeVar
from urllib.parse import quote

from ._model import (
    JSON,
    Event,
    Flow,
    Job,
    LogLine,
    Queue,
    Schedule,
    WorkerInfo,
    format_time,
    to_ms,
)

T = TypeVar("T")

#: The most a single long poll waits on the server (its limit is 60 s).
MAX_WAIT_MS = 60_000


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "Leave this setting as it is" for `set_limits`, where None clears a limit.
UNSET: Any = _Unset()


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and how to read its answer."""

    method: str
    path: str
    read: Callable[[Any], T]
    body: Any = None
    params: Optional[Mapping[str, str]] = None
    #: Safe to send again after a dropped connection or a 503.
    idempotent: bool = False
    #: Seconds the server may hold the request (a long poll), on top of the
    #: client's own timeout.
    hold: float = 0.0


def seg(value: str) -> str:
    """A path segment, percent-encoded (ids may hold `/` or `:`)."""
    return quote(value, safe="")


# Job options: the API's field names, plus seconds-or-timedelta spellings.
_SECONDS_OPTIONS = {
    "delay": "delay_ms",
    "timeout": "timeout_ms",
    "keep_result": "keep_result_ms",
    "keep_failed": "keep_failed_ms",
    "unique_for": "unique_for_ms",
}
_PLAIN_OPTIONS = {
    "id",
    "priority",
    "max_attempts",
    "backoff",
    "unique_key",
    "continue_on_failure",
    "tags",
    "group",
    "delay_ms",
    "timeout_ms",
    "keep_result_ms",
    "keep_failed_ms",
    "unique_for_ms",
}
JOB_OPTIONS = frozenset(_PLAIN_OPTIONS | set(_SECONDS_OPTIONS) | {"run_at", "depends_on"})


def job_spec(queue: Optional[str], kind: str, payload: JSON, options: Mapping[str, Any]) -> dict[str, Any]:
    """A job's JSON for the API from Python's spelling of it. Unknown options
    are a TypeError here, before anything is sent."""
    if not isinstance(kind, str) or not kind:
        raise TypeError("kind must be a non-empty string: the name of the handler that runs the job")
    spec: dict[str, Any] = {"kind": kind}
    if queue is not None:
        spec["queue"] = queue
    if payload is not None:
        spec["payload"] = payload
    for name, value in options.items():
        if name not in JOB_OPTIONS:
            known = ", ".join(sorted(JOB_OPTIONS))
            raise TypeError(f"unknown job option {name!r}; the options are: {known}")
        if value is None:
            continue
        if name in _SECONDS_OPTIONS:
            wire = _SECONDS_OPTIONS[name]
            if wire in options and options[wire] is not None:
                raise TypeError(f"give {name} or {wire}, not both")
            spec[wire] = to_ms(value, name)
        elif name == "run_at":
            spec["run_at"] = format_time(value) if isinstance(value, datetime) else value
        elif name == "depends_on":
            spec["depends_on"] = [d.id if isinstance(d, Job) else d for d in value]
        elif name == "tags":
            spec["tags"] = list(value)
        else:
            spec[name] = value
    if "run_at" in spec and "delay_ms" in spec:
        raise TypeError("give run_at or delay, not both")
    return spec


def _job(j: Any) -> Job:
    return Job.from_json(j)


def _none(_: Any) -> None:
    return None


def _jobs_page(j: Any) -> tuple[list[Job], Optional[str]]:
    return [Job.from_json(x) for x in j["jobs"]], j.get("next_cursor")


def enqueue(spec: dict[str, Any]) -> Call[Job]:
    # With a caller-chosen id a resend is a duplicate, never a second job.
    return Call("POST", "/v1/jobs", _job, body=spec, idempotent="id" in spec)


def enqueue_many(specs: Sequence[dict[str, Any]]) -> Call[list[str]]:
    every_id = all("id" in s for s in specs)
    return Call("POST", "/v1/jobs/batch", lambda j: list(j["ids"]), body={"jobs": list(specs)}, idempotent=every_id)


def flow(tree: dict[str, Any]) -> Call[Flow]:
    return Call("POST", "/v1/flows", lambda j: Flow(j["root"], list(j["ids"])), body=tree)


def get(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{seg(job_id)}", _job, idempotent=True)


def result(job_id: str, wait_ms: int) -> Call[Job]:
    wait_ms = max(0, min(wait_ms, MAX_WAIT_MS))
    return Call(
        "GET",
        f"/v1/jobs/{seg(job_id)}/result",
        _job,
        params={"wait_ms": str(wait_ms)},
        idempotent=True,
        hold=wait_ms / 1000,
    )


def cancel(job_id: str) -> Call[Job]:
    return Call("POST", f"/v1/jobs/{seg(job_id)}/cancel", _job, idempotent=True)


def retry(job_id: str, dependents: bool) -> Call[Job]:
    body = {"dependents": True} if dependents else None
    return Call("POST", f"/v1/jobs/{seg(job_id)}/retry", _job, body=body)


def delete(job_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/jobs/{seg(job_id)}", _none, idempotent=True)


def dead_letter_filter(
    queue: Optional[str],
    kind: Optional[str],
    state: Optional[str],
    error: Optional[str],
    since: Optional[datetime],
    until: Optional[datetime],
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, value in (("queue", queue), ("kind", kind), ("state", state), ("error", error)):
        if value is not None:
            body[name] = value
    for name, when in (("since", since), ("until", until)):
        if when is not None:
            body[name] = format_time(when)
    return body


def retry_failed(body: dict[str, Any]) -> Call[int]:
    return Call("POST", "/v1/jobs/retry", lambda j: int(j["retried"]), body=body)


def delete_failed(body: dict[str, Any]) -> Call[int]:
    return Call("POST", "/v1/jobs/delete", lambda j: int(j["deleted"]), body=body)


def jobs_page(filters: Mapping[str, Any], cursor: Optional[str], limit: int) -> Call[tuple[list[Job], Optional[str]]]:
    params = {k: (format_time(v) if isinstance(v, datetime) else str(v)) for k, v in filters.items() if v is not None}
    params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/jobs", _jobs_page, params=params, idempotent=True)


def events(job_id: str) -> Call[list[Event]]:
    return Call(
        "GET", f"/v1/jobs/{seg(job_id)}/events", lambda j: [Event.from_json(e) for e in j["events"]], idempotent=True
    )


def log(job_id: str, attempt: Optional[int]) -> Call[list[LogLine]]:
    params = {"attempt": str(attempt)} if attempt is not None else None
    return Call(
        "GET",
        f"/v1/jobs/{seg(job_id)}/log",
        lambda j: [LogLine.from_json(x) for x in j["lines"]],
        params=params,
        idempotent=True,
    )


def queues() -> Call[list[Queue]]:
    return Call("GET", "/v1/queues", lambda j: [Queue.from_json(q) for q in j["queues"]], idempotent=True)


def pause(queue: str) -> Call[Queue]:
    return Call("POST", f"/v1/queues/{seg(queue)}/pause", Queue.from_json, idempotent=True)


def resume(queue: str) -> Call[Queue]:
    return Call("POST", f"/v1/queues/{seg(queue)}/resume", Queue.from_json, idempotent=True)


def set_limits(
    queue: str,
    concurrency: Any,
    rate_limit: Any,
    group_concurrency: Any,
    timeout: Any,
) -> Call[Queue]:
    body: dict[str, Any] = {}
    if concurrency is not UNSET:
        body["concurrency"] = concurrency
    if group_concurrency is not UNSET:
        body["group_concurrency"] = group_concurrency
    if rate_limit is not UNSET:
        if rate_limit is None or isinstance(rate_limit, dict):
            body["rate_limit"] = rate_limit
        else:
            count, per = rate_limit
            body["rate_limit"] = {"max": count, "per_ms": to_ms(per, "rate_limit's period")}
    if timeout is not UNSET:
        body["timeout_ms"] = None if timeout is None else to_ms(timeout, "timeout")
    if not body:
        raise TypeError("set_limits needs at least one of concurrency, rate_limit, group_concurrency, timeout")
    return Call("PATCH", f"/v1/queues/{seg(queue)}", Queue.from_json, body=body, idempotent=True)


def schedule(name: str, body: dict[str, Any]) -> Call[Schedule]:
    return Call("PUT", f"/v1/schedules/{seg(name)}", Schedule.from_json, body=body, idempotent=True)


def schedules() -> Call[list[Schedule]]:
    return Call("GET", "/v1/schedules", lambda j: [Schedule.from_json(s) for s in j["schedules"]], idempotent=True)


def get_schedule(name: str) -> Call[Schedule]:
    return Call("GET", f"/v1/schedules/{seg(name)}", Schedule.from_json, idempotent=True)


def unschedule(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/schedules/{seg(name)}", _none, idempotent=True)


def run_schedule(name: str) -> Call[Job]:
    return Call("POST", f"/v1/schedules/{seg(name)}/run", _job)


def workers() -> Call[list[WorkerInfo]]:
    return Call("GET", "/v1/workers", lambda j: [WorkerInfo.from_json(w) for w in j["workers"]], idempotent=True)


def stats(queue: Optional[str], since: Optional[datetime]) -> Call[list[dict[str, Any]]]:
    params = {}
    if queue is not None:
        params["queue"] = queue
    if since is not None:
        params["since"] = format_time(since)
    return Call("GET", "/v1/stats", lambda j: list(j["series"]), params=params, idempotent=True)


def health() -> Call[Any]:
    return Call("GET", "/healthz", lambda j: j, idempotent=True)


# The worker protocol.


def claim(queues: Sequence[str], worker: str, limit: int, lease_ms: int, wait_ms: int) -> Call[dict[str, Any]]:
    body = {"queues": list(queues), "worker": worker, "max": limit, "lease_ms": lease_ms, "wait_ms": wait_ms}
    return Call("POST", "/v1/claim", lambda j: dict(j), body=body, hold=wait_ms / 1000)


def reports(items: Sequence[dict[str, Any]]) -> Call[list[dict[str, Any]]]:
    return Call("POST", "/v1/reports", lambda j: list(j["results"]), body={"reports": list(items)})


def heartbeats(items: Sequence[dict[str, Any]]) -> Call[list[dict[str, Any]]]:
    return Call(
        "POST", "/v1/heartbeats", lambda j: list(j["results"]), body={"heartbeats": list(items)}, idempotent=True
    )


def checkpoint(job_id: str, token: str, value: JSON) -> Call[None]:
    return Call(
        "POST", f"/v1/jobs/{seg(job_id)}/checkpoint", _none, body={"token": token, "checkpoint": value}, idempotent=True
    )


def progress(job_id: str, token: str, value: JSON) -> Call[None]:
    return Call(
        "POST", f"/v1/jobs/{seg(job_id)}/progress", _none, body={"token": token, "progress": value}, idempotent=True
    )


def append_log(job_id: str, token: str, lines: Iterable[str]) -> Call[None]:
    return Call("POST", f"/v1/jobs/{seg(job_id)}/log", _none, body={"token": token, "lines": list(lines)})


def children(job_id: str, token: str, specs: Sequence[dict[str, Any]], wait: bool) -> Call[bool]:
    body = {"token": token, "jobs": list(specs), "wait": wait}
    return Call("POST", f"/v1/jobs/{seg(job_id)}/children", lambda j: bool(j["waiting"]), body=body)


def hello(worker: dict[str, Any]) -> Call[None]:
    return Call("POST", "/v1/workers", _none, body=worker, idempotent=True)
