"""fit_offers personalises only when per-user targeting beats the best single arm out of fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.config import EngageConfig, OfferConfig
from engage.models.uplift import MultiArmUplift
from engage.offers.training import fit_offers_from_table


def _campaign(n: int, heterogeneous: bool, seed: int) -> pd.DataFrame:
    """Randomized three-arm campaign; `a` helps only x > 0 and `b` only x < 0 when heterogeneous."""
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=n), rng.normal(size=n)
    arm = rng.choice(["ctl", "a", "b"], n)
    if heterogeneous:
        lift = np.where(arm == "a", 0.15 * (x > 0), 0.0) + np.where(arm == "b", 0.15 * (x < 0), 0.0)
    else:
        lift = np.where(arm == "a", 0.06, 0.0) + np.where(arm == "b", 0.05, 0.0)
    y = (rng.random(n) < 0.1 + lift).astype(int)
    return pd.DataFrame({"x": x, "z": z, "arm": arm, "y": y})


def _config(personalize: str) -> EngageConfig:
    base = EngageConfig()
    offers = base.offers.model_dump() | {"personalize": personalize, "n_estimators": 60}
    return base.model_copy(update={"offers": OfferConfig.model_validate(offers)})


@pytest.mark.parametrize(("heterogeneous", "expected"), [(True, 1.0), (False, 0.0)])
def test_personalises_only_when_it_pays_out_of_fold(heterogeneous: bool, expected: float) -> None:
    table = _campaign(12_000, heterogeneous, seed=4)
    fit = fit_offers_from_table(
        table, _config("significant"), arm_col="arm", outcome_col="y", control="ctl", feature_cols=["x", "z"]
    )
    m = fit.metrics
    assert m["personalized"] == expected
    assert m["personalization_gain_oof_ci_low"] <= m["personalization_gain_oof"]
    assert (m["personalization_gain_oof_ci_low"] > 0) == bool(expected)
    dr = fit.values[fit.values["estimator"] == "dr"].set_index("policy")["value"]
    if not heterogeneous:  # the fallback serves the best single arm to everyone: the same DR value
        assert dr["learned_greedy"] == pytest.approx(dr["only_a"])
    else:
        assert dr["learned_greedy"] > max(dr["only_a"], dr["only_b"])


def test_always_personalises_without_the_check() -> None:
    table = _campaign(6_000, False, seed=5)
    fit = fit_offers_from_table(
        table, _config("always"), arm_col="arm", outcome_col="y", control="ctl", feature_cols=["x", "z"]
    )
    assert "personalized" not in fit.metrics


def test_drop_heterogeneity_serves_each_arm_at_its_average_effect() -> None:
    table = _campaign(6_000, True, seed=6)
    model = MultiArmUplift(control="ctl", learner="x", n_estimators=40, min_child_samples=100, shrink_folds=2)
    oof = model.fit_oof(table[["x", "z"]], table["arm"], table["y"])
    assert list(oof.columns) == model.arms_ and len(oof) == len(table)
    assert model.predict_uplift(table[["x", "z"]])["a"].std() > 0.02
    flat = model.drop_heterogeneity().predict_uplift(table[["x", "z"]])
    ate = {a: v[0] for a, v in model.shrinkage_.items()}
    assert np.allclose(flat["a"], ate["a"], atol=1e-9) and np.allclose(flat["b"], ate["b"], atol=1e-9)
    with pytest.raises(ValueError, match="shrink_folds"):
        MultiArmUplift(control="ctl", shrink_folds=0).fit_oof(table[["x", "z"]], table["arm"], table["y"])
