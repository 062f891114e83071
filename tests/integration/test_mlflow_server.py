"""Churn training against a real `mlflow server`: run, metrics, registry aliases, model loaded back."""

from __future__ import annotations

import numpy as np
import pytest

from engage import tracking
from engage.config import load_config
from engage.datasets.simulate import simulate
from engage.training.churn import build_churn_table, train_churn

pytestmark = pytest.mark.integration

METRIC_KEYS = [
    f"oot_{key}{suffix}"
    for key in ("auc", "pr_auc", "logloss", "brier", "ece", "lift_top_decile")
    for suffix in ("", "_logreg", "_recency")
]


def test_train_against_a_server_and_load_the_champion(mlflow_server: str) -> None:
    from mlflow import MlflowClient

    data = simulate(2_500, 150, seed=5)
    cfg = load_config(
        overrides={
            "tracking.uri": mlflow_server,
            "tracking.experiment": "integration",
            "labels.min_churned": 150,
            "labels.min_retained": 150,
            "churn.n_estimators": 120,
        }
    )
    table = build_churn_table(data.events, cfg, users=data.users, exposures=data.exposures)
    first = train_churn(
        data.events, cfg, users=data.users, exposures=data.exposures, states=data.states, table=table
    )
    assert first.promoted and first.version == "1"

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(first.run_id)
    assert set(METRIC_KEYS) <= set(run.data.metrics)
    assert "oracle_auc" in run.data.metrics
    assert {"data.rows", "data.sha256", "table.rows"} <= set(run.data.params)
    assert run.data.tags["engage.code_version"]
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert {"plots/roc.png", "plots/calibration.png", "plots/shap_summary.png"} <= artifacts

    tracking.configure(mlflow_server)
    champion = tracking.load_model("models:/engage-churn@champion")
    test = first.fit.test
    served = np.asarray(champion.predict(test[first.fit.bundle.feature_names]), dtype=float)
    np.testing.assert_allclose(served, first.fit.test_probability, rtol=0, atol=1e-9)
    assert ((served >= 0) & (served <= 1)).all()

    # the same data again: the challenger cannot beat the champion by the margin, so no promotion
    stricter = cfg.model_copy(update={"churn": cfg.churn.model_copy(update={"promote_margin": 0.01})})
    second = train_churn(data.events, stricter, users=data.users, exposures=data.exposures, table=table)
    assert not second.promoted
    assert client.get_model_version_by_alias("engage-churn", "champion").version == "1"
    assert client.get_model_version_by_alias("engage-churn", "challenger").version == "2"
    gate = client.get_run(second.run_id).data.metrics
    assert gate["gate_promoted"] == 0.0 and "gate_champion_auc" in gate
