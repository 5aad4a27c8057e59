"""Airflow 3's task SDK names, falling back to Airflow 2's."""

from __future__ import annotations

from typing import Any

try:  # Airflow 3
    from airflow.sdk import BaseHook, BaseOperator, BaseSensorOperator, PokeReturnValue
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 2
    from airflow.exceptions import AirflowFailException  # type: ignore
    from airflow.hooks.base import BaseHook  # type: ignore
    from airflow.models import BaseOperator  # type: ignore
    from airflow.sensors.base import BaseSensorOperator, PokeReturnValue  # type: ignore

from airflow.triggers.base import BaseTrigger, TriggerEvent

Context = Any

__all__ = [
    "AirflowFailException",
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "BaseTrigger",
    "Context",
    "PokeReturnValue",
    "TriggerEvent",
]
