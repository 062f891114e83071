"""What followed each logged decision: the outcome of an exposure in the window after it.

Point in time: the outcome of an exposure at ``ts`` reads only purchases in ``[ts, ts + window)``,
never anything before the decision. Outcomes a campaign log already carries (``converted``) are kept
as they are. ``offers.training.offer_table`` joins these outcomes with the features as of each
exposure; this module knows nothing of features.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from engage import schemas as s

__all__ = ["attach_outcomes"]


def _require(frame: pl.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{name}: missing column(s) {', '.join(missing)} (has {', '.join(frame.columns)})")


def attach_outcomes(exposures: pl.DataFrame, events: pl.DataFrame, *, attribution_days: int) -> pl.DataFrame:
    """Given outcomes stay; otherwise converted = a purchase in [ts, ts + window), revenue = its amount.

    Rows and their order are those of ``exposures``; refunds are not netted from the revenue.
    """
    if s.CONVERTED in exposures.columns:
        return exposures
    if attribution_days <= 0:
        raise ValueError(f"attribution_days must be > 0, got {attribution_days}")
    _require(exposures, (s.USER_ID, s.TS), "exposures")
    _require(events, (s.USER_ID, s.TS, s.EVENT_TYPE, "amount"), "events")
    purchases = events.filter(pl.col(s.EVENT_TYPE) == "purchase").select(
        s.USER_ID, pl.col(s.TS).alias("__pts"), pl.col("amount").fill_null(0.0).alias("__amt")
    )
    keyed = exposures.with_row_index("__exp")
    window = pl.duration(days=attribution_days)
    hits = (
        keyed.select("__exp", s.USER_ID, s.TS)
        .join(purchases, on=s.USER_ID, how="inner")
        .filter((pl.col("__pts") >= pl.col(s.TS)) & (pl.col("__pts") < pl.col(s.TS) + window))
        .group_by("__exp")
        .agg(pl.len().alias("__n"), pl.col("__amt").sum().alias(s.REVENUE))
    )
    return (
        keyed.join(hits, on="__exp", how="left", maintain_order="left")
        .with_columns((pl.col("__n").fill_null(0) > 0).alias(s.CONVERTED), pl.col(s.REVENUE).fill_null(0.0))
        .drop("__exp", "__n")
    )
