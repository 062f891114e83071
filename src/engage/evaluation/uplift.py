"""Uplift metrics: Qini curve and coefficient, AUUC, uplift@k."""

from __future__ import annotations

import numpy as np
import pandas as pd


def qini_curve(y, treatment, score) -> pd.DataFrame:
    """Cumulative incremental outcomes when targeting by descending score (Radcliffe's Qini)."""
    y, t, sc = np.asarray(y, float), np.asarray(treatment, bool), np.asarray(score, float)
    order = np.argsort(-sc, kind="stable")
    y, t = y[order], t[order]
    nt, nc = np.cumsum(t), np.cumsum(~t)
    yt, yc = np.cumsum(y * t), np.cumsum(y * ~t)
    with np.errstate(divide="ignore", invalid="ignore"):
        qini = yt - np.where(nc > 0, yc * nt / nc, 0.0)
    frac = np.arange(1, len(y) + 1) / len(y)
    return pd.DataFrame({"fraction": np.r_[0, frac], "qini": np.r_[0, qini]})


def qini_coefficient(y, treatment, score) -> float:
    """Area between the Qini curve and the random-targeting line, normalized by the number of rows."""
    curve = qini_curve(y, treatment, score)
    total = curve["qini"].iloc[-1]
    random = curve["fraction"] * total
    return float(np.trapezoid(curve["qini"] - random, curve["fraction"]))


def auuc(y, treatment, score) -> float:
    """Area under the uplift curve (Qini normalized per treated population), fraction-scaled."""
    curve = qini_curve(y, treatment, score)
    n_t = max(np.asarray(treatment, bool).sum(), 1)
    return float(np.trapezoid(curve["qini"] / n_t, curve["fraction"]))


def uplift_at_k(y, treatment, score, k: float = 0.3) -> float:
    """Among the top k by score: treated mean outcome minus control mean outcome."""
    y, t, sc = np.asarray(y, float), np.asarray(treatment, bool), np.asarray(score, float)
    top = np.argsort(-sc, kind="stable")[: max(round(k * len(y)), 1)]
    yt, tt = y[top], t[top]
    if tt.all() or (~tt).all():
        return float("nan")
    return float(yt[tt].mean() - yt[~tt].mean())
