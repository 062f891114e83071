"""Batch scoring on Spark: Spark features, then the one scoring path in a pandas UDF."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import EngageConfig
from engage.spark.features import build_features_spark
from engage.spark.session import local_spark

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyspark.sql import SparkSession

    from engage.scoring.core import ScoringModels
    from engage.scoring.job import ScoreRunSummary


SCORE_SCHEMA = ", ".join(f"{name} {kind}" for name, kind in s.SCORE_TYPES.items())


def score_spark(
    events: str | Path,
    as_of: datetime,
    models: ScoringModels,
    config: EngageConfig,
    out: Path,
    *,
    users: str | Path | None = None,
    exposures: str | Path | None = None,
    explain_share: float | None = 0.1,
    spark: SparkSession | None = None,
) -> ScoreRunSummary:
    """Batch scoring on Spark: Spark features, then the shared scoring path in a pandas UDF.

    The scoring function and models travel to the executors in the closure; each partition runs
    ``engage.scoring.core.score_features``, whose random draws depend only on (user, as_of, seed), so the
    result equals the embedded run's. The scores are written atomically as one Parquet file.
    """
    import time

    import numpy as np

    from engage.atomic import write_parquet_atomic
    from engage.scoring.core import score_features, to_storable
    from engage.scoring.job import ScoreRunSummary, exposure_history

    started = time.perf_counter()
    spark = spark if spark is not None else local_spark()
    user_table = pl.read_parquet(users) if users is not None else None
    exposure_table = pl.read_parquet(exposures) if exposures is not None else None
    features = build_features_spark(
        events, [as_of], config=config.features, users=user_table, exposures=exposure_table, spark=spark
    )
    probability = models.churn.churn_probability(features) if len(features) else np.array([])
    threshold = None
    if explain_share and len(probability):
        threshold = -np.inf if explain_share >= 1 else float(np.quantile(probability, 1 - explain_share))
    history = exposure_history(exposure_table, as_of, models.catalog.history_days)
    policy, seed, top_k = config.policy, config.seed, config.churn.reasons_top_k

    def score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in batches:
            if frame.empty:
                continue
            p = models.churn.churn_probability(frame)
            rows = p >= threshold if threshold is not None else None
            scored = score_features(
                frame,
                models,
                policy=policy,
                seed=seed,
                history=history,
                reasons_top_k=None if threshold is None else top_k,
                explain_rows=rows,
                churn_probability=p,
            )
            yield to_storable(scored)

    partitions = max(2, spark.sparkContext.defaultParallelism)
    scored = (
        spark.createDataFrame(features).repartition(partitions).mapInPandas(score_partition, SCORE_SCHEMA)
    )
    collected: pd.DataFrame = scored.toPandas()
    result = collected.sort_values(s.USER_ID, kind="stable", ignore_index=True)
    result[s.AS_OF] = pd.to_datetime(result[s.AS_OF], utc=True).astype("datetime64[us, UTC]")
    write_parquet_atomic(pl.from_pandas(result), out)
    explained = int((probability >= threshold).sum()) if threshold is not None else 0
    return ScoreRunSummary(
        users=len(result), seconds=time.perf_counter() - started, explained=explained, out=out, snapshot=None
    )
