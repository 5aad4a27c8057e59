"""kyu: a durable job queue. This package is its Python door: a client for
the HTTP API of ``kyu server`` (`Client`, `AsyncClient`), a worker that runs
Python functions as jobs (`Worker`), Celery-style flows (`chain`, `group`,
`chord`) and, with the ``airflow`` extra, an Airflow provider
(`kyu.airflow`).

    import kyu

    client = kyu.Client("http://127.0.0.1:7700")
    job = client.enqueue("emails", "send", {"to": "a@example.com"}, timeout=30)
    done = client.result(job.id, wait=60)

    worker = kyu.Worker(client, queues=["emails"], concurrency=8)

    @worker.task("send")
    def send(payload, ctx):
        ...

    worker.run()
"""

from ._calls import UNSET
from ._errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    KyuError,
    LeaseLost,
    NotFound,
    ServerError,
    Timeout,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
)
from ._model import Event, Flow, Job, JobError, LogLine, Queue, Schedule, WorkerInfo
from .canvas import chain, chord, group, task, tree
from .client import AsyncClient, Client
from .worker import AsyncContext, Context, NoRetry, Retry, Snooze, WaitingForChildren, Worker

__version__ = "0.1.0"

__all__ = [
    "UNSET",
    "AsyncClient",
    "AsyncContext",
    "BadRequest",
    "Client",
    "Conflict",
    "Context",
    "Event",
    "Flow",
    "Forbidden",
    "Invalid",
    "Job",
    "JobError",
    "KyuError",
    "LeaseLost",
    "LogLine",
    "NoRetry",
    "NotFound",
    "Queue",
    "Retry",
    "Schedule",
    "ServerError",
    "Snooze",
    "Timeout",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "WaitingForChildren",
    "Worker",
    "WorkerInfo",
    "chain",
    "chord",
    "group",
    "task",
    "tree",
]
