"""Run -> register -> promote: the names a training run leaves in MLflow, and the gate deciding the alias."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engage import tracking
from engage.config import EngageConfig, load_config
from engage.models.bundle import OfferBundle
from engage.models.uplift import MultiArmUplift
from engage.training.registry import record_and_promote


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EngageConfig]:
    """A config whose tracking store is a fresh SQLite file; the global MLflow URIs are restored."""
    import mlflow

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    yield load_config(overrides={"tracking.uri": uri, "tracking.experiment": "registry"})
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def _bundle() -> tuple[OfferBundle, pd.DataFrame]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=400)})
    arm = rng.choice(["none", "coupon"], 400)
    y = (rng.random(400) < 0.3).astype(float)
    model = MultiArmUplift(learner="t", n_estimators=2, min_child_samples=20).fit(X, arm, y)
    return OfferBundle(model=model, feature_names=["x"]), X.head(5)


def test_a_run_is_recorded_registered_and_promoted_only_when_the_gate_says_so(store: EngageConfig) -> None:
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    bundle, example = _bundle()
    name = "engage-test"
    asked: list[str] = []

    def gate(decision: bool):
        def judge(model_name: str) -> tuple[bool, dict[str, float]]:
            asked.append(model_name)
            return decision, {"gate_promoted": float(decision)}

        return judge

    def record(decision: bool):
        figure = plt.figure()
        try:
            return record_and_promote(
                bundle,
                store,
                kind="offers",
                model_name=name,
                run_name="unit",
                input_example=example,
                method="predict_outcomes",
                metrics={"policy_value_dr": 1.5, "not_finite": float("nan")},
                gate=gate(decision),
                fingerprints={"data": {"rows": 400}, "table": {"snapshots": 3}},
                figures={"policy_values": figure},
                frames={"policy_values.csv": pd.DataFrame({"policy": ["learned"], "value": [1.5]})},
            )
        finally:
            plt.close(figure)

    first = record(True)
    client = MlflowClient()
    run = client.get_run(first.run_id)
    assert run.data.tags["engage.model"] == "offers"
    assert run.data.tags["engage.code_version"]
    assert run.data.tags["engage.promoted"] == "True"
    assert {"data.rows": "400", "table.snapshots": "3"}.items() <= run.data.params.items()
    assert run.data.params["seed"] == str(store.seed)
    assert run.data.metrics == {"policy_value_dr": 1.5, "gate_promoted": 1.0}
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"config.yaml", "plots", "policy_values.csv"} <= artifacts
    assert [a.path for a in client.list_artifacts(first.run_id, "plots")] == ["plots/policy_values.png"]
    assert first.promoted and first.version == "1" and asked == [name]
    assert tracking.alias_version(name, tracking.CHAMPION) == "1"
    assert tracking.alias_version(name, tracking.CHALLENGER) == "1"
    assert isinstance(tracking.load_estimator(first.model_uri), OfferBundle)

    second = record(False)  # the gate refuses: registered as the challenger, the champion stays
    assert not second.promoted and second.version == "2" and asked == [name, name]
    assert tracking.alias_version(name, tracking.CHAMPION) == "1"
    assert tracking.alias_version(name, tracking.CHALLENGER) == "2"
    refused = client.get_run(second.run_id).data
    assert refused.tags["engage.promoted"] == "False" and refused.metrics["gate_promoted"] == 0.0
