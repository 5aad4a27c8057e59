"""What the API answers, as typed objects: a `Job` and its neighbours.

Each keeps the JSON it was made from in ``raw``, so a field a newer server
adds is never out of reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional, Union

JSON = Any
Seconds = Union[int, float, timedelta]

TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


def parse_time(value: Any) -> Optional[datetime]:
    """An RFC 3339 time of the API (``2026-11-21T20:56:58.123Z``), aware UTC."""
    if not isinstance(value, str):
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def format_time(value: datetime) -> str:
    """A datetime as the API writes times; a naive one is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    utc = value.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def to_ms(value: Seconds, name: str) -> int:
    """Seconds (int, float or timedelta) as whole milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise TypeError(f"{name} takes seconds (int or float) or a timedelta, not {type(value).__name__}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"{name} must not be negative, got {seconds} s")
    return round(seconds * 1000)


@dataclass(frozen=True)
class JobError:
    """One failed attempt: its number, when, and the message."""

    attempt: int
    at: Optional[datetime]
    message: str


@dataclass(frozen=True)
class Job:
    """A job as the server knows it. ``state`` and ``result`` say how it
    ended; ``errors`` keeps one entry per failed attempt."""

    id: str
    queue: str
    kind: str
    payload: JSON
    state: str
    priority: int
    attempt: int
    max_attempts: int
    run_at: Optional[datetime]
    created_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    result: JSON
    checkpoint: JSON
    progress: JSON
    errors: list[JobError]
    tags: list[str]
    depends_on: list[str]
    group: Optional[str]
    worker: Optional[str]
    cancel_requested: bool
    duplicate: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Whether the job reached a terminal state (completed, failed, cancelled)."""
        return self.state in TERMINAL_STATES

    @property
    def error(self) -> Optional[str]:
        """The last failure's message, if any."""
        return self.errors[-1].message if self.errors else None

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Job:
        return cls(
            id=j["id"],
            queue=j.get("queue", "default"),
            kind=j.get("kind", ""),
            payload=j.get("payload"),
            state=j.get("state", ""),
            priority=int(j.get("priority") or 0),
            attempt=int(j.get("attempt") or 0),
            max_attempts=int(j.get("max_attempts") or 0),
            run_at=parse_time(j.get("run_at")),
            created_at=parse_time(j.get("created_at")),
            started_at=parse_time(j.get("started_at")),
            finished_at=parse_time(j.get("finished_at")),
            result=j.get("result"),
            checkpoint=j.get("checkpoint"),
            progress=j.get("progress"),
            errors=[
                JobError(int(e.get("attempt", 0)), parse_time(e.get("at")), str(e.get("message", "")))
                for e in j.get("errors") or []
            ],
            tags=list(j.get("tags") or []),
            depends_on=list(j.get("depends_on") or []),
            group=j.get("group"),
            worker=j.get("worker"),
            cancel_requested=bool(j.get("cancel_requested")),
            duplicate=bool(j.get("duplicate")),
            raw=j,
        )


@dataclass(frozen=True)
class Flow:
    """What enqueueing a flow created: the root's id and every id, root first
    as the server lists them."""

    root: str
    ids: list[str]


@dataclass(frozen=True)
class Queue:
    """A queue's settings and its jobs counted by state."""

    name: str
    paused: bool
    counts: dict[str, int]
    concurrency: Optional[int]
    rate_limit: Optional[dict[str, int]]
    group_concurrency: Optional[int]
    timeout_ms: Optional[int]
    oldest_ready_at: Optional[datetime]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Queue:
        return cls(
            name=j["name"],
            paused=bool(j.get("paused")),
            counts={k: int(v) for k, v in (j.get("counts") or {}).items()},
            concurrency=j.get("concurrency"),
            rate_limit=j.get("rate_limit"),
            group_concurrency=j.get("group_concurrency"),
            timeout_ms=j.get("timeout_ms"),
            oldest_ready_at=parse_time(j.get("oldest_ready_at")),
            raw=j,
        )


@dataclass(frozen=True)
class Schedule:
    """A cron schedule and the job each tick enqueues."""

    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    catchup: bool
    enabled: bool
    next_run_at: Optional[datetime]
    last_run_at: Optional[datetime]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Schedule:
        return cls(
            name=j["name"],
            cron=j.get("cron", ""),
            timezone=j.get("timezone", "UTC"),
            job=j.get("job") or {},
            catchup=bool(j.get("catchup")),
            enabled=bool(j.get("enabled", True)),
            next_run_at=parse_time(j.get("next_run_at")),
            last_run_at=parse_time(j.get("last_run_at")),
            raw=j,
        )


@dataclass(frozen=True)
class WorkerInfo:
    """A worker the server has seen in the last few minutes."""

    name: str
    host: Optional[str]
    pid: Optional[int]
    queues: list[str]
    concurrency: Optional[int]
    runs: Optional[str]
    running: list[str]
    started_at: Optional[datetime]
    last_seen_at: Optional[datetime]

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> WorkerInfo:
        return cls(
            name=j["name"],
            host=j.get("host"),
            pid=j.get("pid"),
            queues=list(j.get("queues") or []),
            concurrency=j.get("concurrency"),
            runs=j.get("runs"),
            running=list(j.get("running") or []),
            started_at=parse_time(j.get("started_at")),
            last_seen_at=parse_time(j.get("last_seen_at")),
        )


@dataclass(frozen=True)
class Event:
    """One entry of a job's timeline."""

    at: Optional[datetime]
    type: str
    attempt: Optional[int]
    worker: Optional[str]
    message: Optional[str]

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Event:
        return cls(parse_time(j.get("at")), j["type"], j.get("attempt"), j.get("worker"), j.get("message"))


@dataclass(frozen=True)
class LogLine:
    """One line of a job's log, with the attempt that wrote it."""

    at: Optional[datetime]
    attempt: int
    line: str

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> LogLine:
        return cls(parse_time(j.get("at")), int(j.get("attempt", 0)), str(j.get("line", "")))
