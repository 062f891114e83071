"""Classification metrics with the exact MLflow keys jobs read (``oot_auc``, ``oot_ece``, ...)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def expected_calibration_error(y, p, n_bins: int = 10) -> float:
    """Equal-frequency bins: sum of |mean p - mean y| weighted by bin share."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    order = np.argsort(p, kind="stable")
    bins = np.array_split(order, n_bins)
    return float(sum(len(b) / len(p) * abs(p[b].mean() - y[b].mean()) for b in bins if len(b)))


def lift_table(y, p, n_bins: int = 10) -> pd.DataFrame:
    y, p = np.asarray(y, float), np.asarray(p, float)
    order = np.argsort(-p, kind="stable")
    rows = []
    base = y.mean()
    cum = 0.0
    for i, b in enumerate(np.array_split(order, n_bins)):
        cum += y[b].sum()
        rows.append(
            {
                "decile": i + 1,
                "count": len(b),
                "churn_rate": y[b].mean(),
                "mean_score": p[b].mean(),
                "lift": y[b].mean() / base if base else np.nan,
                "cumulative_gain": cum / y.sum() if y.sum() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def classification_metrics(y, p, prefix: str = "oot_", suffix: str = "") -> dict[str, float]:
    y, p = np.asarray(y, float), np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return {
        f"{prefix}auc{suffix}": float(roc_auc_score(y, p)),
        f"{prefix}pr_auc{suffix}": float(average_precision_score(y, p)),
        f"{prefix}logloss{suffix}": float(log_loss(y, p, labels=[0, 1])),
        f"{prefix}brier{suffix}": float(brier_score_loss(y, p)),
        f"{prefix}ece{suffix}": expected_calibration_error(y, p),
        f"{prefix}lift_top_decile{suffix}": float(lift_table(y, p)["lift"].iloc[0]),
    }
