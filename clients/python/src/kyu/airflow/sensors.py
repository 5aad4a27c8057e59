"""`KyuJobSensor`: succeeds once kyu jobs completed; fails the task when
one of them failed or was cancelled."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Optional, Union

from ._compat import AirflowFailException, BaseSensorOperator, Context, PokeReturnValue
from .hooks import KyuHook
from .triggers import KyuJobTrigger


def outcome(job_ids: Sequence[str], outcomes: dict[str, dict[str, Any]], single: bool) -> Any:
    """The task's XCom (the result, or the results in order), or the
    failure that ends the task."""
    bad = {i: o for i, o in outcomes.items() if o["state"] != "completed"}
    if bad:
        lines = [f"job {i} {o['state']}: {o.get('error') or 'no error recorded'}" for i, o in bad.items()]
        raise AirflowFailException("kyu: " + "; ".join(lines))
    results = [outcomes[i]["result"] for i in job_ids]
    return results[0] if single else results


class KyuJobSensor(BaseSensorOperator):  # type: ignore[misc]
    """Waits for one job (``job_id="..."``) or several (a list, such as a
    `KyuEnqueueOperator`'s XCom). Deferrable by default: the wait runs in
    Airflow's triggerer as a long poll. With ``deferrable=False`` it pokes
    (``mode="poke"`` or ``"reschedule"``). Its XCom is the job's result, or
    the list of results."""

    template_fields = ("job_id",)

    def __init__(
        self,
        *,
        job_id: Union[str, Sequence[str]],
        kyu_conn_id: str = KyuHook.default_conn_name,
        deferrable: bool = True,
        poke_interval: Union[timedelta, float] = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.job_id = job_id
        self.kyu_conn_id = kyu_conn_id
        self.deferrable = deferrable

    def _ids(self) -> tuple[list[str], bool]:
        if isinstance(self.job_id, str):
            return [self.job_id], True
        return [str(i) for i in self.job_id], False

    def _check(self) -> Optional[Any]:
        """None while a job is still to finish; else the outcome."""
        ids, single = self._ids()
        outcomes: dict[str, dict[str, Any]] = {}
        with KyuHook(self.kyu_conn_id).get_conn() as client:
            for i in ids:
                job = client.get(i)
                if not job.finished:
                    return None
                outcomes[i] = {"state": job.state, "result": job.result, "error": job.error}
        return PokeReturnValue(is_done=True, xcom_value=outcome(ids, outcomes, single))

    def poke(self, context: Context) -> Union[bool, PokeReturnValue]:
        done = self._check()
        return False if done is None else done

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        done = self._check()
        if done is not None:
            return done.xcom_value
        ids, _ = self._ids()
        timeout = timedelta(seconds=self.timeout) if isinstance(self.timeout, (int, float)) else self.timeout
        self.defer(trigger=KyuJobTrigger(ids, self.kyu_conn_id), method_name="execute_complete", timeout=timeout)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        ids, single = self._ids()
        return outcome(ids, event["jobs"], single)
