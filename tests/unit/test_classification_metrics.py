"""Classification metrics: exact keys, ECE on known cases, lift table arithmetic, input checks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from engage.evaluation.classification import classification_metrics, expected_calibration_error, lift_table


def _calibrated(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, n)
    return (rng.random(n) < p).astype(int), p


def test_keys_are_exact_with_prefix_and_suffix() -> None:
    y, p = _calibrated(2_000)
    assert list(classification_metrics(y, p)) == [
        "oot_auc",
        "oot_pr_auc",
        "oot_logloss",
        "oot_brier",
        "oot_ece",
        "oot_lift_top_decile",
    ]
    keys = classification_metrics(y, p, suffix="_logreg")
    assert set(keys) == {
        f"oot_{k}_logreg" for k in ("auc", "pr_auc", "logloss", "brier", "ece", "lift_top_decile")
    }
    assert set(classification_metrics(y, p, prefix="served_")) == {
        f"served_{k}" for k in ("auc", "pr_auc", "logloss", "brier", "ece", "lift_top_decile")
    }
    assert all(isinstance(v, float) for v in keys.values())


def test_values_match_their_definitions() -> None:
    y, p = _calibrated()
    m = classification_metrics(y, p)
    assert m["oot_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["oot_brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["oot_logloss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    top = np.argsort(-p)[: len(p) // 10]
    assert m["oot_lift_top_decile"] == pytest.approx(y[top].mean() / y.mean())
    assert m["oot_ece"] < 0.02  # probabilities that are the true rates are calibrated


def test_ece_sees_miscalibration_and_uses_equal_frequency_bins() -> None:
    y, p = _calibrated()
    assert expected_calibration_error(y, np.clip(p + 0.1, 0, 1)) == pytest.approx(0.1, abs=0.02)
    # two bins of equal size: p=0.2 with rate 0.5 and p=0.8 with rate 0.5 -> ECE 0.3
    y2 = np.array([0, 1] * 50 + [1, 0] * 50)
    p2 = np.array([0.2] * 100 + [0.8] * 100)
    assert expected_calibration_error(y2, p2, n_bins=2) == pytest.approx(0.3)


def test_lift_table_counts_gain_and_lift() -> None:
    y, p = _calibrated(1_000)
    table = lift_table(y, p)
    assert list(table["decile"]) == list(range(1, 11)) and table["count"].sum() == 1_000
    assert table["churners"].sum() == y.sum()
    assert table["cumulative_gain"].iloc[-1] == pytest.approx(1.0)
    assert table["cumulative_lift"].iloc[-1] == pytest.approx(1.0)
    assert np.all(np.diff(table["mean_score"]) <= 0)  # riskiest first
    assert table["churn_rate"].iloc[0] > table["churn_rate"].iloc[-1]
    assert (table["lift"] * table["count"]).sum() / 1_000 == pytest.approx(1.0)


def test_degenerate_and_bad_inputs() -> None:
    m = classification_metrics(np.zeros(20), np.full(20, 0.1))
    assert np.isnan(m["oot_auc"]) and np.isnan(m["oot_pr_auc"]) and np.isfinite(m["oot_brier"])
    with pytest.raises(ValueError, match="length"):
        classification_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classification_metrics([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="0/1"):
        classification_metrics([0, 2], [0.5, 0.5])
