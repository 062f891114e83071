"""Event input shared by the analytics: one polars representation, UTC times, the point-in-time cut."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, TypeAlias

import pandas as pd
import polars as pl

from engage import schemas as s

EventsLike: TypeAlias = pl.DataFrame | pd.DataFrame
"""Events as a polars or pandas DataFrame with at least ``user_id``, ``ts``, ``event_type``."""

ALL_SEGMENT: Final = "All"
"""Label of the row or curve that pools every segment or cohort."""


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


def as_utc(as_of: datetime) -> datetime:
    """``as_of`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if as_of.tzinfo is None:
        return as_of.replace(tzinfo=UTC)
    return as_of.astimezone(UTC)


def events_before(events: EventsLike, as_of: datetime) -> pl.DataFrame:
    """Canonical polars events with ``ts < as_of`` only (the point-in-time cut)."""
    frame = as_polars_events(events)
    return frame.filter(pl.col(s.TS) < as_utc(as_of))
