"""`KyuHook`: a `kyu.Client` from an Airflow connection."""

from __future__ import annotations

import json
from typing import Any, Optional

from ..client import DEFAULT_URL, AsyncClient, Client
from ._compat import BaseHook


class KyuHook(BaseHook):  # type: ignore[misc]
    """Talks to a kyu server named by an Airflow connection: its host with
    scheme (``https://kyu.internal``) and port are the server URL, its
    password the token, and ``ca_file`` in its extra a private CA."""

    conn_name_attr = "kyu_conn_id"
    default_conn_name = "kyu_default"
    conn_type = "kyu"
    hook_name = "kyu job queue"

    def __init__(self, kyu_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kyu_conn_id = kyu_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login"],
            "relabeling": {"host": "Server URL (http:// or https://)", "password": "Token"},
            "placeholders": {"host": "http://127.0.0.1", "port": "7700", "extra": '{"ca_file": "/path/to/ca.pem"}'},
        }

    def client_params(self) -> dict[str, Any]:
        """``url``, ``token`` and ``ca_file`` for `kyu.Client`."""
        conn = self.get_connection(self.kyu_conn_id)
        return params_of(conn.host, conn.port, conn.password, conn.extra)

    def get_conn(self) -> Client:
        return Client(**self.client_params())

    def get_async_conn(self) -> AsyncClient:
        return AsyncClient(**self.client_params())

    def test_connection(self) -> tuple[bool, str]:
        try:
            with self.get_conn() as c:
                c.queues()
            return True, "kyu answered"
        except Exception as e:
            return False, str(e)


def params_of(host: Optional[str], port: Optional[int], password: Optional[str], extra: Any) -> dict[str, Any]:
    if host:
        base = host if "://" in host else f"http://{host}"
        base = base.rstrip("/")
        url = f"{base}:{port}" if port else base
    else:
        url = DEFAULT_URL
    options: dict[str, Any] = {}
    if isinstance(extra, str) and extra.strip():
        options = json.loads(extra)
    elif isinstance(extra, dict):
        options = extra
    out: dict[str, Any] = {"url": url, "token": password or None}
    if options.get("ca_file"):
        out["ca_file"] = options["ca_file"]
    if options.get("timeout"):
        out["timeout"] = float(options["timeout"])
    return out
