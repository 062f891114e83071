"""Uplift metrics for one treatment against control: Qini curve and coefficient, AUUC, uplift@k.

All take the observed outcome ``y``, a boolean ``treatment`` (True = got the message, False =
control) and a ``score`` (predicted uplift; higher = target first). ``uplift_by_arm`` applies them
to every arm of a multi-arm model, each against the control rows only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray


def _inputs(
    y: ArrayLike, treatment: ArrayLike, score: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64]]:
    y_, t_, sc_ = np.asarray(y, float), np.asarray(treatment, bool), np.asarray(score, float)
    if not (len(y_) == len(t_) == len(sc_)):
        raise ValueError(f"y, treatment and score differ in length: {len(y_)}, {len(t_)}, {len(sc_)}")
    if len(y_) == 0:
        raise ValueError("no rows to evaluate")
    if np.isnan(y_).any() or np.isnan(sc_).any():
        raise ValueError("y and score must not contain missing values")
    return y_, t_, sc_


def qini_curve(y: ArrayLike, treatment: ArrayLike, score: ArrayLike) -> pd.DataFrame:
    """Radcliffe's Qini curve: incremental outcomes when targeting the top fraction by score.

    qini(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k) over the first k rows by descending score (stable
    order for ties). Columns: ``fraction`` (0..1, starting at 0) and ``qini`` (in outcome units).
    """
    y_, t, sc = _inputs(y, treatment, score)
    order = np.argsort(-sc, kind="stable")
    y_, t = y_[order], t[order]
    nt, nc = np.cumsum(t), np.cumsum(~t)
    yt, yc = np.cumsum(y_ * t), np.cumsum(y_ * ~t)
    with np.errstate(divide="ignore", invalid="ignore"):
        qini = yt - np.where(nc > 0, yc * nt / np.maximum(nc, 1), 0.0)
    frac = np.arange(1, len(y_) + 1) / len(y_)
    return pd.DataFrame({"fraction": np.r_[0.0, frac], "qini": np.r_[0.0, qini]})


def qini_coefficient(y: ArrayLike, treatment: ArrayLike, score: ArrayLike) -> float:
    """Area between the Qini curve and the random-targeting line (x = fraction, y = outcome units).

    Positive when the score ranks responders first; about 0 for a random score.
    """
    curve = qini_curve(y, treatment, score)
    total = curve["qini"].iloc[-1]
    random = curve["fraction"] * total
    return float(np.trapezoid(curve["qini"] - random, curve["fraction"]))


def auuc(y: ArrayLike, treatment: ArrayLike, score: ArrayLike) -> float:
    """Area under the uplift curve: the Qini curve divided by the number of treated rows.

    Reads as the average, over targeting depths, of the incremental outcome per treated user.
    """
    curve = qini_curve(y, treatment, score)
    n_t = max(int(np.asarray(treatment, bool).sum()), 1)
    return float(np.trapezoid(curve["qini"] / n_t, curve["fraction"]))


def uplift_at_k(y: ArrayLike, treatment: ArrayLike, score: ArrayLike, k: float = 0.3) -> float:
    """Among the top ``k`` fraction by score: treated mean outcome minus control mean outcome.

    NaN when the top rows hold only treated or only control rows.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    y_, t, sc = _inputs(y, treatment, score)
    top = np.argsort(-sc, kind="stable")[: max(round(k * len(y_)), 1)]
    yt, tt = y_[top], t[top]
    if tt.all() or (~tt).all():
        return float("nan")
    return float(yt[tt].mean() - yt[~tt].mean())


def uplift_by_arm(
    y: ArrayLike,
    arm: ArrayLike,
    uplift: pd.DataFrame,
    *,
    control: str = "none",
    k: float = 0.3,
    min_rows: int = 20,
) -> pd.DataFrame:
    """Per arm (each against the control rows): Qini coefficient, AUUC and uplift@k of its column.

    ``uplift`` has one predicted-uplift column per non-control arm, rows aligned with ``y``/``arm``.
    Arms with fewer than ``min_rows`` treated or control rows are reported with NaN metrics.
    """
    y_, arm_ = np.asarray(y, float), np.asarray(arm).astype(str)
    if len(uplift) != len(y_) or len(arm_) != len(y_):
        raise ValueError("y, arm and uplift must have one row per logged decision")
    rows = []
    for a in uplift.columns:
        keep = np.isin(arm_, [a, control])
        treated = arm_[keep] == a
        n_t, n_c = int(treated.sum()), int((~treated).sum())
        if min(n_t, n_c) < min_rows:
            rows.append((a, n_t, n_c, np.nan, np.nan, np.nan))
            continue
        sc = uplift[a].to_numpy(dtype=float)[keep]
        yy = y_[keep]
        rows.append(
            (
                a,
                n_t,
                n_c,
                qini_coefficient(yy, treated, sc),
                auuc(yy, treated, sc),
                uplift_at_k(yy, treated, sc, k),
            )
        )
    return pd.DataFrame(rows, columns=["arm", "n_treated", "n_control", "qini", "auuc", f"uplift_at_{k:g}"])
