"""Ordered funnels: users reaching each step in order within a window, overall and per segment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final, TypeAlias

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.analytics.frames import ALL_SEGMENT, EventsLike, as_utc, events_before

DEFAULT_FUNNEL_STEPS: Final[tuple[str, ...]] = ("session_start", "product_view", "add_to_cart", "purchase")
UNKNOWN_SEGMENT: Final = "unknown"

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
        starts = starts.filter(pl.col(s.TS) >= as_utc(since))
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
