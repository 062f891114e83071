"""Shared test fixtures: offline, telemetry-free environment and the real data sets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "SPARK_LOCAL_IP": "127.0.0.1",
}.items():
    os.environ.setdefault(_key, _value)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ENGAGE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data sets; skips the test with the reason when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (set ENGAGE_SHARED_DATA)")
    return SHARED_DATA


_MLFLOW_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def _mlflow_variables_stay_per_test() -> object:
    """``mlflow.set_tracking_uri`` (MLflow 3) also writes ``MLFLOW_TRACKING_URI`` into os.environ, and the
    variable outranks a config file: one test pointing MLflow at its store would steer every later
    test's config there. Each test gets back the variables it started with."""
    before = {name: os.environ.get(name) for name in _MLFLOW_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# --- shared servers: Redis and PostgreSQL on their standard loopback ports -----------------------
REQUIRE_SERVICES = "ENGAGE_REQUIRE_SERVICES"
REDIS_URL = os.environ.get("ENGAGE_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("ENGAGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def service_missing(reason: str) -> NoReturn:
    """Skip the test with ``reason`` where a server is not running; fail it instead under
    ``ENGAGE_REQUIRE_SERVICES=1`` (``.ci/run``), where its absence is a broken CI machine."""
    if os.environ.get(REQUIRE_SERVICES, "").strip() == "1":
        pytest.fail(f"{reason} ({REQUIRE_SERVICES}=1: this machine must run it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis (``ENGAGE_TEST_REDIS``, default 127.0.0.1:6379/0); skips (or fails) without it."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing(f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own in the shared Redis; its keys are deleted afterwards."""
    import redis

    prefix = f"engage-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
        for start in range(0, len(keys), 10_000):
            client.unlink(*keys[start : start + 10_000])
    finally:
        client.close()


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The shared PostgreSQL (``ENGAGE_TEST_POSTGRES``, trust auth, database ``test``); skips (or fails)."""
    try:
        import psycopg2
    except ImportError:
        service_missing("psycopg2 not installed (pip install 'engage[postgres]')")
    try:
        psycopg2.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg2.Error as exc:
        service_missing(f"PostgreSQL not reachable at {POSTGRES_DSN}: {str(exc).strip()}")
    return POSTGRES_DSN
