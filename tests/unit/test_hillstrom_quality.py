"""Hillstrom (real randomized e-mail campaign): uplift@30% and three-arm off-policy values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engage.config import load_config
from engage.datasets.hillstrom import load_hillstrom
from engage.evaluation.uplift import uplift_at_k
from engage.models.uplift import MultiArmUplift
from engage.train_offers import fit_offers_from_table

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
COVARIATES = ["recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie", "channel"]


def test_womens_email_uplift_at_30_percent_beats_the_published_figure(shared_data: Path) -> None:
    table = load_hillstrom(shared_data / "hillstrom" / "hillstrom.csv.gz")
    two = table[table["arm"].isin(["womens_email", "none"])].reset_index(drop=True)
    rng = np.random.default_rng(42)
    test = np.zeros(len(two), bool)
    for _, idx in two.groupby("arm").indices.items():  # 50/50 split stratified by arm
        test[rng.choice(idx, size=len(idx) // 2, replace=False)] = True
    train, held = two[~test], two[test]
    model = MultiArmUplift(n_estimators=150, learning_rate=0.03, num_leaves=7, min_child_samples=400)
    model.fit(train[COVARIATES], train["arm"], train["visit"], propensity=train["propensity"])
    score = model.predict_uplift(held[COVARIATES])["womens_email"].to_numpy()
    value = uplift_at_k(held["visit"], held["arm"] == "womens_email", score, k=0.3)
    print(f"Hillstrom womens vs none, visit, uplift@30% = {value:.4f} (published 0.0661)")
    assert value >= 0.0661


def test_three_arm_policy_value_is_reported_with_ci(shared_data: Path) -> None:
    table = load_hillstrom(shared_data / "hillstrom" / "hillstrom.csv.gz")
    fit = fit_offers_from_table(
        table,
        load_config(),
        arm_col="arm",
        outcome_col="visit",
        control="none",
        propensity_col="propensity",
        feature_cols=COVARIATES,
    )
    dr = fit.values[fit.values["estimator"] == "dr"].set_index("policy")
    print(dr)
    learned = dr.loc["learned"]
    assert learned["ci_low"] < learned["value"] < learned["ci_high"]
    assert learned["value"] > dr.loc["none", "ci_high"]  # e-mailing by the model beats sending nothing
