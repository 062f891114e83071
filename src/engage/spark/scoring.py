"""Batch scoring on Spark: every step on the executors, the driver only plans and commits.

Events, users and exposures are read by Spark (``engage.spark.io``) and validated there
(``engage.spark.validate``); features are computed by Spark; churn, reasons and the policy run in
``mapInPandas`` partitions calling ``engage.scoring.core.score_features`` (the models and config go
to the executors in the closure); the explain threshold is Spark's exact percentile (numpy's
linear interpolation: the embedded run's threshold, so the same users get reasons). Scores, the
feature snapshot and the quarantine are Parquet data sets and the decisions one batch of the
decision log (``engage.scoring.decision_log``'s layout and key), all written by the executors and
committed by a rename. What reaches the driver: row counts, the threshold, the batch key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.config import EngageConfig
from engage.spark.feature_engine import features as spark_features
from engage.spark.io import read_exposures, read_input, read_users, uri_text, write_dataset
from engage.spark.session import spark_session, utc_session
from engage.spark.validate import SparkValidation, validate_events

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyspark.sql import DataFrame, SparkSession

    from engage.scoring.core import ScoringModels
    from engage.scoring.decision_log import BatchWrite
    from engage.scoring.job import ScoreRunSummary


SCORE_SCHEMA = ", ".join(f"{name} {kind}" for name, kind in s.SCORE_TYPES.items())
_P, _HIST = "__p", "__hist"


@dataclass(frozen=True)
class SparkScoreRun:
    """What one Spark scoring run did: counts and where its outputs were committed."""

    users: int
    explained: int
    rows_in: int
    quarantined: int
    threshold: float | None
    seconds: float
    out: str | None = None
    snapshot: str | None = None
    quarantine: str | None = None
    decisions: BatchWrite | None = None
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage (each ends with the Spark action that runs it)."""


def quarantine_beside(out: str | Path) -> str:
    """The quarantine data set written next to a scores output: ``<stem>.quarantine.parquet``."""
    text = uri_text(out).rstrip("/")
    head, _, name = text.rpartition("/")
    stem = name[: -len(".parquet")] if name.endswith(".parquet") else name
    return f"{head}/{stem}.quarantine.parquet"


def _history(exposures: DataFrame | None, as_of: datetime, days: int) -> DataFrame | None:
    """Per user, the messages of the last ``days`` before as_of (caps, cooldowns), as one list column."""
    if exposures is None:
        return None
    from pyspark.sql import functions as F

    past = exposures.filter(
        (F.col(s.TS) < F.lit(as_of)) & (F.col(s.TS) >= F.lit(as_of - timedelta(days=days)))
    )
    return past.groupBy(s.USER_ID).agg(
        F.collect_list(F.struct(F.unix_micros(F.col(s.TS)).alias("us"), F.col(s.MESSAGE_ID))).alias(_HIST)
    )


def _history_frame(lists: pd.Series, users: pd.Series) -> pd.DataFrame:
    """The ``history`` table ``score_features`` takes, from a partition's list column."""
    rows = [
        (user, item["us"], item[s.MESSAGE_ID])
        for user, items in zip(users.tolist(), lists.tolist(), strict=True)
        if items is not None
        for item in items
    ]
    frame = pd.DataFrame(rows, columns=[s.USER_ID, "us", s.MESSAGE_ID])
    frame[s.TS] = pd.to_datetime(frame.pop("us").astype("int64"), unit="us", utc=True)
    return frame[[s.USER_ID, s.TS, s.MESSAGE_ID]]


def _explain_threshold(frame: DataFrame, share: float | None) -> float | None:
    """Probability above which a user gets reasons (``engage.scoring.job``'s rule), from Spark."""
    if share is None or share <= 0:
        return None
    if share >= 1:
        return -np.inf
    from pyspark.sql import functions as F

    value = frame.agg(F.percentile(F.col(_P), F.lit(1 - share)).alias("q")).first()
    return None if value is None or value["q"] is None else float(value["q"])


@dataclass(frozen=True)
class _Inputs:
    rows: DataFrame  # validated event rows, persisted (accepted: no reason)
    rows_in: int
    quarantined: int
    users: DataFrame | None
    exposures: DataFrame | None


