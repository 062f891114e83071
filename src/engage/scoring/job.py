"""Batch scoring on one machine: events -> features -> scores file, in user chunks, written atomically.

The same scoring path as the HTTP service (``engage.scoring.core.score_features``), so a user scored here
and through ``/score`` with the same ``as_of`` gets the same answer. Users are split into chunks by a
stable hash of ``user_id`` so memory stays bounded; reasons can be limited to the riskiest share of
users, which is where they are read and where their cost matters. With a timing model each user's
timing features are computed from the same events (``engage.timing.snapshot``), so scores carry
``send_at`` and the snapshot carries the ``timing_*`` columns the service needs for it. The run also
writes the feature snapshot the service reads, and appends its decisions to the decision log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.atomic import write_parquet_atomic
from engage.config import EngageConfig
from engage.features import INPUT_COLUMNS, build_features
from engage.scoring.core import ScoringModels, score_features, to_storable
from engage.scoring.decision_log import BatchWrite, DecisionWriter
from engage.timing.snapshot import TimingCounts, scoring_counts

Progress = Callable[[int, int], None]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreRunSummary:
    """Figures of one batch scoring run."""

    users: int
    seconds: float
    explained: int
    out: Path
    snapshot: Path | None
    stages: dict[str, float] = field(default_factory=dict)
    decisions: BatchWrite | None = None
    """The run's batch in the decision log (``already_logged``: a re-run, nothing appended)."""

    @property
    def users_per_second(self) -> float:
        return self.users / self.seconds if self.seconds else float("nan")


def user_chunks(events: pl.DataFrame | pl.LazyFrame, n_chunks: int) -> list[pl.LazyFrame]:
    """Split events by a stable hash of user_id so each user lands in exactly one chunk."""
    lazy = events.lazy() if isinstance(events, pl.DataFrame) else events
    if n_chunks <= 1:
        return [lazy]
    return [lazy.filter(_bucket(n_chunks) == i) for i in range(n_chunks)]


def _user_hash() -> pl.Expr:
    return pl.col(s.USER_ID).hash(seed=0)


def _bucket(n_chunks: int) -> pl.Expr:
    return _user_hash() % n_chunks


def _chunk_rows(table: pl.DataFrame | None, n_chunks: int, i: int) -> pl.DataFrame | None:
    """The rows of a per-user table (users, exposures) whose users fall in chunk ``i``."""
    if table is None or n_chunks <= 1:
        return table
    return table.filter(_bucket(n_chunks) == i)


def exposure_history(
    exposures: pl.DataFrame | None, as_of: datetime, days: int | None = None
) -> pd.DataFrame | None:
    """Past messages (for cooldowns and caps): exposures before as_of (within ``days``, if given)."""
    if exposures is None:
        return None
    past = exposures.filter(pl.col(s.TS) < as_of)
    if days is not None:
        past = past.filter(pl.col(s.TS) >= as_of - timedelta(days=days))
    return past.select(s.USER_ID, s.TS, s.MESSAGE_ID).to_pandas()


