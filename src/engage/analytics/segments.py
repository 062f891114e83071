"""RFM scores and named segments, and the loyalty tiers (pyramid) built from them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.analytics.frames import EventsLike, as_utc, events_before

SEGMENT_ORDER: Final[tuple[str, ...]] = (
    "Champions",
    "Loyal",
    "Potential loyalist",
    "New",
    "Needs attention",
    "At risk",
    "Can't lose them",
    "Hibernating",
    "Lost",
)
"""RFM segment names, best first (see :func:`rfm_segment` for the mapping)."""

TIER_ORDER: Final[tuple[str, ...]] = ("New", "Repeat", "Regular", "Loyal", "Champions")
"""Loyalty tiers from the base of the pyramid (new) to its top (champions)."""


# --- RFM --------------------------------------------------------------------------------------


def quintile_scores(values: pd.Series, *, higher_is_better: bool = True) -> pd.Series:
    """Scores 1..5 from the percentile rank of ``values`` (ties share their average rank).

    ``score = ceil(5 * rank / n)``, so each score holds about a fifth of the users when values are
    distinct; heavy ties (many one-time buyers) land together in one score.
    """
    if values.empty:
        return values.astype("int64")
    ranked = (values if higher_is_better else -values).rank(method="average", pct=True)
    return np.ceil(ranked * 5).clip(1, 5).astype("int64")


def rfm_segment(r: int, f: int, m: int) -> str:
    """Named segment from R, F, M scores (1..5, 5 best); the first matching rule wins.

    ====================  ===========================================
    segment               rule
    ====================  ===========================================
    Champions             R >= 4 and F >= 4
    Potential loyalist    R >= 4 and F in 2..3
    New                   R >= 4 and F == 1
    Loyal                 R == 3 and F >= 4
    Needs attention       R == 3 and F <= 3
    Can't lose them       R <= 2 and F >= 4 and M >= 4
    At risk               R <= 2 and F >= 3
    Hibernating           R == 2 and F <= 2
    Lost                  R == 1 and F <= 2
    ====================  ===========================================
    """
    if r >= 4:
        return "Champions" if f >= 4 else ("Potential loyalist" if f >= 2 else "New")
    if r == 3:
        return "Loyal" if f >= 4 else "Needs attention"
    if f >= 4 and m >= 4:
        return "Can't lose them"
    if f >= 3:
        return "At risk"
    return "Hibernating" if r == 2 else "Lost"


def rfm(
    events: EventsLike,
    *,
    as_of: datetime,
    purchase_type: str = "purchase",
    refund_type: str | None = "refund",
) -> pd.DataFrame:
    """RFM table, one row per user with at least one purchase before ``as_of``.

    - ``recency_days``: days from the last purchase to ``as_of`` (fractional);
    - ``frequency``: purchase occasions = distinct purchase timestamps (the lines of one invoice
      share a timestamp and count once);
    - ``monetary``: net amount of purchases plus refunds (refunds are negative; missing amounts
      count 0);
    - ``R``, ``F``, ``M``: quintile scores 1..5 (5 best: most recent, most frequent, highest
      spend) from :func:`quintile_scores`; ``RFM`` the three digits as text, ``rfm_sum`` their sum;
    - ``segment``: the named segment of :func:`rfm_segment`.
    """
    cut = as_utc(as_of)
    frame = events_before(events, as_of)
    amount = pl.col("amount").fill_null(0.0) if "amount" in frame.columns else pl.lit(0.0)
    types = [purchase_type] + ([refund_type] if refund_type else [])
    money = (
        frame.filter(pl.col(s.EVENT_TYPE).is_in(types))
        .group_by(s.USER_ID)
        .agg(amount.sum().alias("monetary"))
    )
    buys = (
        frame.filter(pl.col(s.EVENT_TYPE) == purchase_type)
        .group_by(s.USER_ID)
        .agg(pl.col(s.TS).max().alias("last"), pl.col(s.TS).n_unique().alias("frequency"))
        .join(money, on=s.USER_ID, how="left")
        .with_columns(
            ((pl.lit(cut) - pl.col("last")).dt.total_microseconds() / 86_400e6).alias("recency_days"),
            pl.col("monetary").fill_null(0.0),
        )
        .sort(s.USER_ID)
    )
    out = buys.select(s.USER_ID, "recency_days", "frequency", "monetary").to_pandas()
    out["frequency"] = out["frequency"].astype("int64")
    out["R"] = quintile_scores(out["recency_days"], higher_is_better=False)
    out["F"] = quintile_scores(out["frequency"])
    out["M"] = quintile_scores(out["monetary"])
    out["RFM"] = out["R"].astype(str) + out["F"].astype(str) + out["M"].astype(str)
    out["rfm_sum"] = out["R"] + out["F"] + out["M"]
    out["segment"] = [rfm_segment(r, f, m) for r, f, m in zip(out["R"], out["F"], out["M"], strict=True)]
    return out


def rfm_segment_summary(rfm_table: pd.DataFrame) -> pd.DataFrame:
    """Per named segment: users, share of users, mean recency/frequency/monetary, total monetary.

    Every segment of :data:`SEGMENT_ORDER` is listed (0 users where empty), best first.
    """
    grouped = rfm_table.groupby("segment").agg(
        users=("user_id", "size"),
        recency_days_mean=("recency_days", "mean"),
        frequency_mean=("frequency", "mean"),
        monetary_mean=("monetary", "mean"),
        monetary_total=("monetary", "sum"),
    )
    grouped = grouped.reindex(list(SEGMENT_ORDER))
    grouped["users"] = grouped["users"].fillna(0).astype("int64")
    grouped["monetary_total"] = grouped["monetary_total"].fillna(0.0)
    total = int(grouped["users"].sum())
    grouped.insert(1, "share", grouped["users"] / total if total else 0.0)
    return grouped.rename_axis("segment").reset_index()


# --- loyalty tiers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoyaltyTiers:
    """Loyalty tier per user (``users``: user_id, tier) and the pyramid counts (``pyramid``: tier,
    users, share; base ``New`` first, top ``Champions`` last)."""

    users: pd.DataFrame
    pyramid: pd.DataFrame


def loyalty_tier(frequency: int, r: int, f: int, m: int) -> str:
    """Tier of one customer; the first matching rule from the top of the pyramid wins.

    - Champions: R >= 4 and F >= 4 (buy often and lately: the RFM ``Champions`` segment);
    - Loyal: F >= 4 and M >= 3 (buy often and spend, not necessarily lately);
    - Regular: F >= 3 and three or more purchase occasions (the raw count keeps heavy ties of
      one- and two-time buyers, which can share a high F score, out of this tier);
    - Repeat: two or more purchase occasions;
    - New: exactly one purchase occasion.
    """
    if r >= 4 and f >= 4:
        return "Champions"
    if f >= 4 and m >= 3:
        return "Loyal"
    if f >= 3 and frequency >= 3:
        return "Regular"
    return "Repeat" if frequency >= 2 else "New"


def loyalty_tiers(rfm_table: pd.DataFrame) -> LoyaltyTiers:
    """Loyalty tier per customer from an :func:`rfm` table (rules in :func:`loyalty_tier`), plus
    the pyramid: users and share per tier, every tier listed, base first."""
    tiers = [
        loyalty_tier(int(q), int(r), int(f), int(m))
        for q, r, f, m in zip(
            rfm_table["frequency"], rfm_table["R"], rfm_table["F"], rfm_table["M"], strict=True
        )
    ]
    users = pd.DataFrame({s.USER_ID: rfm_table[s.USER_ID].to_numpy(), "tier": tiers})
    counts = users["tier"].value_counts().reindex(list(TIER_ORDER), fill_value=0).astype("int64")
    total = int(counts.sum())
    pyramid = pd.DataFrame(
        {
            "tier": list(TIER_ORDER),
            "users": counts.to_numpy(),
            "share": counts.to_numpy() / total if total else 0.0,
        }
    )
    return LoyaltyTiers(users=users, pyramid=pyramid)
