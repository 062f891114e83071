"""Cohort retention: users active in each period (month or ISO week) since their first active period."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import pandas as pd
import polars as pl

from engage import schemas as s
from engage.analytics.frames import ALL_SEGMENT, EventsLike, as_utc, events_before


@dataclass(frozen=True)
class CohortTable:
    """Cohort retention: rows are cohorts (first-activity period), columns periods since (0, 1, ...).

    ``counts`` holds active users (nullable ints; ``<NA>`` where the period is not yet observed at
    ``as_of``), ``rates`` the same divided by the cohort size (NaN where unobserved), ``sizes`` the
    cohort sizes (period 0 counts).
    """

    counts: pd.DataFrame
    rates: pd.DataFrame
    sizes: pd.Series
    period: str

    def curves(self) -> pd.DataFrame:
        """Retention curves in long form: ``cohort, periods_since, users, rate``, plus a weighted
        ``All`` cohort (active users / users of the cohorts observed that far)."""
        rows = []
        for cohort in self.counts.index:
            for k in self.counts.columns:
                value = self.counts.at[cohort, k]
                if pd.isna(value):
                    continue
                rows.append((cohort, int(k), int(value), float(self.rates.at[cohort, k])))
        long = pd.DataFrame(rows, columns=["cohort", "periods_since", "users", "rate"])
        if long.empty:
            return long
        sizes = long["cohort"].map(self.sizes)
        pooled = (
            long.assign(size=sizes)
            .groupby("periods_since", as_index=False)
            .agg(users=("users", "sum"), size=("size", "sum"))
        )
        pooled["rate"] = pooled["users"] / pooled["size"]
        pooled["cohort"] = ALL_SEGMENT
        pooled = pooled[["cohort", "periods_since", "users", "rate"]]
        return pd.concat([long, pooled], ignore_index=True)


def _period_start(ts: pl.Expr, period: Literal["M", "W"]) -> pl.Expr:
    """Start date of the calendar month (``M``) or ISO week (``W``) of ``ts``."""
    if period == "M":
        return ts.dt.truncate("1mo").dt.date()
    if period == "W":
        return ts.dt.truncate("1w").dt.date()
    raise ValueError(f"period must be 'M' or 'W', got {period!r}")


def _periods_between(start: pl.Expr, end: pl.Expr, period: Literal["M", "W"]) -> pl.Expr:
    """Whole periods from ``start`` to ``end`` (both period starts)."""
    if period == "M":
        return (end.dt.year() * 12 + end.dt.month()) - (start.dt.year() * 12 + start.dt.month())
    return (end - start).dt.total_days() // 7


def cohort_retention(
    events: EventsLike,
    *,
    as_of: datetime,
    activity_types: Sequence[str] | None = None,
    period: Literal["M", "W"] = "M",
) -> CohortTable:
    """Cohort retention table: users active in each period since their first active period.

    A user's cohort is the period (calendar month ``M`` or ISO week ``W``) of their first activity
    before ``as_of``; activity is any event, or only ``activity_types`` when given (e.g.
    ``["purchase"]`` for repeat-purchase retention). Cell (cohort, k) counts users of the cohort
    with at least one activity in the k-th period after it. Cells after the period holding
    ``as_of`` are not observed (``<NA>``); the period holding ``as_of`` is partial.
    """
    frame = events_before(events, as_of)
    if activity_types is not None:
        frame = frame.filter(pl.col(s.EVENT_TYPE).is_in(list(activity_types)))
    last = pl.select(_period_start(pl.lit(as_utc(as_of) - timedelta(microseconds=1)), period)).item()
    active = (
        frame.select(pl.col(s.USER_ID), _period_start(pl.col(s.TS), period).alias("p"))
        .unique()
        .with_columns(pl.col("p").min().over(s.USER_ID).alias("cohort"))
        .with_columns(_periods_between(pl.col("cohort"), pl.col("p"), period).alias("k"))
    )
    cells = active.group_by("cohort", "k").agg(pl.len().alias("users")).sort("cohort", "k")
    cohorts = sorted(active.get_column("cohort").unique().to_list())
    n_cols = 0
    if cohorts:
        n_cols = int(pl.select(_periods_between(pl.lit(cohorts[0]), pl.lit(last), period)).item()) + 1
    index = pd.Index([_period_label(c, period) for c in cohorts], name="cohort")
    columns = pd.Index(range(n_cols), name="periods_since")
    counts = pd.DataFrame(0, index=index, columns=columns, dtype="Int64")
    for cohort, k, users in cells.iter_rows():
        counts.at[_period_label(cohort, period), int(k)] = int(users)
    for cohort in cohorts:
        observed = int(pl.select(_periods_between(pl.lit(cohort), pl.lit(last), period)).item())
        counts.loc[_period_label(cohort, period), observed + 1 :] = pd.NA
    sizes = counts[0].astype("int64") if n_cols else pd.Series(dtype="int64")
    sizes.name = "cohort_size"
    rates = counts.astype("Float64").div(sizes, axis=0).astype("float64")
    return CohortTable(counts=counts, rates=rates, sizes=sizes, period=period)


def _period_label(start: object, period: str) -> str:
    """``2010-03`` for a month, ``2010-03-01`` (the Monday) for a week."""
    text = str(start)
    return text[:7] if period == "M" else text[:10]
