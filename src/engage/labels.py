"""Churn labels over snapshot dates, the stacked training table, and the data-sufficiency gate.

A label for (user, as_of) reads only events in ``[as_of + lead, as_of + lead + horizon)``; the
eligible population is users active in the lookback window before as_of. Reactivation inside the
horizon counts as retained (the user was seen), so only silence through the whole window is churn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeAlias

import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import FeatureConfig, LabelConfig

Events: TypeAlias = pl.DataFrame | pl.LazyFrame | pd.DataFrame


class InsufficientDataError(ValueError):
    """Too few churned or retained rows to train a churn model."""


def snapshot_dates(start: datetime, end: datetime, every_days: int) -> list[datetime]:
    """start, start + every, ... up to and including end."""
    out, d = [], start
    while d <= end:
        out.append(d)
        d += timedelta(days=every_days)
    return out


def _lazy(events: Events) -> pl.LazyFrame:
    if isinstance(events, pd.DataFrame):
        events = pl.from_pandas(events)
    return events.lazy() if isinstance(events, pl.DataFrame) else events


def churn_labels(
    events: Events, as_of: datetime | Sequence[datetime], *, config: LabelConfig
) -> pd.DataFrame:
    """Churned (1) / retained (0) for users active in the lookback window before each as_of."""
    dates = [as_of] if isinstance(as_of, datetime) else list(as_of)
    ev = _lazy(events)
    parts = []
    for d in dates:
        lit = pl.lit(d).cast(s.TS_DTYPE)
        eligible = (
            ev.filter((pl.col(s.TS) < lit) & (pl.col(s.TS) >= lit - pl.duration(days=config.lookback_days)))
            .select(s.USER_ID)
            .unique()
        )
        lo = lit + pl.duration(days=config.lead_days)
        hi = lo + pl.duration(days=config.horizon_days)
        window = ev.filter((pl.col(s.TS) >= lo) & (pl.col(s.TS) < hi))
        if config.definition == "cancel_event":
            if not config.cancel_event:
                raise ValueError("labels.definition=cancel_event needs labels.cancel_event")
            hits = window.filter(pl.col(s.EVENT_TYPE) == config.cancel_event).select(s.USER_ID).unique()
            flag = 1
        else:
            if config.qualifying_events:
                window = window.filter(pl.col(s.EVENT_TYPE).is_in(list(config.qualifying_events)))
            hits = window.select(s.USER_ID).unique()
            flag = 0
        labelled = eligible.join(
            hits.with_columns(pl.lit(True).alias("__hit")), on=s.USER_ID, how="left"
        ).select(
            s.USER_ID,
            pl.lit(d).cast(s.TS_DTYPE).alias(s.AS_OF),
            pl.when(pl.col("__hit").fill_null(False))
            .then(flag)
            .otherwise(1 - flag)
            .cast(pl.Int64)
            .alias(s.LABEL),
        )
        parts.append(labelled.collect())
    return pl.concat(parts).sort(s.AS_OF, s.USER_ID).to_pandas()


def build_training_table(
    events: Events,
    start: datetime,
    end: datetime,
    *,
    feature_config: FeatureConfig,
    label_config: LabelConfig,
    users: pl.DataFrame | pd.DataFrame | None = None,
    exposures: Events | None = None,
    engine: str = "polars",
    progress: Callable[[int, int], None] | None = None,
    feature_builder: Callable[..., pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Features and the churn label for every eligible (user, snapshot date) between start and end.

    ``feature_builder`` replaces the embedded engine (the CLI passes the Spark one for
    ``--engine spark``); it takes the same arguments as :func:`engage.features.build_features`.
    """
    from engage.features import build_features

    dates = snapshot_dates(start, end, label_config.every_days)
    if not dates:
        raise ValueError(f"no snapshot date between {start:%Y-%m-%d} and {end:%Y-%m-%d}")
    labels = churn_labels(events, dates, config=label_config)
    if feature_builder is None:
        feats = build_features(
            events,
            dates,
            config=feature_config,
            users=users,
            exposures=exposures,
            engine=engine,
            progress=progress,
        )
    else:
        feats = feature_builder(
            events, dates, config=feature_config, users=users, exposures=exposures, progress=progress
        )
    return feats.merge(labels, on=[s.USER_ID, s.AS_OF], how="inner")


def check_sufficiency(table: pd.DataFrame, config: LabelConfig) -> None:
    """Fail, like GA4 and Braze eligibility rules, when there are too few churned or retained rows."""
    churned = int(table[s.LABEL].sum())
    retained = int(len(table) - churned)
    short = []
    if churned < config.min_churned:
        short.append(f"{churned:,} churned rows (need {config.min_churned:,})")
    if retained < config.min_retained:
        short.append(f"{retained:,} retained rows (need {config.min_retained:,})")
    if short:
        raise InsufficientDataError(
            "not enough data to train a churn model: "
            + " and ".join(short)
            + f" over {table[s.AS_OF].nunique()} snapshots; add snapshots (an earlier start or a shorter "
            "--every), widen the horizon, or lower labels.min_churned / labels.min_retained"
        )
