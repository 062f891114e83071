"""Multi-arm uplift: recovers heterogeneous effects; metrics rank a good model above a random one."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.evaluation.uplift import auuc, qini_coefficient, qini_curve, uplift_at_k
from engage.models.uplift import MultiArmUplift


def _campaign(n: int = 6000, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n), "segment": rng.choice(["a", "b"], n)})
    arm = rng.choice(["none", "coupon", "news"], n, p=[0.5, 0.3, 0.2])  # not uniform: propensities matter
    prop = pd.Series(arm).map({"none": 0.5, "coupon": 0.3, "news": 0.2}).to_numpy()
    p = 0.1 + 0.15 * ((arm == "coupon") & (X["x"] > 0)) + 0.08 * ((arm == "news") & (X["segment"] == "b"))
    y = (rng.random(n) < p).astype(int)
    return X, arm, y, prop


def test_t_learner_recovers_who_responds_to_what() -> None:
    X, arm, y, prop = _campaign()
    model = MultiArmUplift(n_estimators=80, min_child_samples=50).fit(X, arm, y, propensity=prop)
    outcomes = model.predict_outcomes(X)
    assert list(outcomes.columns) == [s.CONTROL_ARM, "coupon", "news"]
    uplift = model.predict_uplift(X)
    assert uplift.loc[X["x"] > 0.5, "coupon"].mean() > uplift.loc[X["x"] < -0.5, "coupon"].mean() + 0.08
    assert (
        uplift.loc[X["segment"] == "b", "news"].mean() > uplift.loc[X["segment"] == "a", "news"].mean() + 0.03
    )


def test_qini_and_uplift_at_k_prefer_the_informed_ranking() -> None:
    X, arm, y, _ = _campaign(seed=1)
    rows = np.isin(arm, ["none", "coupon"])
    treated = arm[rows] == "coupon"
    good, bad = X["x"].to_numpy()[rows], np.random.default_rng(0).normal(size=rows.sum())
    assert qini_coefficient(y[rows], treated, good) > qini_coefficient(y[rows], treated, bad)
    assert uplift_at_k(y[rows], treated, good, 0.3) > uplift_at_k(y[rows], treated, bad, 0.3)
    assert auuc(y[rows], treated, good) > auuc(y[rows], treated, bad)
    curve = qini_curve(y[rows], treated, good)
    assert curve["fraction"].iloc[0] == 0 and curve["fraction"].iloc[-1] == 1
