"""Classification metrics with the exact MLflow keys jobs read (``oot_auc``, ``oot_ece``, ...).

ECE uses equal-frequency bins (each holds ~n/n_bins rows), so sparse high-risk tails do not get
bins of a handful of rows; risk deciles are equal-count bins ordered riskiest first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

METRIC_NAMES: tuple[str, ...] = ("auc", "pr_auc", "logloss", "brier", "ece", "lift_top_decile")


def _arrays(y: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Labels and probabilities as float arrays, checked for shape, range and missing values."""
    y_arr, p_arr = np.asarray(y, dtype=float).ravel(), np.asarray(p, dtype=float).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"labels ({len(y_arr)}) and probabilities ({len(p_arr)}) differ in length")
    if len(y_arr) == 0:
        raise ValueError("no rows to evaluate")
    if not np.isfinite(p_arr).all() or (p_arr < 0).any() or (p_arr > 1).any():
        raise ValueError("probabilities must be finite and within [0, 1]")
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    return y_arr, p_arr


def expected_calibration_error(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Equal-frequency bins (sorted by p): sum over bins of share * |mean p - churn rate|."""
    y_arr, p_arr = _arrays(y, p)
    order = np.argsort(p_arr, kind="stable")
    total = 0.0
    for b in np.array_split(order, min(n_bins, len(order))):
        total += len(b) / len(order) * abs(p_arr[b].mean() - y_arr[b].mean())
    return float(total)


def lift_table(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Risk deciles (1 = riskiest): count, churners, churn rate, mean score, lift, cumulative gain.

    ``lift`` is the bin's churn rate over the overall rate; ``cumulative_gain`` the share of all
    churners found by contacting bins 1..k; ``cumulative_lift`` the lift of bins 1..k together.
    """
    y_arr, p_arr = _arrays(y, p)
    order = np.argsort(-p_arr, kind="stable")
    base, positives = y_arr.mean(), y_arr.sum()
    rows, cum_pos, cum_n = [], 0.0, 0
    for i, b in enumerate(np.array_split(order, min(n_bins, len(order)))):
        cum_pos += y_arr[b].sum()
        cum_n += len(b)
        rate = float(y_arr[b].mean())
        rows.append(
            {
                "decile": i + 1,
                "count": len(b),
                "churners": int(y_arr[b].sum()),
                "churn_rate": rate,
                "mean_score": float(p_arr[b].mean()),
                "lift": rate / base if base else float("nan"),
                "cumulative_gain": cum_pos / positives if positives else float("nan"),
                "cumulative_lift": (cum_pos / cum_n) / base if base else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def classification_metrics(
    y: ArrayLike, p: ArrayLike, prefix: str = "oot_", suffix: str = ""
) -> dict[str, float]:
    """Exactly ``{prefix}{name}{suffix}`` for auc, pr_auc, logloss, brier, ece, lift_top_decile.

    AUC and PR-AUC are NaN when only one class is present (undefined), never an exception.
    """
    y_arr, p_arr = _arrays(y, p)
    both = 0 < y_arr.sum() < len(y_arr)
    clipped = np.clip(p_arr, 1e-6, 1 - 1e-6)
    values = {
        "auc": float(roc_auc_score(y_arr, p_arr)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y_arr, p_arr)) if both else float("nan"),
        "logloss": float(log_loss(y_arr, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y_arr, p_arr, pos_label=1)),
        "ece": expected_calibration_error(y_arr, p_arr),
        "lift_top_decile": float(lift_table(y_arr, p_arr)["lift"].iloc[0]),
    }
    return {f"{prefix}{name}{suffix}": values[name] for name in METRIC_NAMES}
