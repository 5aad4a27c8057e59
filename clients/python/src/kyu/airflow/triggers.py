"""`KyuJobTrigger`: waits for jobs in Airflow's triggerer by long-polling
their results, so a waiting task holds no worker slot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from .._errors import KyuError, Timeout
from ._compat import BaseTrigger, TriggerEvent

#: One long poll waits at most this long on the server.
POLL_S = 30.0


class KyuJobTrigger(BaseTrigger):  # type: ignore[misc]
    """Fires once every job of ``job_ids`` finished, with each one's state,
    result and last error."""

    def __init__(self, job_ids: Sequence[str], kyu_conn_id: str = "kyu_default") -> None:
        super().__init__()
        self.job_ids = list(job_ids)
        self.kyu_conn_id = kyu_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        # The connection id, never the token: trigger arguments are stored.
        return ("kyu.airflow.triggers.KyuJobTrigger", {"job_ids": self.job_ids, "kyu_conn_id": self.kyu_conn_id})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from .hooks import KyuHook

        hook = KyuHook(self.kyu_conn_id)
        try:
            from asgiref.sync import sync_to_async

            params = await sync_to_async(hook.client_params)()
        except ImportError:
            params = hook.client_params()
        from ..client import AsyncClient

        outcomes: dict[str, dict[str, Any]] = {}
        async with AsyncClient(**params) as client:
            for job_id in self.job_ids:
                while job_id not in outcomes:
                    try:
                        job = await client.result(job_id, wait=POLL_S)
                    except Timeout:
                        continue
                    except KyuError as e:
                        if e.code in ("not_found", "unauthorized", "forbidden"):
                            outcomes[job_id] = {"state": "unknown", "result": None, "error": str(e)}
                            break
                        self.log.warning("kyu: waiting for job %s: %s; trying again", job_id, e)
                        continue
                    outcomes[job_id] = {"state": job.state, "result": job.result, "error": job.error}
        yield TriggerEvent({"jobs": outcomes})
