"""A model bundle as JSON state plus LightGBM text files: same predictions back, allowed classes only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engage.explain import ReasonExplainer
from engage.models.bundle import ChurnBundle, OfferBundle
from engage.models.churn import ChurnModel
from engage.models.persist import FORMAT, BundleParts, from_parts, to_parts
from engage.models.uplift import MultiArmUplift


def _churn(calibration: str) -> tuple[ChurnBundle, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 1_200
    X = pd.DataFrame(
        {
            "days_since_last_event": rng.exponential(10, n),
            "sessions_count_28d": rng.poisson(3, n).astype(float),
            "country": rng.choice(np.array(["US", "FR", None], dtype=object), n),
        }
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-(X["days_since_last_event"] - 10) / 5))).astype(int)
    model = ChurnModel(n_estimators=20, calibration=calibration, early_stopping_rounds=5)  # type: ignore[arg-type]
    model.fit(X[:800], y[:800], X_calib=X[800:], y_calib=y[800:])
    explainer = ReasonExplainer(descriptions={"days_since_last_event": "Days since the last event"}).fit(X, y)
    bundle = ChurnBundle(
        model=model,
        explainer=explainer,
        feature_names=list(X.columns),
        thresholds=(0.2, 0.5),
        metadata={"a": 1},
    )
    return bundle, X


def _offers(learner: str) -> tuple[OfferBundle, pd.DataFrame]:
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"x": rng.normal(size=600), "c": rng.choice(["a", "b"], 600)})
    arm = rng.choice(["none", "coupon", "free"], 600)
    y = (rng.random(600) < 0.3).astype(float)
    model = MultiArmUplift(learner=learner, n_estimators=4, min_child_samples=20).fit(X, arm, y)  # type: ignore[arg-type]
    return OfferBundle(model=model, feature_names=["x", "c"]), X


def _through_files(bundle: object) -> object:
    """What a loader gets back: the state through JSON text, the boosters as their model text."""
    parts = to_parts(bundle)
    return from_parts(BundleParts(state=json.loads(json.dumps(parts.state)), boosters=dict(parts.boosters)))


@pytest.mark.parametrize("calibration", ["platt", "isotonic"])
def test_a_churn_bundle_comes_back_with_the_same_probabilities_reasons_and_bands(calibration: str) -> None:
    bundle, X = _churn(calibration)
    back = _through_files(bundle)
    assert isinstance(back, ChurnBundle)
    np.testing.assert_array_equal(back.predict_proba(X), bundle.predict_proba(X))
    pd.testing.assert_frame_equal(back.contributions(X), bundle.contributions(X))
    assert back.reasons(X.head(20)) == bundle.reasons(X.head(20))
    assert back.thresholds == bundle.thresholds and back.metadata == bundle.metadata
    unseen = X.head(3).assign(country=["DE", None, "US"])
    np.testing.assert_array_equal(back.predict_proba(unseen), bundle.predict_proba(unseen))


@pytest.mark.parametrize("learner", ["t", "x", "s"])
def test_an_offers_bundle_comes_back_with_the_same_outcomes(learner: str) -> None:
    bundle, X = _offers(learner)
    back = _through_files(bundle)
    assert isinstance(back, OfferBundle)
    pd.testing.assert_frame_equal(back.outcomes(X), bundle.outcomes(X))


def test_boosters_are_lightgbm_text_files_and_a_shared_booster_is_stored_once() -> None:
    import lightgbm as lgb

    bundle, _ = _churn("platt")
    parts = to_parts(bundle)
    assert list(parts.boosters) == ["booster_0.txt"]  # ChurnModel.booster_ is model_.booster_
    booster = lgb.Booster(model_str=parts.boosters["booster_0.txt"])
    assert booster.num_feature() == len(bundle.feature_names)
    assert parts.state["format"] == FORMAT


def test_a_state_naming_a_class_outside_the_allow_list_is_refused() -> None:
    bundle, _ = _offers("t")
    parts = to_parts(bundle)
    evil = json.loads(json.dumps(parts.state).replace("engage.models.bundle.OfferBundle", "os._wrap_close"))
    with pytest.raises(ValueError, match="engage, scikit-learn or LightGBM"):
        from_parts(BundleParts(state=evil, boosters=parts.boosters))
    with pytest.raises(ValueError, match="format"):
        from_parts(BundleParts(state={**parts.state, "format": "pickle"}, boosters=parts.boosters))


def test_an_object_outside_the_allow_list_is_not_stored() -> None:
    class Local:
        pass

    with pytest.raises(TypeError, match="only engage, scikit-learn and LightGBM"):
        to_parts({"model": Local()})
