"""The whole chain against `mlflow server` on PostgreSQL, unchanged: train, register, gate, build, score.

The train/register/gate part is the SQLite server test's own body (``test_mlflow_server``), run against
a server whose backend store is a fresh PostgreSQL database; ``engage build`` and ``engage score``
then read the champion from that server as a deployment would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from engage import schemas as s
from engage.datasets.simulate import simulate
from tests.integration.test_mlflow_server import (
    test_train_against_a_server_and_load_the_champion as train_register_gate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _engage(*args: str, env: dict[str, str]) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "engage.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (
        f"engage {' '.join(args)}: exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    )
    return run.stdout


def test_train_register_gate_build_and_score_on_postgres(mlflow_postgres_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    train_register_gate(mlflow_postgres_server)  # promoted v1, v2 the challenger, gate metrics logged
    client = MlflowClient(tracking_uri=mlflow_postgres_server, registry_uri=mlflow_postgres_server)
    assert client.get_model_version_by_alias("engage-churn", "champion").version == "1"
    assert client.get_model_version("engage-churn", "1").run_id, "the registry row lives in PostgreSQL"

    data = simulate(2_500, 150, seed=5)
    events = tmp_path / "events.parquet"
    data.events.write_parquet(events)
    users = tmp_path / "users.parquet"
    data.users.write_parquet(users)
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "MLFLOW_TRACKING_URI": mlflow_postgres_server,
        "BENTOML_DO_NOT_TRACK": "true",
    }
    built = _engage("build", "--offline", "--tracking-uri", mlflow_postgres_server, env=env)
    assert "engage" in built
    as_of = (pd.Timestamp(data.events[s.TS].max()).normalize() - pd.Timedelta(days=3)).date().isoformat()
    out = tmp_path / "scores.parquet"
    _engage(
        "score",
        "--events",
        str(events),
        "--users",
        str(users),
        "--as-of",
        as_of,
        "--out",
        str(out),
        "--tracking-uri",
        mlflow_postgres_server,
        "--snapshot",
        str(tmp_path / "snapshot.parquet"),
        "--decision-log",
        str(tmp_path / "decisions"),
        env=env,
    )
    scores = pd.read_parquet(out)
    assert len(scores) > 0 and scores["churn_probability"].between(0, 1).all()
    assert set(scores["model_versions"].astype(str).str.contains("engage-churn/1")) == {True}
