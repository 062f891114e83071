"""Hillstrom (real randomized e-mail campaign): uplift@30% and three-arm off-policy values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.config import load_config
from engage.datasets.hillstrom import load_hillstrom
from engage.evaluation.uplift import uplift_at_k, uplift_by_arm
from engage.models.uplift import MultiArmUplift
from engage.offers.evaluation import Estimate
from engage.offers.training import ARM, OfferFit, fit_offers_from_table

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
COVARIATES = ["recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie", "channel"]


def _split(table: pd.DataFrame, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """50/50 split stratified by arm, seeded."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(table), bool)
    for _, idx in table.groupby("arm").indices.items():
        test[rng.choice(idx, size=len(idx) // 2, replace=False)] = True
    return table[~test].reset_index(drop=True), table[test].reset_index(drop=True)


def test_womens_email_uplift_at_30_percent_beats_the_published_figure(shared_data: Path) -> None:
    table = load_hillstrom(shared_data / "hillstrom" / "hillstrom.csv.gz")
    two = table[table["arm"].isin(["womens_email", "none"])].reset_index(drop=True)
    train, held = _split(two)
    model = MultiArmUplift(n_estimators=150, learning_rate=0.03, num_leaves=7, min_child_samples=400)
    model.fit(train[COVARIATES], train["arm"], train["visit"], propensity=train["propensity"])
    score = model.predict_uplift(held[COVARIATES])["womens_email"].to_numpy()
    value = uplift_at_k(held["visit"], held["arm"] == "womens_email", score, k=0.3)
    print(f"Hillstrom womens vs none, visit, uplift@30% = {value:.4f} (published 0.0661)")
    assert value >= 0.0661


@pytest.fixture(scope="module")
def three_arm_fit(shared_data: Path) -> OfferFit:
    """The training path on the three-arm campaign: fit_offers_from_table with its held-out OPE."""
    table = load_hillstrom(shared_data / "hillstrom" / "hillstrom.csv.gz")
    return fit_offers_from_table(
        table,
        load_config(),
        arm_col="arm",
        outcome_col="visit",
        control="none",
        propensity_col="propensity",
        feature_cols=COVARIATES,
    )


def test_three_arm_policy_value_is_reported_with_ci(three_arm_fit: OfferFit) -> None:
    fit = three_arm_fit
    dr = fit.values[fit.values["estimator"] == "dr"].set_index("policy")
    print(dr)
    learned = dr.loc["learned"]
    assert learned["ci_low"] < learned["value"] < learned["ci_high"]
    assert learned["value"] > dr.loc["none", "ci_high"]  # e-mailing by the model beats sending nothing


def test_three_arm_learned_policy_off_policy_value_next_to_the_best_single_arm(
    three_arm_fit: OfferFit,
) -> None:
    """Learned greedy policy on held-out rows (IPS, SNIPS, DR with 95% CIs) vs every single arm."""
    fit = three_arm_fit
    print(fit.values.to_string(index=False))
    uplift = fit.bundle.model.predict_uplift(fit.test[COVARIATES])
    print(uplift_by_arm(fit.test[s.CONVERTED], fit.test[ARM], uplift).to_string(index=False))
    assert {"ips", "snips", "dr"} == set(fit.values["estimator"])
    dr = fit.values[fit.values["estimator"] == "dr"].set_index("policy")
    singles = dr.loc[[f"only_{a}" for a in ("mens_email", "womens_email")]]
    best = singles["value"].idxmax()
    learned = dr.loc["learned_greedy"]
    top = dr.loc[best]
    print(
        f"learned DR {learned['value']:.4f} [{learned['ci_low']:.4f}, {learned['ci_high']:.4f}] vs best "
        f"single arm {best} {top['value']:.4f} [{top['ci_low']:.4f}, {top['ci_high']:.4f}]"
    )
    assert learned["ci_low"] <= learned["value"] <= learned["ci_high"]
    assert learned["value"] > dr.loc["none", "ci_high"]  # targeting by the model beats sending nothing
    assert learned["ci_high"] >= top["value"]  # and is not worse than the best arm beyond noise
    # Paired: DR is linear in the target, so the difference policy (learned - best arm) gives the
    # difference of the two values on the same rows, with one bootstrap interval (fit_offers' metric).
    m = fit.metrics
    paired = Estimate(
        m["greedy_minus_best_single_arm_dr"],
        m["greedy_minus_best_single_arm_dr_ci_low"],
        m["greedy_minus_best_single_arm_dr_ci_high"],
    )
    print(f"learned - {best} (paired DR): {paired.value:+.4f} [{paired.ci_low:+.4f}, {paired.ci_high:+.4f}]")
    assert abs(paired.value - (learned["value"] - top["value"])) < 1e-9
    assert paired.ci_low <= paired.value <= paired.ci_high
    print(
        f"personalising out of fold: {m['personalization_gain_oof']:+.4f} "
        f"[{m['personalization_gain_oof_ci_low']:+.4f}, {m['personalization_gain_oof_ci_high']:+.4f}] "
        f"-> personalized {m['personalized']:.0f}"
    )
    # The target: at least the best single arm. Targeting that does not pay out of fold falls back
    # to every arm's average effect, which sends the best arm to everyone.
    assert learned["value"] >= top["value"] - 1e-12
    assert paired.ci_low >= 0.0 or m["personalized"] == 1.0
