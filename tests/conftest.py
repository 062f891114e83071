"""Shared test fixtures: offline, telemetry-free environment and the real data sets."""

from __future__ import annotations

import os
from pathlib import Path

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
