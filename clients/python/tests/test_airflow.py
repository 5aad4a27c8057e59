"""The provider in a real Apache Airflow: ``airflow dags test`` runs the
example DAGs (examples/python/airflow_dags) against a real kyu server while
a pool of `kyu.Worker` processes drains the queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import kyu

from .conftest import ROOT, Server

DAGS = ROOT / "examples" / "python" / "airflow_dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="session")
def airflow_home(workdir: Path) -> Path:
    home = workdir / "airflow"
    home.mkdir(exist_ok=True)
    out = subprocess.run([AIRFLOW, "db", "migrate"], env=airflow_env(home, {}), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return home


def airflow_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KYU_URL", "KYU_TOKEN"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
    )
    env.update(extra)
    return env


@pytest.fixture
def pool(server: Server, workdir: Path) -> Iterator[str]:
    """A queue of its own, drained by examples/python/worker_pool.py."""
    queue = f"images-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, KYU_URL=server.url, KYU_EXAMPLE_QUEUE=queue, KYU_EXAMPLE_CONCURRENCY="4")
    log = (workdir / f"pool-{queue}.log").open("ab")
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "python" / "worker_pool.py")], env=env, stderr=log)
    yield queue
    proc.terminate()
    assert proc.wait(30) == 0, "the worker pool stops cleanly on SIGTERM"


def dags_test(
    home: Path, server: Server, queue: str, dag_id: str, on_deferred: Optional[Callable[[], None]] = None
) -> tuple[int, dict[str, Any], str]:
    """``airflow dags test DAG``; ``on_deferred`` runs once a task defers."""
    host, port = server.url.rsplit(":", 1)
    conn = json.dumps({"conn_type": "kyu", "host": host, "port": int(port)})
    env = airflow_env(home, {"AIRFLOW_CONN_KYU_DEFAULT": conn, "KYU_EXAMPLE_QUEUE": queue, "KYU_EXAMPLE_JOBS": "20"})
    proc = subprocess.Popen(
        [AIRFLOW, "dags", "test", dag_id], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if on_deferred is not None and "as DEFERRED" in line:
            on_deferred()
            on_deferred = None
    proc.wait(300)
    run = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines), "")
    read = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("airflow_run.py")), dag_id],
        env=env,
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    return run.returncode, json.loads(read.stdout.strip().splitlines()[-1]), run.stdout + run.stderr


def test_provider_is_registered(airflow_home: Path) -> None:
    probe = (
        "from airflow.providers_manager import ProvidersManager as P; "
        "m = P(); print('kyu' in m.providers, 'kyu' in m.hooks)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=airflow_env(airflow_home, {}), capture_output=True, text=True
    )
    assert out.stdout.split()[-2:] == ["True", "True"], out.stdout[-2000:] + out.stderr[-2000:]


def test_controller_dag_enqueues_and_its_sensor_waits_for_the_pool(
    airflow_home: Path, server: Server, pool: str, client: kyu.Client
) -> None:
    # The pool waits until the sensor has deferred, so the wait is the triggerer's.
    client.pause(pool)
    rc, run, log = dags_test(airflow_home, server, pool, "kyu_controller", on_deferred=lambda: client.resume(pool))
    assert rc == 0 and run["state"] == "success", log[-4000:]
    ids = run["tasks"]["enqueue"]["xcom"]
    assert (
        isinstance(ids, list) and len(ids) == 20 and all(i.startswith("airflow:kyu_controller:enqueue:") for i in ids)
    )
    results = run["tasks"]["wait"]["xcom"]
    assert [r["image"] for r in results] == [f"img-{i}.png" for i in range(20)]
    assert all(client.get(i).state == "completed" for i in ids)
    assert "as DEFERRED" in log, "the sensor waited in the triggerer"


def test_a_failed_job_fails_the_sensor_task(airflow_home: Path, server: Server, pool: str, client: kyu.Client) -> None:
    rc, run, log = dags_test(airflow_home, server, pool, "kyu_controller_failing")
    assert rc != 0 and run["state"] == "failed"
    assert run["tasks"]["enqueue"]["state"] == "success" and run["tasks"]["wait"]["state"] == "failed"
    job = client.get(run["tasks"]["enqueue"]["xcom"])
    assert job.state == "failed" and job.error == "the upstream file is missing"
    assert "the upstream file is missing" in log, "the task log says why"


def test_enqueue_with_wait_and_a_poking_sensor(airflow_home: Path, server: Server, pool: str) -> None:
    rc, run, log = dags_test(airflow_home, server, pool, "kyu_enqueue_and_wait")
    assert rc == 0 and run["state"] == "success", log[-4000:]
    assert run["tasks"]["resize_one"]["xcom"]["image"] == "cover.png"
    assert run["tasks"]["check"]["xcom"]["width"] == 512