def score_events(
    events: pl.DataFrame | pl.LazyFrame,
    as_of: datetime,
    models: ScoringModels,
    config: EngageConfig,
    out: Path,
    *,
    users: pl.DataFrame | None = None,
    exposures: pl.DataFrame | None = None,
    explain_share: float | None = 1.0,
    users_per_chunk: int = 250_000,
    snapshot: Path | None = None,
    decision_log: Path | None = None,
    run_key: str | None = None,
    progress: Progress | None = None,
) -> ScoreRunSummary:
    """Score every user with events before ``as_of`` and write ``out`` atomically.

    ``explain_share`` is the share of riskiest users that get reasons (1.0 = everyone, 0 or None =
    nobody). Re-running with the same inputs gives the identical file. The decisions go to
    ``decision_log`` as one batch, all or nothing; their ids are fixed by the job (users, as_of,
    models, seed and ``run_key``), so a re-run appends nothing (``summary.decisions.already_logged``).
    ``run_key`` (e.g. a scheduler's run id) makes a deliberate second run of the same job new
    decisions; None keeps the ids earlier runs logged.
    """
    started = time.perf_counter()
    stages = dict.fromkeys(("features", "predict", "timing", "score", "write"), 0.0)
    lazy = events.lazy() if isinstance(events, pl.DataFrame) else events
    # distinct 64-bit hashes: exact but for a collision, and cheaper than distinct strings; it only
    # sizes the chunks and the progress bar
    n_users = lazy.filter(pl.col(s.TS) < as_of).select(_user_hash().n_unique()).collect().item()
    n_chunks = max(1, int(np.ceil(n_users / users_per_chunk)))
    recent = None
    if exposures is not None:
        days = models.catalog.history_days
        recent = exposures.filter((pl.col(s.TS) < as_of) & (pl.col(s.TS) >= as_of - timedelta(days=days)))
    features: list[pd.DataFrame] = []
    probabilities: list[np.ndarray] = []
    timing: list[TimingCounts | None] = []  # per chunk: timing counts, rows aligned to its features
    done = 0
    columns = [c for c in lazy.collect_schema().names() if c in INPUT_COLUMNS]  # skip e.g. properties
    for i, chunk in enumerate(user_chunks(lazy, n_chunks)):
        tick = time.perf_counter()
        # one read of this chunk's events: the feature engine makes several passes over its input
        chunk_events = chunk.filter(pl.col(s.TS) < as_of).select(columns).collect(engine="streaming")
        chunk_users, chunk_exposures = _chunk_rows(users, n_chunks, i), _chunk_rows(exposures, n_chunks, i)
        frame = build_features(
            chunk_events, [as_of], config=config.features, users=chunk_users, exposures=chunk_exposures
        )
        stages["features"] += time.perf_counter() - tick
        tick = time.perf_counter()
        features.append(frame)
        probabilities.append(models.churn.churn_probability(frame) if len(frame) else np.array([]))
        stages["predict"] += time.perf_counter() - tick
        if models.timing is not None and len(frame):
            tick = time.perf_counter()
            # the counts only: the profile is shrunk once, when the chunk is scored
            timing.append(
                scoring_counts(
                    models.timing,
                    chunk_events,
                    as_of,
                    config.timing,
                    user_ids=pl.Series(s.USER_ID, frame[s.USER_ID].astype(str).to_numpy(), dtype=pl.String),
                    users=chunk_users,
                    exposures=chunk_exposures,
                )
            )
            stages["timing"] += time.perf_counter() - tick
        else:
            timing.append(None)
        del chunk_events, chunk_users, chunk_exposures
        done += len(frame)
        if progress:
            progress(done // 2, n_users)
    all_p = np.concatenate(probabilities) if probabilities else np.array([])
    threshold = _explain_threshold(all_p, explain_share)
    parts: list[pd.DataFrame] = []
    explained = 0
    for i, (frame, p) in enumerate(zip(features, probabilities, strict=True)):
        if frame.empty:
            continue
        counted = timing[i]
        timing_rows = None
        if counted is not None and models.timing is not None:
            tick = time.perf_counter()
            timing_rows = counted.features(models.timing)  # the shrunk profile, once per chunk
            if snapshot is None:
                timing[i] = None  # nothing else reads the counts
            stages["timing"] += time.perf_counter() - tick
        tick = time.perf_counter()
        mine = _chunk_rows(recent, n_chunks, i)
        history = None if mine is None else mine.select(s.USER_ID, s.TS, s.MESSAGE_ID).to_pandas()
        rows = p >= threshold if threshold is not None else None
        explained += int(rows.sum()) if rows is not None else 0
        parts.append(
            score_features(
                frame,
                models,
                policy=config.policy,
                seed=config.seed,
                history=history,
                reasons_top_k=None if threshold is None else config.churn.reasons_top_k,
                explain_rows=rows,
                churn_probability=p,
                decision_nonce=run_key,
                timing=timing_rows,
                timing_config=config.timing,
            )
        )
        stages["score"] += time.perf_counter() - tick
        done += len(frame)
        if progress:
            progress(min(done // 2, n_users), n_users)
    tick = time.perf_counter()
    scores = (
        pd.concat(parts, ignore_index=True)
        if parts
        else score_features(pd.DataFrame(), models, policy=config.policy, seed=config.seed)
    )
    table = pl.from_pandas(to_storable(scores))
    order = table[s.USER_ID].arg_sort().to_numpy()  # ids are unique: order is total
    table = table[order]
    write_parquet_atomic(table, out)
    snapshot_path = None
    if snapshot is not None and features:
        snap = pl.from_pandas(pd.concat(features, ignore_index=True))
        stored = [t for t in timing if t is not None]
        if stored:  # the service's send times: the timing_* columns, rows aligned
            snap = snap.hstack(pl.concat([t.columns() for t in stored]).drop(s.USER_ID))
        snapshot_path = write_parquet_atomic(snap.sort(s.USER_ID, maintain_order=True), snapshot)
    logged = None
    if decision_log is not None and len(scores):
        scores = scores.iloc[order].reset_index(drop=True)
        with DecisionWriter(decision_log) as log:
            logged = log.write_frame(scores, as_of)
        if logged.already_logged:
            logger.warning("decision log: batch %s already in %s, nothing appended", logged.key, logged.path)
    stages["write"] = time.perf_counter() - tick
    return ScoreRunSummary(
        users=len(scores),
        seconds=time.perf_counter() - started,
        explained=explained,
        out=out,
        snapshot=snapshot_path,
        stages=stages,
        decisions=logged,
    )


def _explain_threshold(probabilities: np.ndarray, share: float | None) -> float | None:
    """Probability above which a user gets reasons; None when nobody does."""
    if share is None or share <= 0 or len(probabilities) == 0:
        return None
    if share >= 1:
        return -np.inf
    return float(np.quantile(probabilities, 1 - share))
