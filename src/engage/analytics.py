"""Engagement analytics over the canonical events table: cohorts, funnels, RFM, loyalty, engagement.

Every function is pure: it takes events (polars or pandas, columns of ``schemas.EVENT_SCHEMA``) and
the time ``as_of`` as parameters, uses only events with ``ts < as_of`` (point-in-time rule), and
returns pandas DataFrames that the report writes and the plots draw. Event types that are absent
(a purchase-only log such as Online Retail II or CDNOW) give zero counts, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypeAlias

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s

EventsLike: TypeAlias = pl.DataFrame | pd.DataFrame
"""Events as a polars or pandas DataFrame with at least ``user_id``, ``ts``, ``event_type``."""

DEFAULT_FUNNEL_STEPS: Final[tuple[str, ...]] = ("session_start", "product_view", "add_to_cart", "purchase")
ALL_SEGMENT: Final = "All"
UNKNOWN_SEGMENT: Final = "unknown"

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

ENGAGEMENT_WEIGHTS: Final[Mapping[str, float]] = {
    "recency": 0.35,
    "frequency": 0.25,
    "breadth": 0.20,
    "trend": 0.20,
}
"""Default weights of the engagement score components (they sum to 1)."""


# --- input ------------------------------------------------------------------------------------


def as_polars_events(events: EventsLike) -> pl.DataFrame:
    """The events as polars with ``ts`` as UTC microseconds; pandas input is converted.

    Why: callers hand us either library; one internal representation keeps the logic in one place.
    """
    frame = pl.from_pandas(events) if isinstance(events, pd.DataFrame) else events
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"events must be a polars or pandas DataFrame, got {type(events).__name__}")
    missing = [c for c in s.EVENT_REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"events: missing required column(s) {missing}; have {frame.columns}")
    ts_dtype = frame.schema[s.TS]
    ts = pl.col(s.TS)
    if isinstance(ts_dtype, pl.Datetime):
        ts = ts.dt.replace_time_zone(s.UTC) if ts_dtype.time_zone is None else ts.dt.convert_time_zone(s.UTC)
        ts = ts.dt.cast_time_unit("us")
    else:
        raise ValueError(f"events: column {s.TS!r} must be a datetime, got {ts_dtype}")
    return frame.with_columns(
        ts.alias(s.TS),
        pl.col(s.USER_ID).cast(pl.String),
        pl.col(s.EVENT_TYPE).cast(pl.String),
    )


def _utc(as_of: datetime) -> datetime:
    """``as_of`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if as_of.tzinfo is None:
        return as_of.replace(tzinfo=UTC)
    return as_of.astimezone(UTC)


def events_before(events: EventsLike, as_of: datetime) -> pl.DataFrame:
    """Canonical polars events with ``ts < as_of`` only (the point-in-time cut)."""
    frame = as_polars_events(events)
    return frame.filter(pl.col(s.TS) < _utc(as_of))


# --- cohort retention -------------------------------------------------------------------------


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
    last = pl.select(_period_start(pl.lit(_utc(as_of) - timedelta(microseconds=1)), period)).item()
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


# --- funnel -----------------------------------------------------------------------------------

SegmentLike: TypeAlias = pd.Series | Mapping[str, str] | str | None


def _user_segments(frame: pl.DataFrame, segment: SegmentLike) -> tuple[pl.DataFrame | None, str]:
    """``user_id -> segment`` as polars, and the segment's name.

    ``segment`` is a pandas Series indexed by user id, a mapping, or the name of an events column
    (each user takes the value on their first event that has one).
    """
    if segment is None:
        return None, "segment"
    if isinstance(segment, str):
        if segment not in frame.columns:
            raise ValueError(f"segment column {segment!r} not in events columns {frame.columns}")
        seg = (
            frame.filter(pl.col(segment).is_not_null())
            .sort(s.TS)
            .group_by(s.USER_ID, maintain_order=True)
            .agg(pl.col(segment).first().cast(pl.String).alias("segment"))
        )
        return seg, segment
    if isinstance(segment, pd.Series):
        name = str(segment.name) if segment.name is not None else "segment"
        mapping = {str(k): str(v) for k, v in segment.items() if pd.notna(v)}
    else:
        name = "segment"
        mapping = {str(k): str(v) for k, v in segment.items()}
    seg = pl.DataFrame(
        {s.USER_ID: list(mapping), "segment": list(mapping.values())},
        schema={s.USER_ID: pl.String, "segment": pl.String},
    )
    return seg, name


def funnel(
    events: EventsLike,
    steps: Sequence[str] = DEFAULT_FUNNEL_STEPS,
    *,
    as_of: datetime,
    window_days: float = 7.0,
    since: datetime | None = None,
    segment: SegmentLike = None,
) -> pd.DataFrame:
    """Ordered funnel: users reaching each step in order within ``window_days`` of starting it.

    A user starts the funnel with any ``steps[0]`` event in ``[since, as_of)``; from that start the
    next step is the first ``steps[1]`` event at or after it, and so on, all before
    ``start + window_days`` and before ``as_of``. A user's depth is the best over their starts.
    Returns one row per (segment, step): ``users`` reaching the step, ``conversion`` from the first
    step, ``step_conversion`` from the previous step and ``drop_off = 1 - step_conversion``
    (first step: 1 and 0). Rows for segment ``All`` always come first; with ``segment`` (see
    :func:`_user_segments`) one block per segment value follows (users without one: ``unknown``).
    Steps whose event type never occurs simply reach 0 users.
    """
    if not steps:
        raise ValueError("funnel needs at least one step")
    frame = events_before(events, as_of).select(s.USER_ID, s.TS, s.EVENT_TYPE, *_extra(segment))
    window = timedelta(days=window_days)
    starts = frame.filter(pl.col(s.EVENT_TYPE) == steps[0])
    if since is not None:
        starts = starts.filter(pl.col(s.TS) >= _utc(since))
    paths = (
        starts.select(s.USER_ID, pl.col(s.TS).alias("t0"))
        .unique()
        .with_columns((pl.col("t0") + window).alias("deadline"), pl.col("t0").alias("t_prev"))
        .sort("t_prev")
    )
    reached = [paths.select(s.USER_ID).unique()]
    for step in steps[1:]:
        step_events = frame.filter(pl.col(s.EVENT_TYPE) == step).select(
            s.USER_ID, pl.col(s.TS).alias("t_next")
        )
        step_events = step_events.unique().sort("t_next")
        paths = (
            paths.join_asof(
                step_events,
                left_on="t_prev",
                right_on="t_next",
                by=s.USER_ID,
                strategy="forward",
                check_sortedness=False,  # sorted by time above; by-groups defeat the check
            )
            .filter(pl.col("t_next").is_not_null() & (pl.col("t_next") < pl.col("deadline")))
            .with_columns(pl.col("t_next").alias("t_prev"))
            .drop("t_next")
            .sort("t_prev")
        )
        reached.append(paths.select(s.USER_ID).unique())
    depth = pl.concat(
        [r.with_columns(pl.lit(k, dtype=pl.Int32).alias("depth")) for k, r in enumerate(reached)]
    )
    depth = depth.group_by(s.USER_ID).agg(pl.col("depth").max())
    seg, _name = _user_segments(frame, segment)
    blocks = [_funnel_block(depth, steps, ALL_SEGMENT)]
    if seg is not None:
        labelled = depth.join(seg, on=s.USER_ID, how="left").with_columns(
            pl.col("segment").fill_null(UNKNOWN_SEGMENT)
        )
        for value in sorted(labelled.get_column("segment").unique().to_list()):
            blocks.append(_funnel_block(labelled.filter(pl.col("segment") == value), steps, value))
    return pd.concat(blocks, ignore_index=True)


def _extra(segment: SegmentLike) -> list[str]:
    """Columns besides the required ones that :func:`funnel` must keep (a segment column)."""
    return [segment] if isinstance(segment, str) else []


def _funnel_block(depth: pl.DataFrame, steps: Sequence[str], segment: str) -> pd.DataFrame:
    """Funnel rows for one segment from per-user depths (index of the deepest step reached)."""
    depths = depth.get_column("depth").to_numpy()
    users = np.array([int((depths >= k).sum()) for k in range(len(steps))], dtype=np.int64)
    first = users[0]
    conversion = users / first if first else np.full(len(steps), np.nan)
    prev = np.concatenate([[first], users[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        step_conversion = np.where(prev > 0, users / np.where(prev > 0, prev, 1), np.nan)
    return pd.DataFrame(
        {
            "segment": segment,
            "step_index": np.arange(1, len(steps) + 1),
            "step": list(steps),
            "users": users,
            "conversion": conversion,
            "step_conversion": step_conversion,
            "drop_off": 1.0 - step_conversion,
        }
    )


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
    cut = _utc(as_of)
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


# --- engagement score -------------------------------------------------------------------------


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
    cut = _utc(as_of)
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
