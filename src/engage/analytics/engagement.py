"""Engagement score 0..100 per user from recency, frequency, breadth and trend, and its bands."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.analytics.frames import EventsLike, as_utc, events_before

ENGAGEMENT_WEIGHTS: Final[Mapping[str, float]] = {
    "recency": 0.35,
    "frequency": 0.25,
    "breadth": 0.20,
    "trend": 0.20,
}
"""Default weights of the engagement score components (they sum to 1)."""


def percentile_rank(values: pd.Series) -> pd.Series:
    """Percentile rank in [0, 1]: the lowest value gets 0, the highest 1, ties their average rank.

    ``(rank - 1) / (n - 1)``; a single user (or all tied) gets 0.5, neutral.
    """
    n = len(values)
    if n <= 1:
        return pd.Series(0.5, index=values.index, dtype="float64")
    ranks = values.rank(method="average")
    if values.nunique() <= 1:
        return pd.Series(0.5, index=values.index, dtype="float64")
    return (ranks - 1.0) / (n - 1.0)


def engagement_score(
    events: EventsLike,
    *,
    as_of: datetime,
    window_days: int = 28,
    trend_days: int = 7,
    weights: Mapping[str, float] = ENGAGEMENT_WEIGHTS,
) -> pd.DataFrame:
    """Engagement score 0..100 per user with any event before ``as_of``.

    Raw measures (W = ``[as_of - window_days, as_of)``):

    - recency: ``recency_days`` since the user's last event of any type;
    - frequency: ``events_window``, events in W;
    - breadth: ``event_types_window`` (distinct event types), ``categories_window`` (distinct
      categories, 0 without a ``category`` column) and ``active_days_window`` (distinct UTC days)
      in W;
    - trend: ``trend = log((n_recent + 1) / (n_previous * trend_days / window_days + 1))`` with
      ``n_recent`` the events in the last ``trend_days`` and ``n_previous`` those in the
      ``window_days`` before them: > 0 when the recent daily rate is above the previous one.

    Components are percentile ranks among the scored users (:func:`percentile_rank`, in [0, 1]):
    recency ranks ``-recency_days``; breadth is the mean of the three breadth ranks. Score =
    ``100 * sum(weight * component) / sum(weights)`` with default weights recency 0.35,
    frequency 0.25, breadth 0.20, trend 0.20. Being relative, scores compare users of one
    snapshot, not snapshots. ``band``: low (< 33.3), medium, high (>= 66.7).
    """
    unknown = set(weights) - set(ENGAGEMENT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown engagement weight(s) {sorted(unknown)}; known {list(ENGAGEMENT_WEIGHTS)}")
    cut = as_utc(as_of)
    w_start = cut - timedelta(days=window_days)
    recent_start = cut - timedelta(days=trend_days)
    prev_start = recent_start - timedelta(days=window_days)
    frame = events_before(events, as_of)
    has_cat = "category" in frame.columns
    ts = pl.col(s.TS)
    in_w = ts >= w_start
    category = (
        pl.col("category").filter(in_w & pl.col("category").is_not_null()).n_unique()
        if has_cat
        else pl.lit(0)
    )
    agg = (
        frame.group_by(s.USER_ID)
        .agg(
            ((pl.lit(cut) - ts.max()).dt.total_microseconds() / 86_400e6).alias("recency_days"),
            in_w.sum().alias("events_window"),
            pl.col(s.EVENT_TYPE).filter(in_w).n_unique().alias("event_types_window"),
            category.alias("categories_window"),
            ts.filter(in_w).dt.date().n_unique().alias("active_days_window"),
            (ts >= recent_start).sum().alias("events_recent"),
            ((ts >= prev_start) & (ts < recent_start)).sum().alias("events_previous"),
        )
        .sort(s.USER_ID)
    )
    out = agg.to_pandas()
    for col in ("events_window", "event_types_window", "categories_window", "active_days_window"):
        out[col] = out[col].astype("int64")
    out["trend"] = np.log(
        (out["events_recent"] + 1.0) / (out["events_previous"] * (trend_days / window_days) + 1.0)
    )
    comp = pd.DataFrame(index=out.index)
    comp["recency"] = percentile_rank(-out["recency_days"])
    comp["frequency"] = percentile_rank(out["events_window"].astype(float))
    comp["breadth"] = (
        percentile_rank(out["event_types_window"].astype(float))
        + percentile_rank(out["categories_window"].astype(float))
        + percentile_rank(out["active_days_window"].astype(float))
    ) / 3.0
    comp["trend"] = percentile_rank(out["trend"])
    total_w = float(sum(weights.values()))
    if not math.isfinite(total_w) or total_w <= 0:
        raise ValueError(f"engagement weights must sum to a positive number, got {dict(weights)}")
    score = (
        sum(comp[k] * float(v) for k, v in weights.items()) / total_w if len(out) else pd.Series(dtype=float)
    )
    for k in ENGAGEMENT_WEIGHTS:
        out[f"{k}_component"] = comp[k]
    out["engagement_score"] = (100.0 * score).astype("float64").round(2) if len(out) else score
    out["band"] = pd.cut(
        out["engagement_score"],
        bins=[-np.inf, 100 / 3, 200 / 3, np.inf],
        labels=["low", "medium", "high"],
        right=False,
    ).astype(str)
    return out.drop(columns=["events_recent", "events_previous"])


def engagement_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Users, mean score and mean raw measures per engagement band (low, medium, high)."""
    grouped = scores.groupby("band").agg(
        users=(s.USER_ID, "size"),
        score_mean=("engagement_score", "mean"),
        recency_days_mean=("recency_days", "mean"),
        events_window_mean=("events_window", "mean"),
        active_days_window_mean=("active_days_window", "mean"),
    )
    grouped = grouped.reindex(["high", "medium", "low"])
    grouped["users"] = grouped["users"].fillna(0).astype("int64")
    return grouped.rename_axis("band").reset_index()
