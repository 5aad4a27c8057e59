"""`KyuEnqueueOperator`: enqueue kyu jobs from a DAG."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Optional, Union

from ._compat import BaseOperator, Context
from .hooks import KyuHook
from .sensors import outcome
from .triggers import KyuJobTrigger

_NOT_IN_IDS = re.compile(r"[^!\"$&-.0->@-~]")


def task_job_id(context: Context, index: int) -> str:
    """An id for the index-th job of this task instance, the same on every
    try of it: an Airflow retry finds the jobs it enqueued instead of
    enqueueing them twice."""
    ti = context["ti"]
    parts = ["airflow", ti.dag_id, ti.task_id, ti.run_id, str(getattr(ti, "map_index", -1)), str(index)]
    raw = _NOT_IN_IDS.sub("_", ":".join(parts))
    if len(raw) > 200:
        raw = raw[:160] + ":" + hashlib.sha256(raw.encode()).hexdigest()[:32]
    return raw


class KyuEnqueueOperator(BaseOperator):  # type: ignore[misc]
    """Enqueues one job (``payload=``) or one per item of ``payloads=`` on
    kyu queue ``kyu_queue`` (not ``queue=``, which is Airflow's own executor
    queue). ``job_options`` are the job's other fields (``priority``,
    ``timeout``, ``max_attempts``, ``tags`` ...).

    Its XCom is the job id (a list of ids with ``payloads``); with
    ``wait=True`` it waits for the jobs (deferred to the triggerer when
    ``deferrable=True``) and its XCom is the result, failing the task if a
    job failed; the ids are also pushed under the key ``kyu_job_id``. Job
    ids come from the task instance, so a retried task does not enqueue
    twice."""

    template_fields = ("kyu_queue", "kind", "payload", "payloads", "job_options")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        kyu_queue: str,
        kind: str,
        payload: Any = None,
        payloads: Optional[Sequence[Any]] = None,
        job_options: Optional[dict[str, Any]] = None,
        wait: bool = False,
        wait_timeout: Union[timedelta, float, None] = None,
        deferrable: bool = False,
        kyu_conn_id: str = KyuHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if payload is not None and payloads is not None:
            raise ValueError("give payload= (one job) or payloads= (one job each), not both")
        self.kyu_queue = kyu_queue
        self.kind = kind
        self.payload = payload
        self.payloads = payloads
        self.job_options = job_options or {}
        self.wait = wait
        self.wait_timeout = wait_timeout
        self.deferrable = deferrable
        self.kyu_conn_id = kyu_conn_id

    def execute(self, context: Context) -> Any:
        hook = KyuHook(self.kyu_conn_id)
        single = self.payloads is None
        payloads = [self.payload] if single else list(self.payloads or [])
        with hook.get_conn() as client:
            options = dict(self.job_options)
            if single:
                options.setdefault("id", task_job_id(context, 0))
                ids = [client.enqueue(self.kyu_queue, self.kind, self.payload, **options).id]
            else:
                jobs = [
                    {"queue": self.kyu_queue, "kind": self.kind, "payload": p, "id": task_job_id(context, i), **options}
                    for i, p in enumerate(payloads)
                ]
                ids = []
                for start in range(0, len(jobs), 1000):
                    ids += client.enqueue_many(jobs[start : start + 1000])
            self.log.info("kyu: enqueued %d job(s) on %s: %s", len(ids), self.kyu_queue, ", ".join(ids[:10]))
            # The ids stay reachable under their own key when the XCom is the result.
            context["ti"].xcom_push(key="kyu_job_id", value=ids[0] if single else ids)
            if not self.wait:
                return ids[0] if single else ids
            if self.deferrable:
                timeout = (
                    timedelta(seconds=self.wait_timeout)
                    if isinstance(self.wait_timeout, (int, float))
                    else self.wait_timeout
                )
                self.defer(
                    trigger=KyuJobTrigger(ids, self.kyu_conn_id),
                    method_name="execute_complete",
                    kwargs={"single": single, "ids": ids},
                    timeout=timeout,
                )
            wait_s = (
                self.wait_timeout.total_seconds() if isinstance(self.wait_timeout, timedelta) else self.wait_timeout
            )
            outcomes = {}
            for i in ids:
                job = client.result(i, wait=wait_s if wait_s is not None else 365 * 86400)
                outcomes[i] = {"state": job.state, "result": job.result, "error": job.error}
            return outcome(ids, outcomes, single)

    def execute_complete(self, context: Context, event: dict[str, Any], single: bool, ids: list[str]) -> Any:
        return outcome(ids, event["jobs"], single)
