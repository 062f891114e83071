"""DeLong's test for two correlated AUCs on the same rows (DeLong, DeLong & Clarke-Pearson 1988).

Model comparisons (LightGBM vs logistic vs recency vs BTYD) are made on the same out-of-time rows,
so their AUCs are correlated; the paired variance of the difference comes from the structural
components (placement values) of each score, computed with the fast rank form of Sun & Xu (2014).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = ["auc_differences", "delong_difference"]


def _components(
    y: NDArray[np.float64], score: NDArray[np.float64]
) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
    """AUC, V10 (per positive) and V01 (per negative) placement values, ties counted as 1/2."""
    pos, neg = score[y == 1], score[y == 0]
    m, n = len(pos), len(neg)
    rank_all = stats.rankdata(np.concatenate([pos, neg]))
    rank_pos, rank_neg = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (rank_all[:m] - rank_pos) / n  # share of negatives below each positive
    v01 = 1.0 - (rank_all[m:] - rank_neg) / m  # share of positives above each negative
    auc = float(v10.mean())
    return auc, v10, v01


def delong_difference(
    y: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, level: float = 0.95
) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the same rows and its two-sided ``level`` interval (DeLong variance)."""
    y_arr = np.asarray(y, dtype=float).ravel()
    a = np.asarray(score_a, dtype=float).ravel()
    b = np.asarray(score_b, dtype=float).ravel()
    if not (len(y_arr) == len(a) == len(b)):
        raise ValueError(f"labels and scores differ in length: {len(y_arr)}, {len(a)}, {len(b)}")
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    m, n = int(y_arr.sum()), int((1 - y_arr).sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least two positive and two negative rows")
    auc_a, v10_a, v01_a = _components(y_arr, a)
    auc_b, v10_b, v01_b = _components(y_arr, b)
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = auc_a - auc_b
    half = float(stats.norm.ppf(0.5 + level / 2) * np.sqrt(max(var, 0.0)))
    return diff, diff - half, diff + half


def auc_differences(
    y: ArrayLike, scores: Mapping[str, ArrayLike], reference: str = "lightgbm"
) -> dict[str, float]:
    """``oot_auc_diff_<name>`` = AUC(reference) - AUC(name) with its DeLong 95% interval
    (``..._lo``/``..._hi``) for every other score: the MLflow metrics of a model comparison."""
    out: dict[str, float] = {}
    for name, score in scores.items():
        if name == reference:
            continue
        diff, lo, hi = delong_difference(y, scores[reference], score)
        key = f"oot_auc_diff_{name}"
        out |= {key: diff, f"{key}_lo": lo, f"{key}_hi": hi}
    return out