def _inputs(
    spark: SparkSession,
    events: str | Path | DataFrame,
    users: str | Path | DataFrame | None,
    exposures: str | Path | DataFrame | None,
    quarantine: str | Path | None,
    reference_time: datetime | None,
) -> _Inputs:
    """Events read and validated by Spark (rows persisted; the quarantine written when asked),
    users and exposures read by Spark: the inputs of every Spark job."""
    from pyspark import StorageLevel

    source = str(events) if isinstance(events, str | Path) else "events DataFrame"
    raw = read_input(spark, events) if isinstance(events, str | Path) else events
    checked = validate_events(spark, raw, source=source, reference_time=reference_time)
    rows = checked.rows.persist(StorageLevel.MEMORY_AND_DISK)
    quarantined = 0
    if quarantine is not None:
        written = write_dataset(SparkValidation.quarantine_of(rows), quarantine)
        quarantined = spark.read.parquet(written.uri).count()
    return _Inputs(
        rows=rows,
        rows_in=checked.rows_in,
        quarantined=quarantined,
        users=read_users(spark, users) if isinstance(users, str | Path) else users,
        exposures=read_exposures(spark, exposures) if isinstance(exposures, str | Path) else exposures,
    )


def write_features(
    spark: SparkSession,
    events: str | Path | DataFrame,
    dates: list[datetime],
    config: EngageConfig,
    out: str | Path,
    *,
    users: str | Path | DataFrame | None = None,
    exposures: str | Path | DataFrame | None = None,
    reference_time: datetime | None = None,
) -> SparkScoreRun:
    """``engage features --engine spark``: the feature table of every date, written as a data set
    (the quarantine beside it); ``users`` counts its rows."""
    from pyspark import StorageLevel

    started = time.perf_counter()
    with utc_session(spark):
        quarantine = quarantine_beside(out)
        inputs = _inputs(spark, events, users, exposures, quarantine, reference_time)
        accepted = SparkValidation.accepted_of(inputs.rows)
        table = spark_features(spark, accepted, dates, config.features, inputs.users, inputs.exposures)
        # persisted: the sort's sampling pass builds it once and the sort reads it (else the
        # sampling runs the features' last stage, the joins and formulas, a second time)
        table = table.persist(StorageLevel.MEMORY_AND_DISK)
        written = write_dataset(table.orderBy(s.AS_OF, s.USER_ID), out)
        n = spark.read.parquet(written.uri).count()
        table.unpersist()
        inputs.rows.unpersist()
    return SparkScoreRun(
        users=n,
        explained=0,
        rows_in=inputs.rows_in,
        quarantined=inputs.quarantined,
        threshold=None,
        seconds=time.perf_counter() - started,
        out=written.uri,
        quarantine=quarantine,
    )


def score(
    spark: SparkSession,
    events: str | Path | DataFrame,
    as_of: datetime,
    models: ScoringModels,
    config: EngageConfig,
    **options: Any,
) -> DataFrame:
    """Scores of every user with events before ``as_of`` in an existing session, as a DataFrame.

    ``events``: a URI (file, folder, ``s3a://...``) or a raw events DataFrame. Options are those of
    :func:`run_scoring` (users, exposures, explain_share, outputs). With ``out`` the scores are
    written and the committed data set is returned; without it the frame is lazy.
    """
    return run_scoring(spark, events, as_of, models, config, **options)[0]


