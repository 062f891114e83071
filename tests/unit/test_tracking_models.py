"""Logged models: files, not pickles; requirements from engage's own metadata; old pickled ones still load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engage import tracking
from engage.models.bundle import OfferBundle
from engage.models.uplift import MultiArmUplift


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    import mlflow

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.configure(uri)
    yield uri
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def _bundle() -> tuple[OfferBundle, pd.DataFrame]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=300), "c": rng.choice(["a", "b"], 300)})
    arm = rng.choice(["none", "coupon"], 300)
    y = (rng.random(300) < 0.3).astype(float)
    model = MultiArmUplift(learner="t", n_estimators=3, min_child_samples=20).fit(X, arm, y)
    return OfferBundle(model=model, feature_names=["x", "c"]), X


def test_requirements_are_engage_dependencies_pinned_to_what_is_installed() -> None:
    from importlib import metadata

    pinned = dict(line.split("==") for line in tracking.requirements())
    assert {"polars", "lightgbm", "pandas", "mlflow"} <= set(pinned)
    assert pinned["polars"] == metadata.version("polars")
    assert "bentoml" not in pinned and "pyspark" not in pinned  # extras stay out


def test_a_logged_model_is_files_and_engage_reads_them_back(store: str) -> None:
    bundle, X = _bundle()
    with tracking.run("models", "unit"):
        uri, _ = tracking.log_model(
            bundle, name="offers_model", input_example=X.head(3), method="predict_outcomes"
        )
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    files = {p.split("/")[-1] for p in _listing(get_artifact_repository(uri), "artifacts")}
    assert files == {"state.json", "booster_0.txt", "booster_1.txt"}
    back = tracking.load_estimator(uri)
    assert isinstance(back, OfferBundle)
    pd.testing.assert_frame_equal(back.outcomes(X), bundle.outcomes(X))


def _listing(repo: object, path: str) -> list[str]:
    return [f.path for f in repo.list_artifacts(path)]  # type: ignore[attr-defined]


def test_a_model_pickled_by_an_older_engage_still_loads(store: str) -> None:
    import mlflow
    from mlflow.pyfunc import PythonModel

    bundle, X = _bundle()

    class EngagePyfunc(PythonModel):  # the shape of the wrapper engage logged before models from code
        def __init__(self, estimator: OfferBundle) -> None:
            self.estimator = estimator

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return self.estimator.outcomes(model_input)

    with tracking.run("models", "legacy"):
        info = mlflow.pyfunc.log_model(name="legacy", python_model=EngagePyfunc(bundle))
    back = tracking.load_estimator(info.model_uri)
    assert isinstance(back, OfferBundle)
    pd.testing.assert_frame_equal(back.outcomes(X), bundle.outcomes(X))
