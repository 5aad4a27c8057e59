"""The seed's controller/worker pattern on kyu.

Before: a "controller" DAG inserted rows into a hand-made ``job_queue`` table
and a "worker" DAG polled it every minute, claiming K rows with ``FOR UPDATE
SKIP LOCKED``, one at a time. Now the controller enqueues the jobs with one
operator and waits for them with a deferrable sensor (no worker slot held
while it waits); a pool of `kyu.Worker` processes (examples/python/
worker_pool.py) drains them K at a time, in parallel, with retries.

The connection ``kyu_default`` names the server, e.g.
``AIRFLOW_CONN_KYU_DEFAULT='{"conn_type": "kyu", "host": "http://127.0.0.1", "port": 7700}'``.
"""

from __future__ import annotations

import os
from datetime import datetime

from kyu.airflow import KyuEnqueueOperator, KyuJobSensor

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG

QUEUE = os.environ.get("KYU_EXAMPLE_QUEUE", "images")
COUNT = int(os.environ.get("KYU_EXAMPLE_JOBS", "20"))

with DAG("kyu_controller", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["kyu"]):
    enqueue = KyuEnqueueOperator(
        task_id="enqueue",
        kyu_queue=QUEUE,
        kind="resize",
        payloads=[{"image": f"img-{i}.png", "width": 64 + i} for i in range(COUNT)],
        job_options={"max_attempts": 3, "timeout": 60, "tags": ["airflow"]},
    )
    wait = KyuJobSensor(task_id="wait", job_id=enqueue.output, deferrable=True)
    enqueue >> wait

with DAG("kyu_controller_failing", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["kyu"]):
    broken = KyuEnqueueOperator(
        task_id="enqueue",
        kyu_queue=QUEUE,
        kind="always_fails",
        payload={"why": "the upstream file is missing"},
        job_options={"max_attempts": 1},
    )
    KyuJobSensor(task_id="wait", job_id=broken.output, deferrable=True)

with DAG("kyu_enqueue_and_wait", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["kyu"]):
    # One job whose result is the task's XCom, waited for in the task itself;
    # then a poking sensor on the same job (for deployments without a triggerer).
    one = KyuEnqueueOperator(
        task_id="resize_one", kyu_queue=QUEUE, kind="resize", payload={"image": "cover.png", "width": 512}, wait=True
    )
    check = KyuJobSensor(
        task_id="check",
        job_id="{{ ti.xcom_pull(task_ids='resize_one', key='kyu_job_id') }}",
        deferrable=False,
        mode="poke",
        poke_interval=0.2,
    )
    one >> check
