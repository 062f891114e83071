"""Timing features where decisions are made: from events with the fitted model, and as snapshot columns.

A batch run computes each user's timing features from events (:func:`scoring_counts`, with the
registered model's prior and settings) and stores them in the feature snapshot as the few
``timing_*`` columns below (:func:`to_columns`); the service, which has no raw events, rebuilds the
same :class:`TimingFeatures` from those columns and the model (:func:`from_columns`). What is
stored is what the send time and the channel need and cannot recompute: the user's activity hours
by local hour of the week (sparse, ``"slot:count,..."``), the time zone with its source and note,
and the open rate over similar users' per channel. The shrunk profile and peakedness are derived
from the counts by the model, so they are not stored. Batch scoring keeps each chunk's counts
(:func:`scoring_counts`, compact) until it scores the chunk and shrinks the profile once, there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
from numpy.typing import NDArray

from engage import schemas
from engage.config import TimingConfig
from engage.timing.features import (
    ACTIVITY_HOURS,
    HOW,
    OPEN_EVENTS,
    PEAKEDNESS,
    TimingFeatures,
    activity_features,
)
from engage.timing.features import peakedness as profile_peakedness
from engage.timing.sendtime import TimingModel
from engage.timing.zones import ZONE, ZONE_NOTE, ZONE_SOURCE

PREFIX = "timing_"
HOURS_COLUMN = "timing_hours"
"""Activity hours by local hour of the week, sparse: ``"slot:count"`` pairs joined by commas."""
LIFT_COLUMNS = tuple(f"open_lift_{ch}" for ch in OPEN_EVENTS)
TABLE_COLUMNS = (ZONE, ZONE_SOURCE, ZONE_NOTE, *LIFT_COLUMNS)
"""The feature table's columns the snapshot keeps (as ``timing_<name>``)."""
TIMING_COLUMNS = (HOURS_COLUMN, *(PREFIX + c for c in TABLE_COLUMNS))
"""The snapshot's timing columns, in order."""


@dataclass(frozen=True)
class TimingCounts:
    """What the send time needs of each user, before the profile is shrunk: batch scoring keeps this
    per chunk (the counts compact) and shrinks the profile once, when it scores the chunk."""

    table: pl.DataFrame
    """``user_id`` and the snapshot's ``timing_*`` table columns (``TABLE_COLUMNS``)."""
    counts: NDArray[np.generic]
    """(n, 168) activity hours by local hour of the week (whole numbers, any numeric dtype)."""

    def features(self, model: TimingModel) -> TimingFeatures:
        """The :class:`TimingFeatures` the model gives these rows (the same as through the snapshot)."""
        return _features(self.table, np.asarray(self.counts, dtype=np.float64), model)

    def columns(self) -> pl.DataFrame:
        """``user_id`` and the snapshot's timing columns (``TIMING_COLUMNS``): :func:`to_columns`."""
        return self.table.insert_column(1, _hours_text(self.counts))


def scoring_counts(
    model: TimingModel,
    events: pl.DataFrame,
    as_of: datetime,
    config: TimingConfig,
    *,
    user_ids: Sequence[str] | pl.Series,
    users: pl.DataFrame | None = None,
    exposures: pl.DataFrame | None = None,
) -> TimingCounts:
    """The timing counts of `user_ids` (rows in that order) at `as_of`, before the profile is shrunk
    toward the model's prior (``.features(model)``); `users` may carry ``timezone`` (else inferred or
    UTC, stated per row); the counts ``uint16`` when they fit."""
    ids = (
        user_ids.cast(pl.String)
        if isinstance(user_ids, pl.Series)
        else pl.Series(list(user_ids), dtype=pl.String)
    )
    frame = pl.DataFrame({schemas.USER_ID: ids})
    if users is not None and schemas.TIMEZONE in users.columns:
        zones = users.select(pl.col(schemas.USER_ID).cast(pl.String), schemas.TIMEZONE).unique(
            schemas.USER_ID, keep="last", maintain_order=True
        )
        frame = frame.join(zones, on=schemas.USER_ID, how="left", maintain_order="left")
    found = activity_features(
        events,
        as_of,
        users=frame,
        exposures=exposures,
        prior=model.prior,
        channel_prior_strength=config.channel_prior_strength,
        min_events_to_infer_zone=config.min_events_to_infer_zone,
        smoothing_kappa=model.smoothing_kappa,
        daytype_weight=model.daytype_weight,
        same_day_weight=model.same_day_weight,
    )
    counts: NDArray[np.generic] = found.counts  # whole numbers (a bincount)
    if counts.size and counts.max() <= np.iinfo(np.uint16).max:
        counts = counts.astype(np.uint16)  # a quarter of the memory until the chunk is scored
    return TimingCounts(table=_table_columns(found.table), counts=counts)


def _table_columns(table: pl.DataFrame) -> pl.DataFrame:
    """``user_id`` and the ``timing_*`` columns of a timing feature table (nulls for missing ones)."""
    n = table.height
    return pl.DataFrame(
        [
            table[schemas.USER_ID].cast(pl.String),
            *(
                (table[c] if c in table.columns else pl.Series(c, [None] * n, dtype=pl.Float64)).alias(
                    PREFIX + c
                )
                for c in TABLE_COLUMNS
            ),
        ]
    )


