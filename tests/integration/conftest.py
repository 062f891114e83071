"""Real servers for integration tests: `mlflow server` (SQLite or PostgreSQL backend) on a loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import service_missing

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def running_mlflow_server(root: Path, backend_store_uri: str) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (the given backend store, local artifacts); yields its URI."""
    port = free_port()
    log = (root / "server.log").open("wb")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            backend_store_uri,
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{uri}/health", timeout=90, process=process)
        except (RuntimeError, TimeoutError) as exc:
            log.flush()
            raise RuntimeError(
                f"{exc}\n--- server log ---\n{(root / 'server.log').read_text()[-4000:]}"
            ) from exc
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, local artifacts) on 127.0.0.1; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with running_mlflow_server(root, f"sqlite:///{root / 'mlflow.db'}") as uri:
        yield uri


@pytest.fixture(scope="session")
def postgres_database(postgres_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL database of this session on the shared server (dropped afterwards); its URI."""
    import psycopg2
    from psycopg2 import sql

    name = f"engage_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_dsn, connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(scope="session")
def mlflow_postgres_server(tmp_path_factory: pytest.TempPathFactory, postgres_database: str) -> Iterator[str]:
    """A real MLflow tracking server whose backend store is a fresh PostgreSQL database; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-postgres")
    # SQLAlchemy 2.1 reads a bare postgresql:// as the psycopg 3 driver; engage[postgres] installs psycopg2
    backend = postgres_database.replace("postgresql://", "postgresql+psycopg2://", 1)
    with running_mlflow_server(root, backend) as uri:
        yield uri


# --- a Redis of the test's own (stopped and started again; the shared one keeps running) ---------
def start_redis(port: int, log: Path) -> subprocess.Popen[bytes]:
    """A test-owned ``redis-server`` on ``port`` (no persistence), once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server not on PATH")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import redis

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port, socket_timeout=1).ping()
            return process
        except redis.RedisError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"redis-server on {port} did not start: {log.read_text()[-2000:]}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    port = free_port()
    processes = [start_redis(port, tmp_path / "redis.log")]
    try:
        yield port, processes
    finally:
        for process in processes:
            if process.poll() is None:
                stop_process(process)
