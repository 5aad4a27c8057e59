"""kyu for Apache Airflow: `KyuHook`, `KyuEnqueueOperator`, `KyuJobSensor`
(deferrable through `KyuJobTrigger`), and the ``kyu`` connection type.

Installed with ``pip install 'kyu[airflow]'``; Airflow finds it through the
``apache_airflow_provider`` entry point. The connection (default
``kyu_default``): host with scheme (``http://kyu.internal``), port, and the
token as password; extra ``{"ca_file": "/etc/ssl/kyu-ca.pem"}`` for a
private CA.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

__all__ = ["KyuEnqueueOperator", "KyuHook", "KyuJobSensor", "KyuJobTrigger", "get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """What Airflow's provider manager reads (the entry point's target)."""
    return {
        "package-name": "kyu",
        "name": "kyu",
        "description": "Enqueue jobs on a kyu server and wait for them.",
        "versions": [__version__],
        "connection-types": [
            {"connection-type": "kyu", "hook-class-name": "kyu.airflow.hooks.KyuHook", "hook-name": "kyu job queue"}
        ],
        "hooks": [{"integration-name": "kyu", "python-modules": ["kyu.airflow.hooks"]}],
        "operators": [{"integration-name": "kyu", "python-modules": ["kyu.airflow.operators"]}],
        "sensors": [{"integration-name": "kyu", "python-modules": ["kyu.airflow.sensors"]}],
        "triggers": [{"integration-name": "kyu", "python-modules": ["kyu.airflow.triggers"]}],
    }


def __getattr__(name: str) -> Any:
    # Lazy, so reading the provider info does not import Airflow's models.
    if name == "KyuHook":
        from .hooks import KyuHook

        return KyuHook
    if name == "KyuEnqueueOperator":
        from .operators import KyuEnqueueOperator

        return KyuEnqueueOperator
    if name == "KyuJobSensor":
        from .sensors import KyuJobSensor

        return KyuJobSensor
    if name == "KyuJobTrigger":
        from .triggers import KyuJobTrigger

        return KyuJobTrigger
    raise AttributeError(name)