def _hours_text(counts: NDArray[np.generic]) -> pl.Series:
    """The sparse ``"slot:count,..."`` text of each row of (n, 168) counts (no activity: ``""``)."""
    import pyarrow as pa

    n = counts.shape[0]
    rows, slots = np.nonzero(counts)  # row-major: rows ascending, slots ascending within a row
    if rows.size == 0:
        return pl.Series(HOURS_COLUMN, [""] * n, dtype=pl.String)
    values = np.asarray(counts[rows, slots], dtype=np.float64).round().astype(np.int64)
    pairs = pl.select(pl.format("{}:{}", pl.lit(pl.Series(slots)), pl.lit(pl.Series(values)))).to_series()
    # each row's pairs are one contiguous run: a list column by offsets, no grouping
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), pairs.to_arrow())
    return pl.Series(HOURS_COLUMN, lists).list.join(",")


def to_columns(features: TimingFeatures) -> pl.DataFrame:
    """``user_id`` and the snapshot's timing columns (``TIMING_COLUMNS``), rows aligned to `features`."""
    return TimingCounts(table=_table_columns(features.table), counts=features.counts).columns()


def has_columns(columns: Sequence[Any]) -> bool:
    """Whether a feature table carries the timing columns (a snapshot written with a timing model)."""
    return set(TIMING_COLUMNS) <= {str(c) for c in columns}


_WELL_FORMED = re.compile(r"[0-9]+:[0-9]+(?:,[0-9]+:[0-9]+)*")
"""The hours text as :func:`to_columns` writes it."""
_FEW_ROWS = 64
"""Up to this many rows (a request's users) well-formed texts are read in Python: the frame
pipeline below costs milliseconds however few the rows."""


def _counts(hours: pl.Series) -> NDArray[np.float64]:
    """(n, 168) activity counts from the sparse ``"slot:count,..."`` texts (missing or empty: none)."""
    n = hours.len()
    if n <= _FEW_ROWS:
        texts = hours.cast(pl.String).to_list()
        if all(not text or _WELL_FORMED.fullmatch(text) for text in texts):
            out = np.zeros((n, HOW))
            for row, text in enumerate(texts):
                for pair in text.split(",") if text else ():
                    slot, count = pair.split(":")
                    k, c = int(slot), float(count)
                    if k < HOW and math.isfinite(c):  # as the frame pipeline: slots of the week only
                        out[row, k] += c
            return out
    pairs = (
        pl.DataFrame({"row": np.arange(n), HOURS_COLUMN: hours.cast(pl.String).fill_null("")})
        .filter(pl.col(HOURS_COLUMN) != "")
        .with_columns(pl.col(HOURS_COLUMN).str.split(","))
        .explode(HOURS_COLUMN)
        .with_columns(pl.col(HOURS_COLUMN).str.split_exact(":", 1).struct.rename_fields(["slot", "count"]))
        .unnest(HOURS_COLUMN)
    )
    pairs = pairs.select(
        "row", pl.col("slot").cast(pl.Int64, strict=False), pl.col("count").cast(pl.Float64, strict=False)
    ).filter(pl.col("slot").is_between(0, HOW - 1), pl.col("count").is_finite())
    flat = pairs["row"].to_numpy() * HOW + pairs["slot"].to_numpy()
    counts = np.bincount(flat, weights=pairs["count"].to_numpy(), minlength=n * HOW)
    return np.asarray(counts, dtype=np.float64).reshape(n, HOW)  # float even when nothing was counted


def from_columns(frame: pl.DataFrame | pd.DataFrame, model: TimingModel) -> TimingFeatures:
    """The :class:`TimingFeatures` of a feature table's rows from its timing columns and the model.

    A row without timing values (a user the batch did not see, inline features) reads as a user
    with no history in UTC: the population's hours, said so in the send reason.
    """
    table = (  # column by column: a column-selected pandas frame first costs a request twice as much
        pl.DataFrame([pl.Series(c, frame[c]) for c in (schemas.USER_ID, *TIMING_COLUMNS)])
        if isinstance(frame, pd.DataFrame)
        else frame
    )
    return _features(table, _counts(table[HOURS_COLUMN]), model)


def _features(table: pl.DataFrame, counts: NDArray[np.float64], model: TimingModel) -> TimingFeatures:
    """The :class:`TimingFeatures` of the ``timing_*`` columns of `table` and (n, 168) `counts`."""
    profile = model.profile(counts)
    zone = pl.col(PREFIX + ZONE).cast(pl.String)
    source = pl.col(PREFIX + ZONE_SOURCE).cast(pl.String)
    out = table.select(  # one select: a request's few rows pay each polars call's fixed cost once
        pl.col(schemas.USER_ID).cast(pl.String),
        zone.fill_null(schemas.UTC).alias(ZONE),
        pl.when(zone.is_null()).then(pl.lit("utc")).otherwise(source.fill_null("utc")).alias(ZONE_SOURCE),
        pl.col(PREFIX + ZONE_NOTE).cast(pl.String).alias(ZONE_NOTE),
        pl.lit(pl.Series(ACTIVITY_HOURS, counts.sum(axis=1), dtype=pl.Float64)),
        pl.lit(pl.Series(PEAKEDNESS, profile_peakedness(profile), dtype=pl.Float64)),
        *(pl.col(PREFIX + c).cast(pl.Float64).fill_nan(None).alias(c) for c in LIFT_COLUMNS),
    )
    return TimingFeatures(table=out, counts=counts, profile=profile, prior=model.prior)
