"""What followed each logged decision: the outcome of an exposure or a decision in the window after it.

One window join serves both tables that mean "a message was chosen for a user at a time": the
campaign log (``attach_outcomes``: exposures at ``ts``, outcomes in ``[ts, ts + window)``, the
convention offer training has always used) and the decision log (``decision_outcomes``: decisions
at ``decided_at``, outcomes strictly after the decision, in ``(decided_at, decided_at + window)``).
Point in time: nothing before the decision or past the window is read. Outcomes a campaign log
already carries (``converted``) are kept as they are. ``offers.training.offer_table`` joins these
outcomes with the features as of each exposure; this module knows nothing of features.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s

__all__ = [
    "ACTIVE",
    "DECIDED_AT",
    "FEEDBACK_EVENTS",
    "OUTCOME_COLUMNS",
    "UNSUBSCRIBED",
    "attach_outcomes",
    "decision_frame",
    "decision_outcomes",
]

DECIDED_AT = "decided_at"
ACTIVE = "still_active"
UNSUBSCRIBED = "unsubscribed"
OUTCOME_COLUMNS: tuple[str, ...] = (s.CONVERTED, s.REVENUE, ACTIVE, UNSUBSCRIBED)
"""The outcome columns ``decision_outcomes`` adds to every decision."""
FEEDBACK_EVENTS: tuple[str, ...] = ("sent", "delivered", "opened", "clicked", "converted", "unsubscribed")
UNSUBSCRIBE_EVENT_TYPES: tuple[str, ...] = ("unsubscribe", "unsubscribed")
"""Raw event types that mean the user unsubscribed (none of the simulator's; a real log may have them)."""
_ACTIVITY_FEEDBACK = ("opened", "clicked", "converted")  # feedback that shows the user did something


def _require(frame: pl.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{name}: missing column(s) {', '.join(missing)} (has {', '.join(frame.columns)})")


def _window_hits(
    keyed: pl.DataFrame,
    events: pl.DataFrame,
    *,
    start: str,
    days: int,
    include_start: bool,
    aggs: Sequence[pl.Expr],
) -> pl.DataFrame:
    """Per row of ``keyed`` (``__row``, ``user_id``, ``start``): ``aggs`` over its user's windowed events.

    The window is ``[start, start + days)`` with ``include_start``, else ``(start, start + days)``.
    ``events`` holds ``user_id`` and ``__ts``; only rows with at least one event in the window come back.
    """
    window = pl.duration(days=days)
    after = pl.col("__ts") >= pl.col(start) if include_start else pl.col("__ts") > pl.col(start)
    return (
        keyed.select("__row", s.USER_ID, start)
        .join(events, on=s.USER_ID, how="inner")
        .filter(after & (pl.col("__ts") < pl.col(start) + window))
        .group_by("__row")
        .agg(*aggs)
    )


def _purchases(events: pl.DataFrame) -> pl.DataFrame:
    return events.filter(pl.col(s.EVENT_TYPE) == "purchase").select(
        s.USER_ID, pl.col(s.TS).alias("__ts"), pl.col("amount").fill_null(0.0).alias("__amt")
    )


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
    keyed = exposures.with_row_index("__row")
    hits = _window_hits(
        keyed,
        _purchases(events),
        start=s.TS,
        days=attribution_days,
        include_start=True,
        aggs=(pl.len().alias("__n"), pl.col("__amt").sum().alias(s.REVENUE)),
    )
    return (
        keyed.join(hits, on="__row", how="left", maintain_order="left")
        .with_columns((pl.col("__n").fill_null(0) > 0).alias(s.CONVERTED), pl.col(s.REVENUE).fill_null(0.0))
        .drop("__row", "__n")
    )


def _utc_stamps(values: pd.Series | pl.Series, name: str) -> pl.Series:
    """ISO texts (any offset) or timestamps -> UTC microsecond timestamps; a bad one names its row."""
    if isinstance(values, pl.Series):
        if values.dtype == pl.Datetime:
            return values.dt.replace_time_zone(None).dt.cast_time_unit("us").dt.replace_time_zone(s.UTC)
        values = values.to_pandas()
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    parsed = pd.to_datetime(pd.Series(uniques), utc=True, format="ISO8601", errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad) or (codes < 0).any():
        row = int(np.flatnonzero(np.isin(codes, bad) | (codes < 0))[0])
        raise ValueError(f"decisions: row {row + 1} has {name} {values.iloc[row]!r}, not an ISO timestamp")
    stamps = parsed.dt.tz_convert(None).to_numpy().astype("datetime64[us]")[codes]
    return pl.Series(name, stamps).dt.replace_time_zone(s.UTC)


def _jsonable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def decision_frame(decisions: pd.DataFrame | pl.DataFrame) -> pl.DataFrame:
    """Decisions as ``read_decisions`` returns them (pandas) or as polars, with ``decided_at`` in UTC.

    Mappings (``model_versions``) become JSON text, so the frame stores as Parquet.
    """
    if isinstance(decisions, pd.DataFrame):
        columns = {}
        for name in decisions.columns:
            column = decisions[name]
            if column.dtype == object and column.map(lambda v: isinstance(v, dict | list)).any():
                column = column.map(_jsonable)
            columns[str(name)] = column
        frame = pl.from_pandas(pd.DataFrame(columns, index=decisions.index).reset_index(drop=True))
    else:
        frame = decisions
    _require(frame, (s.USER_ID, DECIDED_AT), "decisions")
    frame = frame.with_columns(pl.col(s.USER_ID).cast(pl.String))
    return frame.with_columns(_utc_stamps(frame[DECIDED_AT], DECIDED_AT))


def decision_outcomes(
    decisions: pd.DataFrame | pl.DataFrame,
    events: pl.DataFrame | None,
    *,
    window_days: int,
    active_days: int | None = None,
    feedback: pd.DataFrame | pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per decision (input order, holdouts and `none` included) with what followed it.

    ``decision_outcomes(decisions, events, *, window_days, active_days=None, feedback=None)``:

    - ``decisions``: the decision log as ``scoring.decision_log.read_decisions`` returns it (pandas),
      or polars; needs ``user_id`` and ``decided_at`` (ISO text or timestamp). Every column is kept,
      ``decided_at`` becomes a UTC timestamp and mappings become JSON text.
    - ``events``: raw events (``user_id``, ``ts``, ``event_type``, ``amount``), or None with feedback.
    - ``window_days``: only events strictly after ``decided_at`` and before ``decided_at + window``
      count; nothing before the decision or past the window is read.
    - ``active_days``: ``still_active`` means an event in ``[decided_at + active_days, decided_at +
      window)`` (``0``: any event after the decision); default ``window_days // 2``; must be below
      ``window_days``.
    - ``feedback``: records ``decision_id``, ``event`` (one of ``FEEDBACK_EVENTS``), ``revenue``, ``ts``
      reported for decisions, held to the same window. A reported ``converted`` makes the decision
      converted and its reported revenue replaces the events' revenue (the caller's own figure);
      a reported ``unsubscribed`` counts as an unsubscription; ``opened``/``clicked``/``converted``
      at or after ``active_days`` count as activity.

    Adds ``converted`` (a purchase, or reported conversion), ``revenue`` (purchase amounts, refunds not
    netted), ``still_active`` and ``unsubscribed`` (an ``unsubscribe`` event or reported one). A
    purchase counts for every decision of its user whose window holds it (overlapping windows are
    not de-duplicated: each decision is judged on what followed it).
    """
    if window_days <= 0:
        raise ValueError(f"window_days must be > 0, got {window_days}")
    active = window_days // 2 if active_days is None else active_days
    if not 0 <= active < window_days:
        raise ValueError(f"active_days must be in [0, window_days={window_days}), got {active}")
    if events is None and feedback is None:
        raise ValueError("give events, feedback or both: outcomes need something that followed")
    keyed = decision_frame(decisions).with_row_index("__row")
    out = keyed.with_columns(
        pl.lit(False).alias(s.CONVERTED),
        pl.lit(0.0).alias(s.REVENUE),
        pl.lit(False).alias(ACTIVE),
        pl.lit(False).alias(UNSUBSCRIBED),
    )
    if events is not None:
        out = _from_events(out, keyed, events, window_days=window_days, active_days=active)
    if feedback is not None:
        out = _from_feedback(out, keyed, feedback, window_days=window_days, active_days=active)
    return out.drop("__row")


def _from_events(
    out: pl.DataFrame, keyed: pl.DataFrame, events: pl.DataFrame, *, window_days: int, active_days: int
) -> pl.DataFrame:
    _require(events, (s.USER_ID, s.TS, s.EVENT_TYPE), "events")
    amount = pl.col("amount").fill_null(0.0) if "amount" in events.columns else pl.lit(0.0)
    is_purchase = pl.col(s.EVENT_TYPE) == "purchase"
    is_unsub = pl.col(s.EVENT_TYPE).is_in(UNSUBSCRIBE_EVENT_TYPES)
    relevant = events.filter(is_purchase | is_unsub).select(
        s.USER_ID,
        pl.col(s.TS).alias("__ts"),
        pl.when(is_purchase).then(amount).otherwise(None).alias("__amt"),
        is_unsub.alias("__unsub"),
    )
    hits = _window_hits(
        keyed,
        relevant,
        start=DECIDED_AT,
        days=window_days,
        include_start=False,
        aggs=(
            pl.col("__amt").count().alias("__n"),
            pl.col("__amt").sum().alias("__rev"),
            pl.col("__unsub").any().alias("__uns"),
        ),
    )
    seen = _activity(keyed, events.select(s.USER_ID, s.TS), window_days=window_days, active_days=active_days)
    return (
        out.join(hits, on="__row", how="left", maintain_order="left")
        .join(seen, on="__row", how="left", maintain_order="left")
        .with_columns(
            (pl.col("__n").fill_null(0) > 0).alias(s.CONVERTED),
            pl.col("__rev").fill_null(0.0).alias(s.REVENUE),
            pl.col("__uns").fill_null(False).alias(UNSUBSCRIBED),
            pl.col("__act").fill_null(False).alias(ACTIVE),
        )
        .drop("__n", "__rev", "__uns", "__act")
    )


def _activity(
    keyed: pl.DataFrame, events: pl.DataFrame, *, window_days: int, active_days: int
) -> pl.DataFrame:
    """``__act`` per decision: the user's first event from ``decided_at + active_days`` on is in the window.

    A forward as-of join (sorted, no per-user cross product): the cost of a sort, whatever the
    number of events per user.
    """
    lo = pl.col(DECIDED_AT) + pl.duration(days=active_days)
    starts = keyed.select("__row", s.USER_ID, DECIDED_AT, lo.alias("__lo")).sort("__lo")
    stamps = events.select(s.USER_ID, pl.col(s.TS).alias("__lo"), pl.col(s.TS).alias("__next")).sort("__lo")
    found = starts.join_asof(
        stamps,
        on="__lo",
        by=s.USER_ID,
        strategy="forward",
        allow_exact_matches=active_days > 0,
        check_sortedness=False,  # both sides are sorted on __lo just above
    )
    end = pl.col(DECIDED_AT) + pl.duration(days=window_days)
    return found.select("__row", (pl.col("__next").is_not_null() & (pl.col("__next") < end)).alias("__act"))


def _from_feedback(
    out: pl.DataFrame,
    keyed: pl.DataFrame,
    feedback: pd.DataFrame | pl.DataFrame,
    *,
    window_days: int,
    active_days: int,
) -> pl.DataFrame:
    frame = pl.from_pandas(feedback) if isinstance(feedback, pd.DataFrame) else feedback
    _require(frame, ("decision_id", "event", s.TS), "feedback")
    _require(keyed, ("decision_id",), "decisions")
    revenue = pl.col(s.REVENUE).cast(pl.Float64) if s.REVENUE in frame.columns else pl.lit(None, pl.Float64)
    records = frame.select(
        pl.col("decision_id").cast(pl.String),
        pl.col("event").cast(pl.String),
        revenue.alias("__fb_rev"),
        _utc_stamps(frame[s.TS], s.TS).alias("__ts"),
    )
    start = pl.col(DECIDED_AT)
    lo = start + pl.duration(days=active_days)
    after_lo = pl.col("__ts") >= lo if active_days > 0 else pl.col("__ts") > start
    converted = pl.col("event") == "converted"
    hits = (
        keyed.select("__row", pl.col("decision_id").cast(pl.String), DECIDED_AT)
        .join(records, on="decision_id", how="inner")
        .filter((pl.col("__ts") > start) & (pl.col("__ts") < start + pl.duration(days=window_days)))
        .group_by("__row")
        .agg(
            converted.any().alias("__fb_conv"),
            pl.col("__fb_rev").filter(converted).sum().alias("__fb_rev"),
            (pl.col("event") == "unsubscribed").any().alias("__fb_uns"),
            (pl.col("event").is_in(_ACTIVITY_FEEDBACK) & after_lo).any().alias("__fb_act"),
        )
    )
    joined = out.join(hits, on="__row", how="left", maintain_order="left")
    reported = pl.col("__fb_conv").fill_null(False)
    return joined.with_columns(
        (pl.col(s.CONVERTED) | reported).alias(s.CONVERTED),
        pl.when(reported)
        .then(pl.col("__fb_rev").fill_null(0.0))
        .otherwise(pl.col(s.REVENUE))
        .alias(s.REVENUE),
        (pl.col(UNSUBSCRIBED) | pl.col("__fb_uns").fill_null(False)).alias(UNSUBSCRIBED),
        (pl.col(ACTIVE) | pl.col("__fb_act").fill_null(False)).alias(ACTIVE),
    ).drop("__fb_conv", "__fb_rev", "__fb_uns", "__fb_act")
