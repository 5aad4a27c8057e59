"""The Python examples (examples/python/*.py) run against a real server on
each backend and check themselves: each exits 0 only if what it shows held."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT, Server


@pytest.mark.parametrize("example", ["arq_style.py", "bullmq_steps.py", "celery_chain.py"])
def test_example(example: str, server: Server) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYU_")}
    env["KYU_URL"] = server.url
    path = ROOT / "examples" / "python" / example
    out = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "example: ok" in out.stdout
