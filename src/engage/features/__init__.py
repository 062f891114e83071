"""Point-in-time behavioral features per (user_id, as_of) from the canonical events table.

Conventions (documented for model baselines): recency features (``days_since_*``) are NaN when the
event never happened before as_of (LightGBM handles NaN; linear baselines must impute, e.g. with a
large value such as 9999 plus a missing flag). Rate ratios ``*_rate_ratio_7d_28d`` compare the per-day
rate in the last 7 days with the per-day rate over the 28 days before that window, smoothed as
``(a/7 + 1/28) / (b/28 + 1/28)`` so a zero base gives a finite value (1.0 when both are 0).
Counts and sums are float64; ``top_category`` is a plain string ("none" when no category was seen).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import pandas as pd
import polars as pl

from engage.config import FeatureConfig
from engage.features.spec import (
    CATEGORICAL,
    INPUT_COLUMNS,
    FeatureDef,
    categorical_features,
    feature_defs,
    feature_descriptions,
    feature_names,
    feature_units,
)

__all__ = [
    "CATEGORICAL",
    "INPUT_COLUMNS",
    "FeatureDef",
    "build_features",
    "categorical_features",
    "feature_defs",
    "feature_descriptions",
    "feature_names",
    "feature_units",
]


def build_features(
    events: pl.DataFrame | pl.LazyFrame | pd.DataFrame,
    as_of: datetime | Sequence[datetime],
    *,
    config: FeatureConfig,
    users: pl.DataFrame | pd.DataFrame | None = None,
    exposures: pl.DataFrame | pl.LazyFrame | pd.DataFrame | None = None,
    engine: str = "polars",
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """One row per (user, as_of) for every user with an event before as_of; features in spec order.

    ``engine="polars"`` runs here; Spark runs through ``engage.spark`` (the only pyspark package).
    """
    if engine != "polars":
        raise ValueError(f"engine {engine!r} is not embedded: use engage.spark for spark")
    from engage.features.polars_engine import build_features as run

    return run(events, as_of, config=config, users=users, exposures=exposures, progress=progress)
