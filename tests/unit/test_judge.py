"""Judging a decision log: lift vs holdout per message and risk band, off-policy values with overlap."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.config import load_config
from engage.evaluation.judge import judge_decisions
from engage.evaluation.lift import lift_vs_holdout, with_risk_band
from engage.offers import evaluation as ev
from engage.offers.catalog import load_catalog
from engage.offers.training import rewards

CATALOG = load_catalog(load_config().offers.catalog_path)
MESSAGES = ["none", "cart_coupon", "winback_offer"]
BASE = 0.10
EFFECT = {"none": 0.0, "cart_coupon": 0.08, "winback_offer": -0.04}


def _log(n: int, seed: int, holdout_pct: float = 0.2, with_intended: bool = True) -> pd.DataFrame:
    """Decisions with outcomes from a known world: a logging policy over three arms, a random holdout."""
    rng = np.random.default_rng(seed)
    probs = np.array([0.2, 0.5, 0.3])
    intended = rng.choice(MESSAGES, size=n, p=probs)
    held = rng.random(n) < holdout_pct
    sent = np.where(held, "none", intended)
    propensity = np.where(held, 1.0, probs[[MESSAGES.index(m) for m in intended]])
    churn = rng.random(n)
    p_convert = BASE + np.vectorize(EFFECT.get)(sent) + 0.05 * (churn < 0.3)
    converted = rng.random(n) < p_convert
    frame = pd.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(n)],
            s.USER_ID: [f"u{i}" for i in range(n)],
            "decided_at": pd.Timestamp("2024-03-01", tz="UTC"),
            s.MESSAGE_ID: sent,
            s.CHANNEL: "email",
            s.PROPENSITY: propensity,
            "holdout": held,
            "churn_probability": churn,
            s.CONVERTED: converted,
            s.REVENUE: np.where(converted, rng.uniform(10, 50, n), 0.0),
        }
    )
    if with_intended:
        frame[s.INTENDED_MESSAGE_ID] = intended
    return frame


def test_lift_per_message_covers_the_true_effect_and_the_overall_lift_mixes_them() -> None:
    log = _log(40_000, seed=7)
    per_message = lift_vs_holdout(log, by=s.INTENDED_MESSAGE_ID, metrics=[s.CONVERTED], n_boot=300).set_index(
        "group"
    )
    for message, effect in EFFECT.items():
        row = per_message.loc[message]
        assert row["ci_low"] <= effect <= row["ci_high"], (message, row.to_dict())
        assert row["treated_n"] + row["holdout_n"] == (log[s.INTENDED_MESSAGE_ID] == message).sum()
    assert per_message.loc["cart_coupon", "ci_low"] > 0 > per_message.loc["winback_offer", "ci_high"]
    overall = lift_vs_holdout(log, metrics=[s.CONVERTED], n_boot=300).iloc[0]
    mixed = 0.5 * EFFECT["cart_coupon"] + 0.3 * EFFECT["winback_offer"]
    assert overall["ci_low"] <= mixed <= overall["ci_high"]
    assert overall["treated_n"] == (~log["holdout"]).sum() and overall["holdout_n"] == log["holdout"].sum()


def test_risk_bands_come_from_the_logged_probability_and_groups_without_holdout_get_no_lift() -> None:
    log = _log(2_000, seed=2)
    log.loc[:9, "churn_probability"] = np.nan
    banded = with_risk_band(log, (0.3, 0.6))
    assert set(banded["risk_band"]) == {"low", "medium", "high", "unknown"}
    p = log.loc[10:, "churn_probability"].to_numpy()
    expected = np.where(p < 0.3, "low", np.where(p < 0.6, "medium", "high"))
    assert banded.loc[10:, "risk_band"].tolist() == expected.tolist()
    assert (banded.loc[:9, "risk_band"] == "unknown").all()
    log.loc[log[s.INTENDED_MESSAGE_ID] == "winback_offer", "holdout"] = False
    table = lift_vs_holdout(log, by=s.INTENDED_MESSAGE_ID, metrics=[s.CONVERTED], n_boot=50).set_index(
        "group"
    )
    assert table.loc["winback_offer", "holdout_n"] == 0 and math.isnan(table.loc["winback_offer", "lift"])
    with pytest.raises(KeyError, match="holdout"):
        lift_vs_holdout(log.drop(columns="holdout"))


def test_the_compact_bootstrap_has_the_distribution_of_row_resampling() -> None:
    rng = np.random.default_rng(5)
    n = 80_000  # above the size where the compact path starts
    for values in (
        (rng.random(n) < 0.07).astype(float),  # few distinct values: multinomial counts
        np.where(rng.random(n) < 0.07, rng.uniform(5, 50, n), 0.0),  # many: rows off the common value
    ):
        got = ev.bootstrap_mean(values, n_boot=400, seed=1)
        idx = np.random.default_rng(2).integers(0, n, size=(400, n))
        means = values[idx].mean(axis=1)
        lo, hi = np.quantile(means, [0.025, 0.975])
        width = hi - lo
        assert got.value == pytest.approx(values.mean())
        assert abs(got.ci_low - lo) < 0.15 * width and abs(got.ci_high - hi) < 0.15 * width
    diff = ev.bootstrap_difference(values, values[: n // 4], n_boot=300, seed=0)
    assert diff.ci_low < diff.value < diff.ci_high
    assert math.isnan(ev.bootstrap_difference(values, [], n_boot=10).value)


def test_ope_of_none_matches_the_holdout_and_thin_overlap_is_flagged() -> None:
    log = _log(30_000, seed=3)
    arms = list(CATALOG.arms)
    rare = pd.DataFrame(0.0, index=log.index, columns=arms)
    rare["retained_content"] = 1.0  # never logged: no overlap at all
    greedy = pd.DataFrame(0.0, index=log.index, columns=arms)
    greedy["cart_coupon"] = 1.0
    judged = judge_decisions(
        log, CATALOG, candidates={"rare": rare, "coupon": greedy}, n_boot=200, skipped_lines=3
    )
    values = judged.values.set_index(["policy", "estimator"])
    reward = rewards(log[s.MESSAGE_ID], log[s.CONVERTED].astype(float), CATALOG)
    holdout_value = reward[log["holdout"].to_numpy()].mean()
    assert values.loc[("holdout", "on_policy"), "value"] == pytest.approx(holdout_value)
    none_dr = values.loc[("none", "dr")]
    assert none_dr["ci_low"] <= holdout_value + 0.01 and holdout_value - 0.01 <= none_dr["ci_high"]
    overlap = judged.overlap.set_index("policy")
    coupon = log[s.MESSAGE_ID] == "cart_coupon"
    w = np.where(coupon, 1 / log[s.PROPENSITY], 0.0)
    assert overlap.loc["coupon", "ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert overlap.loc["coupon", "max_weight"] == pytest.approx(2.0)
    assert overlap.loc["rare", "ess"] == 0.0
    assert any(m.startswith("rare: overlap too thin") for m in judged.warnings)
    assert not any(m.startswith("coupon:") for m in judged.warnings)
    assert any("3 decision-log line(s) were skipped" in m for m in judged.warnings)
    summary = judged.summary()
    text = json.dumps(summary, allow_nan=False)  # NaN would be invalid JSON: nulls instead
    assert json.loads(text)["skipped_lines"] == 3
    assert summary["ess"]["rare"] == 0.0 and summary["max_weight"]["coupon"] == pytest.approx(2.0)
    assert {r["group"] for r in summary["per_message"]} == set(MESSAGES)
    assert {(r["policy"], r["estimator"]) for r in summary["policies"]} >= {
        ("coupon", "dr"),
        ("none", "snips"),
    }


def test_a_log_without_intended_messages_is_judged_overall_with_a_note() -> None:
    log = _log(3_000, seed=4, with_intended=False)
    log.loc[:4, s.PROPENSITY] = np.nan
    judged = judge_decisions(log, CATALOG, n_boot=50)
    assert judged.lift_by_message is None
    assert any("no intended_message_id" in n for n in judged.notes)
    assert any("5 decision(s) without a logged propensity" in n for n in judged.notes)
    assert judged.summary()["per_message"] == []
    with pytest.raises(ValueError, match="candidate 'x'"):
        judge_decisions(log, CATALOG, candidates={"x": pd.DataFrame({"none": [1.0]})}, n_boot=5)
