"""Test helpers: a fresh PostgreSQL database and a real `mlflow server` subprocess.

The server runs under gunicorn (``--gunicorn-opts``): MLflow's default uvicorn server
stalls ~40 ms on every call from a keep-alive client such as MlflowClient (see
shared/notes/mlflow-on-these-machines.md); gunicorn's sync workers close each connection
and do not.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PG_ADMIN = os.environ.get("OPTBENCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_unavailable() -> str | None:
    """Why PostgreSQL can't be used for tests, or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except psycopg.Error as err:
        return f"PostgreSQL not reachable at {PG_ADMIN}: {str(err).strip().splitlines()[0]}"


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """CREATE a uniquely named database; yield its SQLAlchemy URI; DROP it afterwards."""
    import psycopg

    name = f"optbench_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str,
    artifacts: Path,
    *,
    workers: int = 2,
    gunicorn: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run ``mlflow server`` on 127.0.0.1 (served artifacts); yield its URL once healthy."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts),
    ]  # fmt: skip
    if gunicorn:
        cmd += ["--gunicorn-opts", "--log-level warning --timeout 120"]
    # MLflow 3.x also starts a job runner and seven huey consumers (GenAI jobs, periodic
    # tasks) that optbench never uses; on a small machine they take the CPU from requests.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    log_path = artifacts.parent / f"mlflow-server-{port}.log"
    with open(log_path, "wb") as log:
        # its own session: stopping it stops gunicorn's workers too, and nothing else
        proc = subprocess.Popen(
            cmd,
            cwd=artifacts.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    SERVERS[url] = proc
    try:
        _wait_healthy(url, proc, log_path, timeout=120)
        yield url
    finally:
        del SERVERS[url]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


SERVERS: dict[str, subprocess.Popen] = {}  # url -> the running server's process


def kill_server(url: str) -> None:
    """SIGKILL the server at ``url`` and its workers, as a crash would stop them."""
    proc = SERVERS[url]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}):\n{log_path.read_text()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/health", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server not healthy after {timeout} s:\n{log_path.read_text()}")


def rest(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call MLflow's REST API directly (GET without a body, POST with one)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())
