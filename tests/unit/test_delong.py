"""DeLong's paired AUC difference: agrees with a paired bootstrap and with sklearn's AUCs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from engage.evaluation.delong import auc_differences, delong_difference


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    signal = y + rng.normal(0, 1.2, n)
    a = signal + rng.normal(0, 0.5, n)
    b = np.round(signal + rng.normal(0, 1.0, n), 1)  # ties, as in a coarse score
    return y, a, b


def test_difference_and_interval_match_a_paired_bootstrap() -> None:
    y, a, b = _data(2000, seed=0)
    diff, lo, hi = delong_difference(y, a, b)
    assert diff == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    rng = np.random.default_rng(1)
    boot = []
    for _ in range(300):
        i = rng.integers(0, len(y), len(y))
        boot.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    assert (hi - lo) / 2 == pytest.approx(1.96 * np.std(boot), rel=0.2)


def test_identical_scores_and_metric_names() -> None:
    y, a, b = _data(300, seed=2)
    assert delong_difference(y, a, a) == (0.0, 0.0, 0.0)
    metrics = auc_differences(y, {"lightgbm": a, "recency": b})
    assert set(metrics) == {"oot_auc_diff_recency", "oot_auc_diff_recency_lo", "oot_auc_diff_recency_hi"}
    assert (
        metrics["oot_auc_diff_recency_lo"]
        < metrics["oot_auc_diff_recency"]
        < metrics["oot_auc_diff_recency_hi"]
    )
    with pytest.raises(ValueError, match="at least two positive"):
        delong_difference([1, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
