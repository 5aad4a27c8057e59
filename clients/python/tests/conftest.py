"""Real `kyu server` processes for the tests: one per backend (a SQLite
file, and PostgreSQL at KYU_TEST_POSTGRES_URL in a schema of its own),
started once per session; each test works in queues of its own.

KYU_BIN names the kyu binary (scripts/test passes target/debug/kyu). Without
PostgreSQL the postgres cases fail: a missing component is a failure here,
not a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import kyu

ROOT = Path(__file__).resolve().parents[3]


def kyu_bin() -> str:
    path = os.environ.get("KYU_BIN") or str(ROOT / "target" / "debug" / "kyu")
    if not Path(path).exists():
        pytest.fail(f"no kyu binary at {path}: build it (cargo build) or set KYU_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "the condition") -> Any:
    """Polls ``check`` until it returns something truthy (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Server:
    """One `kyu server` process on a free port."""

    def __init__(self, database: str, workdir: Path, extra: Optional[list[str]] = None, scheme: str = "http") -> None:
        self.database = database
        self.workdir = workdir
        self.extra = extra or []
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log = workdir / f"server-{self.port}.log"

    def start(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KYU_") or k.startswith("KYU_TEST_")}
        args = [kyu_bin(), "server", "--database", self.database, "--listen", f"127.0.0.1:{self.port}", *self.extra]
        self.proc = subprocess.Popen(
            args, cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("ab")
        )
        return self

    def wait_ready(self, ca_file: Optional[str] = None, token: Optional[str] = None) -> Server:
        with kyu.Client(self.url, token=token, ca_file=ca_file, retries=0, timeout=2) as c:

            def up() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"kyu server exited: {self.log.read_text()}")
                try:
                    c.health()
                    return True
                except kyu.KyuError:
                    return False

            wait_until(up, what=f"kyu server at {self.url}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def database_for(backend: str, workdir: Path) -> str:
    if backend == "sqlite":
        return str(workdir / "kyu.db")
    base = os.environ.get("KYU_TEST_POSTGRES_URL")
    if not base:
        pytest.fail("KYU_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts PostgreSQL")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}schema=kyu_py_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kyu-py-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Server]:
    backend = request.param
    d = workdir / backend
    d.mkdir(exist_ok=True)
    s = Server(database_for(backend, d), d, ["--kill-grace", "1s"]).start().wait_ready()
    yield s
    s.stop()


@pytest.fixture
def client(server: Server) -> Iterator[kyu.Client]:
    with kyu.Client(server.url) as c:
        yield c


@pytest.fixture
def q(request: pytest.FixtureRequest) -> str:
    """A queue name no other test uses."""
    return f"{request.node.name[:60]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")


@pytest.fixture
def spawn_worker(server: Server, workdir: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts ``python -m kyu worker tests.workers:NAME`` as a real process."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, *args: str, env: Optional[dict[str, str]] = None) -> subprocess.Popen[bytes]:
        e = dict(os.environ, KYU_URL=server.url, PYTHONPATH=str(Path(__file__).resolve().parents[1]), **(env or {}))
        log = (workdir / f"worker-{name}-{len(procs)}.log").open("ab")
        p = subprocess.Popen([sys.executable, "-m", "kyu", "worker", f"tests.workers:{name}", *args], env=e, stderr=log)
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
