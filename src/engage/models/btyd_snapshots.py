"""BTYD outputs per (user, as_of) snapshot row, each snapshot from a model fitted before its as_of.

The churn table stacks snapshots; a BTYD model fitted on the whole log would read the future of the
early ones. Here every distinct as_of gets its own fit on purchases with ``ts < as_of`` (the
point-in-time rule), and its rows get P(alive) and the expected purchases in the label horizon:
the churn baseline (``1 - P(alive)``) and, optionally, two features for the churn model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from engage import schemas as s
from engage.models.btyd import (
    BGNBD,
    FREQUENCY,
    P_ALIVE,
    RECENCY,
    T_COL,
    FloatArray,
    expected_purchases_column,
    rfm_summary,
)
from engage.models.btyd_mbg import MBGNBD

__all__ = ["BTYD_KINDS", "NO_PURCHASE", "BtydKind", "make_btyd", "p_no_purchase", "snapshot_btyd"]

BtydKind = Literal["bgnbd", "mbgnbd"]
BTYD_KINDS: tuple[str, ...] = ("bgnbd", "mbgnbd")
NO_PURCHASE = "btyd_p_no_purchase"
MIN_BUYERS = 50
"""Fewer buyers before an as_of than this and that snapshot gets no BTYD values (NaN)."""


def make_btyd(kind: str) -> BGNBD | MBGNBD:
    """An unfitted BTYD count model by name: ``bgnbd`` or ``mbgnbd``."""
    if kind == "bgnbd":
        return BGNBD()
    if kind == "mbgnbd":
        return MBGNBD()
    raise ValueError(f"unknown BTYD model {kind!r}; expected one of {BTYD_KINDS}")


def p_no_purchase(
    model: BGNBD | MBGNBD, t: float, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
) -> FloatArray:
    """P(no purchase in (T, T + t] | x, t_x, T): the BTYD churn score over a label horizon.

    1 - P(alive) only says whether a customer can still buy; a live customer with a slow rate buys
    nothing in a short horizon either. Alive at T, the rate's posterior is Gamma(r + x, alpha + T)
    in both BG/NBD and MBG/NBD (dropout only follows a purchase), so
    P(0) = 1 - P(alive) * (1 - ((alpha + T) / (alpha + T + t))^(r + x)).
    """
    x = np.asarray(frequency, dtype=float)
    big_t = np.asarray(T, dtype=float)
    alive = model.p_alive(frequency, recency, T)
    r, alpha = model.params_["r"], model.params_["alpha"]
    silent = np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + t)))
    return 1.0 - alive * (1.0 - silent)


def snapshot_btyd(
    purchases: pd.DataFrame, keys: pd.DataFrame, *, kind: str, horizon_days: float
) -> pd.DataFrame:
    """P(alive) and expected purchases in ``horizon_days`` for each (user_id, as_of) row of ``keys``.

    ``purchases`` has ``user_id`` and ``ts`` (one row per purchase). Returns a frame aligned with
    ``keys`` (same length and order) with ``btyd_p_alive``, ``btyd_expected_purchases_<h>w`` and
    ``btyd_p_no_purchase`` (P(no purchase in the horizon)); NaN
    for users without a purchase before their as_of, and for snapshots with too few buyers.
    """
    horizon_weeks = horizon_days / 7.0
    column = expected_purchases_column(horizon_weeks, "W")
    out = pd.DataFrame({name: np.full(len(keys), np.nan) for name in (P_ALIVE, column, NO_PURCHASE)})
    stamps = pd.to_datetime(purchases[s.TS], utc=True)
    as_of_values = pd.to_datetime(keys[s.AS_OF], utc=True)
    users = keys[s.USER_ID].astype(str).to_numpy()
    for cutoff in as_of_values.unique():
        before = purchases[(stamps < cutoff).to_numpy()]
        if before[s.USER_ID].nunique() < MIN_BUYERS:
            continue
        summary = rfm_summary(before, s.USER_ID, s.TS, cutoff, unit="W")
        x, t_x, big_t = summary[FREQUENCY], summary[RECENCY], summary[T_COL]
        model = make_btyd(kind).fit(x, t_x, big_t)
        index = pd.Index(summary[s.USER_ID].astype(str))
        rows = np.flatnonzero((as_of_values == cutoff).to_numpy())
        pos = index.get_indexer(users[rows])
        found = pos >= 0
        alive = model.p_alive(x, t_x, big_t)
        expected = model.expected_purchases(horizon_weeks, x, t_x, big_t)
        out.loc[rows[found], P_ALIVE] = alive[pos[found]]
        out.loc[rows[found], column] = expected[pos[found]]
        out.loc[rows[found], NO_PURCHASE] = p_no_purchase(model, horizon_weeks, x, t_x, big_t)[pos[found]]
    return out