def run_scoring(
    spark: SparkSession,
    events: str | Path | DataFrame,
    as_of: datetime,
    models: ScoringModels,
    config: EngageConfig,
    *,
    users: str | Path | DataFrame | None = None,
    exposures: str | Path | DataFrame | None = None,
    explain_share: float | None = 0.1,
    run_key: str | None = None,
    out: str | Path | None = None,
    snapshot: str | Path | None = None,
    decision_log: str | Path | None = None,
    quarantine: str | Path | None = None,
    reference_time: datetime | None = None,
) -> tuple[DataFrame, SparkScoreRun]:
    """:func:`score` and the figures of the run; outputs given are written and committed."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from engage.scoring.core import score_features, to_storable

    started = time.perf_counter()
    stages: dict[str, float] = {}

    def stage(name: str) -> None:  # Spark is lazy: each stage ends with the action that runs it
        stages[name] = time.perf_counter() - started - sum(stages.values())

    with utc_session(spark):
        if quarantine is None and out is not None:
            quarantine = quarantine_beside(out)
        inputs = _inputs(spark, events, users, exposures, quarantine, reference_time)
        stage("read and validate")
        rows, user_frame, exposure_frame = inputs.rows, inputs.users, inputs.exposures
        rows_in, quarantined = inputs.rows_in, inputs.quarantined
        features = spark_features(
            spark, SparkValidation.accepted_of(rows), as_of, config.features, user_frame, exposure_frame
        )
        history = _history(exposure_frame, as_of, models.catalog.history_days)
        churn = models.churn
        feature_schema = features.schema

        def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for frame in batches:
                if len(frame):
                    yield frame.assign(**{_P: churn.churn_probability(frame)})

        from pyspark.sql.types import DoubleType, StructField, StructType

        with_p = features.mapInPandas(
            predict, StructType([*feature_schema.fields, StructField(_P, DoubleType())])
        )
        if history is not None:
            with_p = with_p.join(history, on=s.USER_ID, how="left")
        cached = with_p.repartition(config.spark.partitions, s.USER_ID).persist(StorageLevel.MEMORY_AND_DISK)
        threshold = _explain_threshold(cached, explain_share)
        counted = cached.agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(F.when(F.col(_P) >= threshold, 1).otherwise(0)).alias("explained")
            if threshold is not None
            else F.lit(0).alias("explained"),
        ).first()
        n_users = int(counted["n"]) if counted is not None else 0
        explained = int(counted["explained"] or 0) if counted is not None else 0
        stage("features, churn and threshold")
        policy, seed, top_k = config.policy, config.seed, config.churn.reasons_top_k
        with_history = history is not None

        def score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for frame in batches:
                if frame.empty:
                    continue
                p = frame.pop(_P).to_numpy(dtype=float)
                past = _history_frame(frame.pop(_HIST), frame[s.USER_ID]) if with_history else None
                scored = score_features(
                    frame,
                    models,
                    policy=policy,
                    seed=seed,
                    history=past,
                    reasons_top_k=None if threshold is None else top_k,
                    explain_rows=p >= threshold if threshold is not None else None,
                    churn_probability=p,
                    decision_nonce=run_key,
                )
                yield to_storable(scored)

        # sorted before scoring: the sort's sampling pass reads the cache, not the scoring
        scored = cached.orderBy(s.USER_ID).mapInPandas(score_partition, SCORE_SCHEMA)
        snapshot_uri = None
        if snapshot is not None:
            snap = cached.drop(_P, *([_HIST] if with_history else [])).orderBy(s.USER_ID)
            snapshot_uri = write_dataset(snap, snapshot).uri
            stage("snapshot")
        out_uri = None
        logged = None
        if out is not None:
            out_uri = write_dataset(scored, out).uri
            stage("score and write")
            scored = spark.read.parquet(out_uri)
            if decision_log is not None and n_users:
                from engage.spark.decisions import write_decisions

                logged = write_decisions(scored, decision_log, as_of)
                stage("decision log")
        elif decision_log is not None:
            raise ValueError("a decision log is written from the committed scores: give out as well")
        cached.unpersist()
        rows.unpersist()
    run = SparkScoreRun(
        users=n_users,
        explained=explained,
        rows_in=rows_in,
        quarantined=quarantined,
        threshold=threshold,
        seconds=time.perf_counter() - started,
        out=out_uri,
        snapshot=snapshot_uri,
        quarantine=None if quarantine is None else uri_text(quarantine),
        decisions=logged,
        stages=stages,
    )
    return scored, run


def score_spark(
    events: str | Path,
    as_of: datetime,
    models: ScoringModels,
    config: EngageConfig,
    out: Path | str,
    *,
    users: str | Path | None = None,
    exposures: str | Path | None = None,
    explain_share: float | None = 0.1,
    snapshot: str | Path | None = None,
    decision_log: str | Path | None = None,
    run_key: str | None = None,
    spark: SparkSession | None = None,
    master: str | None = None,
) -> ScoreRunSummary:
    """``engage score --engine spark``: :func:`run_scoring` in the session of the ``spark`` config."""
    from engage.scoring.job import ScoreRunSummary

    session = spark if spark is not None else spark_session(config.spark, master=master)
    reference = config.validation.reference_time
    _, run = run_scoring(
        session,
        events,
        as_of,
        models,
        config,
        users=users,
        exposures=exposures,
        explain_share=explain_share,
        run_key=run_key,
        out=out,
        snapshot=snapshot,
        decision_log=decision_log,
        reference_time=None if reference is None else _aware(reference),
    )
    return ScoreRunSummary(
        users=run.users,
        seconds=run.seconds,
        explained=run.explained,
        out=Path(out) if isinstance(out, Path) else Path(str(out)),
        snapshot=None if snapshot is None else Path(str(snapshot)),
        stages={**run.stages, "rows_in": float(run.rows_in), "quarantined": float(run.quarantined)},
        decisions=run.decisions,
    )


def _aware(text: str) -> datetime:
    from datetime import UTC

    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


__all__ = [
    "SCORE_SCHEMA",
    "SparkScoreRun",
    "quarantine_beside",
    "run_scoring",
    "score",
    "score_spark",
    "write_features",
]
