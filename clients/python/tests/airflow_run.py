"""Prints, as JSON, the last run of a DAG in the Airflow metadata database
under AIRFLOW_HOME: the run's state and each task's state and XCom. The
tests run a DAG with ``airflow dags test`` and read it back with this."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any


def main() -> None:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_id = sys.argv[1]
    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=dag_id).order_by(DagRun.id.desc()).first()
        if run is None:
            raise SystemExit(f"no run of {dag_id}")
        tasks: dict[str, dict[str, Any]] = {}
        for ti in session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run.run_id):
            row = (
                session.query(XComModel)
                .filter_by(dag_id=dag_id, task_id=ti.task_id, run_id=run.run_id, key="return_value")
                .one_or_none()
            )
            value = None if row is None else row.value
            if isinstance(value, (str, bytes)):
                with contextlib.suppress(ValueError):  # else stored as the plain string
                    value = json.loads(value)
            tasks[ti.task_id] = {
                "state": str(ti.state.value if hasattr(ti.state, "value") else ti.state),
                "xcom": value,
            }
        state = run.state.value if hasattr(run.state, "value") else run.state
        print(json.dumps({"state": str(state), "tasks": tasks}))


if __name__ == "__main__":
    main()
