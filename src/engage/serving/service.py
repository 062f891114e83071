"""The HTTP scoring service (BentoML): ``POST /score`` and ``POST /explain`` over one scoring path.

The only module that imports bentoml. Request handling lives in :class:`ScoringEngine` (plain
Python over ``engage.scoring.core``), so the Bento class only loads things once and maps errors to HTTP
statuses. Settings are read here, at the edge: ``ENGAGE_CONFIG`` (YAML), ``ENGAGE_FEATURE_SNAPSHOT``,
``ENGAGE_DECISION_LOG``, ``ENGAGE_MODEL_SOURCE`` (``bento`` or ``mlflow``), ``ENGAGE_API_TOKEN`` and
``ENGAGE_EXPOSURES`` (an optional campaign exposures table: past messages for cooldowns and caps).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import polars as pl
import yaml
from bentoml.exceptions import BentoMLException

from engage import schemas as s
from engage.config import EngageConfig, load_config
from engage.scoring.champions import (
    CHURN,
    OFFERS,
    ModelRef,
    load_champions,
    load_scoring_models,
    registry_refs,
    roles,
)
from engage.scoring.core import ScoringModels
from engage.scoring.decision_log import DecisionWriter, LogTail
from engage.serving.schemas import (
    AttributeValue,
    EventIn,
    ExplainRequest,
    ExplainResponse,
    Message,
    Reason,
    ScoreRequest,
    ScoreResponse,
    UserIn,
    UserScore,
    events_records,
    signup_time,
)
from engage.tracking import CHAMPION

logger = logging.getLogger(__name__)

ENV_CONFIG = "ENGAGE_CONFIG"
ENV_SNAPSHOT = "ENGAGE_FEATURE_SNAPSHOT"
ENV_DECISION_LOG = "ENGAGE_DECISION_LOG"
ENV_MODEL_SOURCE = "ENGAGE_MODEL_SOURCE"
ENV_TOKEN = "ENGAGE_API_TOKEN"
ENV_EXPOSURES = "ENGAGE_EXPOSURES"
SERVICE_NAME = "engage-scoring"
PROTECTED_PATHS = frozenset({"/score", "/explain"})
REASONS_TOP_K = 3
WATCH_SECONDS = 1.0
PRIOR_SAMPLE = 20_000

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# --- errors a client can meet ------------------------------------------------------------
class PayloadTooLarge(BentoMLException):
    """More users in one request than ``serve.max_users_per_request``."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unprocessable(BentoMLException):
    """A well-formed request that cannot be scored (e.g. inline events that give no features)."""

    error_code = HTTPStatus.UNPROCESSABLE_ENTITY


# --- settings and models (the edge) -------------------------------------------------------
def service_config() -> EngageConfig:
    """The config from ``ENGAGE_CONFIG`` (YAML) or the packaged defaults, with env path overrides."""
    config = load_config(os.environ.get(ENV_CONFIG) or None)
    overrides: dict[str, Any] = {}
    if os.environ.get(ENV_SNAPSHOT):
        overrides["feature_snapshot_path"] = os.environ[ENV_SNAPSHOT]
    if os.environ.get(ENV_DECISION_LOG):
        overrides["decision_log_dir"] = os.environ[ENV_DECISION_LOG]
    if overrides:
        config = config.model_copy(update={"serve": config.serve.model_copy(update=overrides)})
    return config


def bento_refs(config: EngageConfig) -> list[ModelRef]:
    """The latest copy of each role's model in the Bento store (inside a served Bento: its own).

    Each is an MLflow model folder that :func:`engage.scoring.champions.load_scoring_models` loads
    like a registry URI; the version is the registered one it was imported from.
    """
    from bentoml.exceptions import NotFound

    refs: list[ModelRef] = []
    for role, name in roles(config).items():
        try:
            stored = bentoml.models.get(f"{name}:latest")
        except NotFound:
            if role == CHURN:
                raise
            continue
        version = str(stored.info.metadata.get("registered_version", stored.tag.version))
        folder = stored.path_of(bentoml.mlflow.MLFLOW_MODEL_FOLDER)
        refs.append(ModelRef(role=role, name=name, version=version, uri=folder))
    return refs


def service_models(config: EngageConfig, source: str = "bento") -> ScoringModels:
    """The models to serve: from the Bento store (``bento``) or the registry's champions (``mlflow``)."""
    if source == "bento":
        return load_scoring_models(config, bento_refs(config))
    if source == "mlflow":
        return load_champions(config)
    raise ValueError(f"{ENV_MODEL_SOURCE}: unknown model source '{source}' (bento or mlflow)")


# --- features -----------------------------------------------------------------------------
class FeatureSnapshot:
    """One loaded feature table, indexed by user for O(log n) point lookups; never mutated."""

    def __init__(self, frame: pd.DataFrame) -> None:
        frame = frame.copy()
        frame[s.USER_ID] = frame[s.USER_ID].astype(str)
        frame[s.AS_OF] = pd.to_datetime(frame[s.AS_OF], utc=True)
        self.frame = frame.sort_values([s.USER_ID, s.AS_OF], kind="stable").reset_index(drop=True)
        # names in a plain object Index: each of the scoring path's many column lookups skips an
        # arrow-string scalar read (a few us each on 1-row frames); the names are the same
        self.frame.columns = pd.Index(self.frame.columns.tolist(), dtype=object)
        users = self.frame[s.USER_ID].to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.empty(0, int)
        ends = np.r_[starts[1:], len(users)] if len(users) else np.empty(0, int)
        self.spans = {str(users[a]): (int(a), int(b)) for a, b in zip(starts, ends, strict=True)}
        self.stamps = self.frame[s.AS_OF].dt.as_unit("ns").astype("int64").to_numpy()

    def lookup(self, user_id: str, as_of: datetime | None) -> int | None:
        """Row of the user's latest snapshot at or before ``as_of`` (latest overall when None)."""
        span = self.spans.get(user_id)
        if span is None:
            return None
        start, end = span
        if as_of is None:
            return end - 1
        stamp = pd.Timestamp(as_of).as_unit("ns").value
        pos = start + int(np.searchsorted(self.stamps[start:end], stamp, side="right")) - 1
        return pos if pos >= start else None

    def latest_rows(self) -> pd.DataFrame:
        """One row per user: the latest snapshot (for the cold-start prior)."""
        return self.frame.iloc[[end - 1 for _, end in self.spans.values()]]


class SnapshotSource:
    """The latest materialized snapshot at ``path``, re-read when the file changes.

    A batch job or ``engage features`` rewrites it atomically; readers hold one
    :class:`FeatureSnapshot` per request, so a reload never mixes two tables in one answer. The
    file is checked by :meth:`refresh` (the engine's watcher thread), never inside a request.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._current = FeatureSnapshot(pd.DataFrame({s.USER_ID: [], s.AS_OF: []}))
        self.refresh()

    def _stat(self) -> float | None:
        try:
            if self.path.is_dir():
                return max(p.stat().st_mtime for p in [self.path, *self.path.glob("**/*.parquet")])
            return self.path.stat().st_mtime
        except (OSError, ValueError):
            return None

    def refresh(self) -> bool:
        """Load the file when it appeared or changed; True when a new snapshot was loaded."""
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return False
        with self._lock:
            if mtime == self._mtime:
                return False
            self._current = FeatureSnapshot(pd.read_parquet(self.path))
            self._mtime = mtime
        logger.info(
            "feature snapshot loaded: %d rows, %d users", len(self._current.frame), len(self._current.spans)
        )
        return True

    def current(self) -> FeatureSnapshot:
        """The snapshot to use now (no file access: :meth:`refresh` swaps it in)."""
        return self._current


# --- contact history (cooldowns and the contact cap) -------------------------------------------
NONE_MARK = f'"{s.MESSAGE_ID}":"{s.CONTROL_ARM}"'


class ContactHistory:
    """Recent messages per user, for the catalog's cooldowns and the 7-day contact cap.

    Sources: the decision log (batch runs append there with ``decided_at`` = their ``as_of``; other
    workers append their own files), an optional exposures table (``ENGAGE_EXPOSURES``: user_id,
    ts, message_id), and the decisions this process made (:meth:`record`). The time of a contact
    is the decision time; ``none`` never counts. Per user, entries older than ``retention`` before
    the user's newest contact are dropped: no cooldown or cap looks further back.
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        retention: pd.Timedelta,
        exposures: str | Path | None = None,
        own_file: str | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.exposures = Path(exposures) if exposures else None
        self.retention = int(pd.Timedelta(retention).value)
        self._lock = threading.Lock()
        self._log: dict[str, list[tuple[int, str]]] = {}
        self._table: dict[str, list[tuple[int, str]]] = {}
        self._tail = LogTail(self.log_dir, skip_file=own_file, skip_lines_with=NONE_MARK.encode())
        self._table_mtime: float | None = None
        self.refresh()

    def _add(
        self, store: dict[str, list[tuple[int, str]]], user_id: str, stamp: int, message_id: str
    ) -> None:
        entries = store.setdefault(user_id, [])
        entry = (stamp, message_id)
        if entry in entries:
            return
        entries.append(entry)
        newest = max(e[0] for e in entries)
        if entries[0][0] < newest - self.retention:
            entries[:] = [e for e in entries if e[0] >= newest - self.retention]

    def record(self, user_id: str, decided_at: datetime, message_id: str) -> None:
        """A decision of this process (also appended to its own log file, which is not re-read)."""
        if message_id == s.CONTROL_ARM:
            return
        with self._lock:
            self._add(self._log, user_id, pd.Timestamp(decided_at).as_unit("ns").value, message_id)

    def refresh(self) -> None:
        """Read what other processes appended to the log since the last call, and a changed table."""
        self._tail_log()
        self._load_table()

    def _tail_log(self) -> None:
        rows: list[tuple[str, int, str]] = []
        for record in self._tail.read():
            try:
                message_id = str(record[s.MESSAGE_ID])
                stamp = pd.Timestamp(record["decided_at"]).as_unit("ns").value
            except (ValueError, TypeError, KeyError):
                self._tail.skipped += 1  # a line without a readable decision: skipped, not fatal
                continue
            if message_id != s.CONTROL_ARM:
                rows.append((str(record[s.USER_ID]), stamp, message_id))
        with self._lock:
            for user_id, stamp, message_id in rows:
                self._add(self._log, user_id, stamp, message_id)

    @property
    def skipped(self) -> int:
        """Log lines that could not be read (cut short by a crash)."""
        return self._tail.skipped

    def _load_table(self) -> None:
        if self.exposures is None:
            return
        try:
            mtime = self.exposures.stat().st_mtime
        except OSError:
            return
        if mtime == self._table_mtime:
            return
        frame = pd.read_parquet(self.exposures, columns=[s.USER_ID, s.TS, s.MESSAGE_ID])
        frame = frame[frame[s.MESSAGE_ID].astype(str) != s.CONTROL_ARM]
        stamps = pd.to_datetime(frame[s.TS], utc=True).dt.as_unit("ns").astype("int64").to_numpy()
        table: dict[str, list[tuple[int, str]]] = {}
        for user_id, stamp, message_id in zip(
            frame[s.USER_ID].astype(str), stamps, frame[s.MESSAGE_ID].astype(str), strict=True
        ):
            self._add(table, user_id, int(stamp), message_id)
        with self._lock:
            self._table = table
            self._table_mtime = mtime
        logger.info("exposure history loaded: %d users", len(table))

    def entries(self, user_id: str) -> list[tuple[int, str]]:
        with self._lock:
            return [*self._log.get(user_id, ()), *self._table.get(user_id, ())]

    def frame(
        self, user_ids: Sequence[str], decided_at: datetime, policy_time: pd.Timestamp
    ) -> pd.DataFrame | None:
        """The users' contacts before ``decided_at``, on the policy's clock; None when there are none.

        Scoring judges cooldowns and caps at ``policy_time`` (the feature rows' as_of), while the
        decision is made at ``decided_at`` (the request's as_of, else now). Each contact is moved
        by the difference, so its age at ``policy_time`` is its true age at ``decided_at``.
        """
        shift = pd.Timestamp(decided_at).as_unit("ns").value - pd.Timestamp(policy_time).as_unit("ns").value
        rows = [
            (user_id, stamp - shift, message_id)
            for user_id in dict.fromkeys(user_ids)
            for stamp, message_id in self.entries(user_id)
        ]
        if not rows:
            return None
        users, stamps, messages = zip(*rows, strict=True)
        ts = pd.DatetimeIndex(np.asarray(stamps, dtype="int64").view("M8[ns]")).tz_localize("UTC")
        return pd.DataFrame(
            {
                s.USER_ID: np.array(users, dtype=object),
                s.TS: ts,
                s.MESSAGE_ID: np.array(messages, dtype=object),
            }
        )


def inline_features(
    users: Sequence[UserIn], as_of: datetime, config: EngageConfig
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Features of users given with raw events, via the same feature code as training and batch.

    Events are validated like a file (quarantine, never silent drops); quarantined counts per user
    and reason come back instead of failing the request.
    """

    from engage.events import validate_events
    from engage.features import build_features

    records = [row for user in users for row in events_records(user)]
    raw = pl.DataFrame(records, schema_overrides={s.TS: s.TS_DTYPE}, infer_schema_length=None)
    result = validate_events(raw, source="request", reference_time=as_of)
    quarantined: dict[str, dict[str, int]] = {}
    if result.quarantine.height:
        counts = result.quarantine.group_by([s.USER_ID, s.REASON]).len()
        for user_id, reason, n in counts.iter_rows():
            quarantined.setdefault(str(user_id), {})[str(reason)] = int(n)
    attributes = [{s.USER_ID: u.user_id, **(u.attributes or {})} for u in users if u.attributes]
    for row in attributes:
        if row.get(s.SIGNUP_TS) is not None:
            row[s.SIGNUP_TS] = signup_time(row[s.SIGNUP_TS])
    users_frame = pl.DataFrame(attributes, infer_schema_length=None, strict=False) if attributes else None
    if users_frame is not None and s.SIGNUP_TS in users_frame.columns:
        users_frame = users_frame.with_columns(pl.col(s.SIGNUP_TS).cast(s.TS_DTYPE))
    features = build_features(result.accepted, [as_of], config=config.features, users=users_frame)
    frame = features.to_pandas() if hasattr(features, "to_pandas") else pd.DataFrame(features)
    if not frame.empty:
        frame[s.USER_ID] = frame[s.USER_ID].astype(str)
        frame[s.AS_OF] = pd.to_datetime(frame[s.AS_OF], utc=True)
    return frame, quarantined


# --- request handling -----------------------------------------------------------------------
def _reason(item: dict[str, Any]) -> dict[str, Any]:
    """One reason as the fields of :class:`Reason` (plain values: a number, text or None)."""
    value = item.get("value")
    if isinstance(value, bool | int | float | np.number) and not isinstance(value, str):
        value = float(value) if np.isfinite(float(value)) else None
    elif value is not None and not isinstance(value, str):
        value = None if pd.isna(value) else str(value)
    return {
        "feature": str(item.get("feature", "")),
        "value": value,
        "contribution": float(item.get("contribution") or 0.0),
        "text": str(item.get("text") or item.get("feature", "")),
    }


SNAPSHOT = "snapshot"
INLINE = "inline"


@dataclass
class FeatureRows:
    """Feature frames by source and, per requested user, (source, row) or None for a cold start.

    Snapshot and inline rows are scored separately so snapshot rows keep the exact dtypes batch
    scoring used (same answer), whatever the inline rows looked like.
    """

    frames: dict[str, pd.DataFrame]
    where: list[tuple[str, int] | None]
    quarantined: dict[str, dict[str, int]]


def conform(frame: pd.DataFrame, reference: dict[str, Any]) -> pd.DataFrame:
    """Inline feature rows with every reference column, in the reference dtype.

    Attributes a caller left out are missing values (a missing consent flag is False: no consent
    known, no message on that channel); values of the wrong type become missing instead of
    reaching the model as an object column.
    """
    out = frame.copy()
    for name, dtype in reference.items():
        if name in (s.USER_ID, s.AS_OF):
            continue
        column = out[name] if name in out.columns else pd.Series([None] * len(out), index=out.index)
        if pd.api.types.is_bool_dtype(dtype):
            out[name] = np.array([value is True or value == 1 for value in column], dtype=bool)
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            out[name] = pd.to_datetime(column, utc=True, errors="coerce")
        elif pd.api.types.is_numeric_dtype(dtype):
            out[name] = pd.to_numeric(column, errors="coerce").astype(float)
        else:
            out[name] = [None if pd.isna(v) else str(v) for v in column.astype(object)]
    return out


def _as_list(values: Any) -> list[Any]:
    """A scored column as a list of plain values (numpy arrays and Series through ``tolist``)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _user_score(user_id: str, row: dict[str, Any]) -> UserScore:
    """One scored row as the response model.

    Validated from plain values in one pass of pydantic-core: about three times faster than
    ``model_construct`` of the nested models, which runs Python code per model.
    """
    channel, text = row[s.CHANNEL], row["message_text"]
    return UserScore.model_validate(
        {
            "user_id": user_id,
            "churn_probability": float(row["churn_probability"]),
            "risk_band": str(row["risk_band"]),
            "reasons": [_reason(item) for item in row["reasons"]],
            "message": {
                "message_id": str(row[s.MESSAGE_ID]),
                "channel": None if channel is None or pd.isna(channel) else str(channel),
                "text": None if text is None or pd.isna(text) else str(text),
                "expected_gain": float(row[s.EXPECTED_GAIN]),
                "propensity": float(row[s.PROPENSITY]),
                "holdout": bool(row["holdout"]),
            },
            "feature_as_of": pd.Timestamp(row[s.AS_OF]).to_pydatetime(),
            "model_versions": {str(k): str(v) for k, v in row["model_versions"].items()},
            "decision_id": str(row["decision_id"]),
            "cold_start": bool(row["cold_start"]),
            "quarantined_events": {},
        }
    )


class ScoringEngine:
    """Everything between a validated request and its answer, without HTTP.

    Holds the models, the feature snapshot and the decision log location; thread-safe for the
    worker's thread pool.
    """

    def __init__(
        self,
        config: EngageConfig,
        models: ScoringModels,
        *,
        exposures: str | Path | None = None,
        watch_seconds: float | None = WATCH_SECONDS,
    ) -> None:
        self.config = config
        self.models = models
        self.snapshots = SnapshotSource(config.serve.feature_snapshot_path)
        self.log_dir = Path(config.serve.decision_log_dir)
        self.writer = DecisionWriter(self.log_dir)
        self.history = ContactHistory(
            self.log_dir,
            retention=pd.Timedelta(days=models.catalog.history_days),
            exposures=exposures,
            own_file=self.writer.file_name,
        )
        self.prior = self._prior()
        self._busy: set[str] = set()
        self._busy_cond = threading.Condition()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if watch_seconds:
            self._watcher = threading.Thread(
                target=self._watch, args=(watch_seconds,), name="engage-watch", daemon=True
            )
            self._watcher.start()

    def _watch(self, seconds: float) -> None:
        """Off the request path: fsync the log, pick up a new snapshot and others' decisions."""
        while not self._stop.wait(seconds):
            self.refresh()

    def refresh(self) -> None:
        for step in (self.writer.sync, self._reload_snapshot, self.history.refresh):
            try:
                step()
            except Exception as exc:  # keep serving the last good state; the next tick retries
                logger.warning("background refresh failed in %s: %s", step.__name__, type(exc).__name__)

    def _reload_snapshot(self) -> None:
        if self.snapshots.refresh():
            self.prior = self._prior()

    def close(self) -> None:
        """Stop the watcher and fsync the decision log."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.writer.close()

    def _prior(self) -> float:
        """Population churn prior for cold starts: mean model output over the latest snapshot."""
        latest = self.snapshots.current().latest_rows()
        if not latest.empty:
            sample = latest.sample(min(len(latest), PRIOR_SAMPLE), random_state=self.config.seed)
            return float(np.mean(self.models.churn.churn_probability(sample)))
        base = self.models.churn.metadata.get("base_rate")
        if base is None:
            logger.warning("no feature snapshot and no base rate in the model: cold-start prior 0.5")
            return 0.5
        return float(base)

    def check_size(self, n_users: int) -> None:
        limit = self.config.serve.max_users_per_request
        if n_users > limit:
            raise PayloadTooLarge(f"users: at most {limit} users per request, got {n_users}")

    def _features(self, users: Sequence[UserIn], as_of: datetime | None, now: datetime) -> FeatureRows:
        """Feature rows for the users: snapshot rows as stored, inline rows conformed to them."""
        snapshot = self.snapshots.current()
        inline = [u for u in users if u.events]
        inline_frame: pd.DataFrame | None = None
        quarantined: dict[str, dict[str, int]] = {}
        inline_pos: dict[str, int] = {}
        if inline:  # only then: building the inline structures costs a 1-row request ~0.1 ms
            inline_frame, quarantined = self._inline(inline, as_of or now, snapshot)
            inline_pos = {uid: i for i, uid in enumerate(inline_frame.get(s.USER_ID, []))}
        snap_rows: list[int] = []
        where: list[tuple[str, int] | None] = []
        for user in users:
            if user.events:
                pos = inline_pos.get(user.user_id)
                where.append((INLINE, pos) if pos is not None else None)
            else:
                row = snapshot.lookup(user.user_id, as_of)
                if row is None:
                    where.append(None)
                else:
                    where.append((SNAPSHOT, len(snap_rows)))
                    snap_rows.append(row)
        frames = {SNAPSHOT: snapshot.frame.iloc[snap_rows].reset_index(drop=True)}
        if inline_frame is not None:
            frames[INLINE] = inline_frame.reset_index(drop=True)
        return FeatureRows(frames, where, quarantined)

    def _inline(
        self, users: Sequence[UserIn], as_of: datetime, snapshot: FeatureSnapshot
    ) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
        """Features of the users given with events, conformed to the snapshot (422 when they fail)."""
        try:
            frame, quarantined = inline_features(users, as_of, self.config)
            return conform(frame, self._reference(snapshot)), quarantined
        # a polars panic is a BaseException: uncaught, it takes the worker thread with it
        except (
            ValueError,
            TypeError,
            ArithmeticError,
            pl.exceptions.PolarsError,
            pl.exceptions.PanicException,
        ) as exc:
            logger.warning("inline features failed: %s", type(exc).__name__)
            raise Unprocessable(
                "users[].events/attributes: could not compute features from the inline events "
                f"({type(exc).__name__})"
            ) from None

    def _reference(self, snapshot: FeatureSnapshot) -> dict[str, Any]:
        """Column -> dtype every feature row must have: the snapshot's, else the models' columns."""
        if len(snapshot.frame.columns) > 2:
            return dict(snapshot.frame.dtypes)
        names = list(self.models.churn.feature_names)
        if self.models.offers is not None:
            names += [n for n in self.models.offers.feature_names if n not in names]
        categorical = set(getattr(self.models.churn.model, "categorical_features_", []))
        return {n: np.dtype(object) if n in categorical else np.dtype(float) for n in names}

    def _cold(self, user: UserIn, as_of: datetime) -> UserScore:
        """Population prior and the catalog's default message, marked ``cold_start``."""
        from engage.hashing import decision_keys

        arm = getattr(self.models.catalog, "default_message", None) or s.CONTROL_ARM
        _, ids = decision_keys([user.user_id], [as_of], self.models.versions, self.config.seed)
        return UserScore(
            user_id=user.user_id,
            churn_probability=self.prior,
            risk_band=str(self.models.churn.bands(np.array([self.prior]))[0]),
            reasons=[],
            message=Message(
                message_id=arm,
                channel=self.models.catalog.channel(arm),
                text=None,
                expected_gain=0.0,
                propensity=1.0,
                holdout=False,
            ),
            feature_as_of=None,
            model_versions=dict(self.models.versions),
            decision_id=ids[0],
            cold_start=True,
        )

    def score(self, request: ScoreRequest, now: datetime | None = None) -> ScoreResponse:
        """Score every user of the request and append one decision per user to the log.

        Each user's recent messages (decision log, exposures table, this process's decisions) go
        to the policy as ``history``, so cooldowns and the contact cap hold across requests. The
        decision time is the request's ``as_of``, else now; a contact counts when it is strictly
        earlier, so repeating a request with the same ``as_of`` repeats its answer.
        """
        now = now or datetime.now(UTC)
        self.check_size(len(request.users))
        decided_at = request.as_of or now
        user_ids = [u.user_id for u in request.users]
        with self._claim(user_ids):
            rows = self._features(request.users, request.as_of, now)
            answers = self._answers(request, rows, decided_at)
            self.log(answers, decided_at)
            for answer in answers:
                self.history.record(answer.user_id, decided_at, answer.message.message_id)
        return ScoreResponse.model_construct(users=answers)

    @contextmanager
    def _claim(self, user_ids: Sequence[str]) -> Iterator[None]:
        """Hold the users while their history is read and their new decisions recorded.

        Two concurrent requests for one user would otherwise both see no recent message and both
        send one; requests for other users are not held up.
        """
        wanted = set(user_ids)
        with self._busy_cond:
            while wanted & self._busy:
                self._busy_cond.wait()
            self._busy |= wanted
        try:
            yield
        finally:
            with self._busy_cond:
                self._busy -= wanted
                self._busy_cond.notify_all()

    def _answers(self, request: ScoreRequest, rows: FeatureRows, decided_at: datetime) -> list[UserScore]:
        from engage.schemas import utc_values
        from engage.scoring.core import score_columns

        columns: dict[str, dict[str, list[Any]]] = {}
        for source, frame in rows.frames.items():
            if len(frame):
                # scoring judges cooldowns at the latest as_of of the frame: the policy's clock
                policy_time = pd.Timestamp(utc_values(frame[s.AS_OF]).max(), tz="UTC")
                history = self.history.frame(frame[s.USER_ID].astype(str).tolist(), decided_at, policy_time)
                scored = score_columns(
                    frame,
                    self.models,
                    policy=self.config.policy,
                    seed=self.config.seed,
                    history=history,
                    reasons_top_k=REASONS_TOP_K if request.explain else None,
                )
                columns[source] = {name: _as_list(values) for name, values in scored.items()}
        answers: list[UserScore] = []
        for user, where in zip(request.users, rows.where, strict=True):
            if where is None:
                answer = self._cold(user, decided_at)
            else:
                source, pos = where
                answer = _user_score(
                    user.user_id, {name: values[pos] for name, values in columns[source].items()}
                )
            answer.quarantined_events = rows.quarantined.get(user.user_id, {})
            answers.append(answer)
        return answers

    def log(self, answers: Sequence[UserScore], decided_at: datetime) -> None:
        """Append the decisions (decision fields only: never events or attributes).

        ``decided_at`` is the decision time (the request's ``as_of``, else now), as batch scoring
        writes its runs' ``as_of``: the contact history reads it back as the time of the contact.
        """
        records = [
            {
                "decision_id": a.decision_id,
                "user_id": a.user_id,
                "as_of": a.feature_as_of or decided_at,
                "message_id": a.message.message_id,
                "channel": a.message.channel,
                "propensity": a.message.propensity,
                "expected_gain": a.message.expected_gain,
                "holdout": a.message.holdout,
                "churn_probability": a.churn_probability,
                "model_versions": a.model_versions,
            }
            for a in answers
        ]
        self.writer.write(records, decided_at)

    def explain(self, request: ExplainRequest, now: datetime | None = None) -> ExplainResponse:
        """Every feature's contribution for one user, largest push on the risk first."""
        now = now or datetime.now(UTC)
        rows = self._features([request], request.as_of, now)
        quarantined = rows.quarantined
        if rows.where[0] is None:
            return ExplainResponse(
                user_id=request.user_id,
                churn_probability=self.prior,
                risk_band=str(self.models.churn.bands(np.array([self.prior]))[0]),
                contributions=[],
                feature_as_of=None,
                model_versions=dict(self.models.versions),
                cold_start=True,
                quarantined_events=quarantined.get(request.user_id, {}),
            )
        source, pos = rows.where[0]
        row = rows.frames[source].iloc[[pos]]
        churn = self.models.churn
        probability = float(churn.churn_probability(row)[0])
        contributions = churn.contributions(row).iloc[0]
        texts = {r.get("feature"): r.get("text") for r in churn.reasons(row, top_k=None)[0]}
        descriptions = getattr(churn.explainer, "descriptions", None) or {}
        items = [
            Reason(
                feature=name,
                value=_scalar(row.iloc[0][name]),
                contribution=float(contributions[name]),
                text=str(texts.get(name) or descriptions.get(name) or name),
            )
            for name in churn.feature_names
            if name in contributions.index
        ]
        items.sort(key=lambda r: r.contribution, reverse=True)
        return ExplainResponse(
            user_id=request.user_id,
            churn_probability=probability,
            risk_band=str(churn.bands(np.array([probability]))[0]),
            contributions=items,
            feature_as_of=pd.Timestamp(row.iloc[0][s.AS_OF]).to_pydatetime(),
            model_versions=dict(self.models.versions),
            cold_start=False,
            quarantined_events=quarantined.get(request.user_id, {}),
        )


def _scalar(value: Any) -> float | str | None:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float):
        return float(value) if np.isfinite(float(value)) else None
    return None if pd.isna(value) else str(value)


# --- auth ---------------------------------------------------------------------------------
class ApiGuard:
    """ASGI middleware in front of the API routes: JSON bodies only, and the bearer token when set.

    With ``ENGAGE_API_TOKEN`` set, ``/score`` and ``/explain`` need ``Authorization: Bearer <token>``
    (401 otherwise). Health, readiness, metrics and the OpenAPI document stay open for probes.
    A non-JSON content type is a 415 here rather than a parser error deeper in the server.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], token: str | None = None) -> None:
        self.app = app
        self.token = (token if token is not None else os.environ.get(ENV_TOKEN, "")).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http" and scope.get("path") in PROTECTED_PATHS:
            headers = dict(scope.get("headers") or [])
            if self.token:
                scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
                if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                    await _reply(send, HTTPStatus.UNAUTHORIZED, "missing or invalid bearer token", auth=True)
                    return
            media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
            if media not in (b"application/json", b""):
                await _reply(send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
                return
        await self.app(scope, receive, send)


async def _reply(send: Send, status: HTTPStatus, error: str, *, auth: bool = False) -> None:
    headers = [(b"content-type", b"application/json")]
    if auth:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": int(status), "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"error": error}).encode()})


# --- the Bento service ----------------------------------------------------------------------
@bentoml.service(name=SERVICE_NAME, workers=1, traffic={"timeout": 60})
class EngageService:
    """Churn risk, reasons and next-best message per user; models and snapshot loaded once."""

    def __init__(self) -> None:
        config = service_config()
        source = os.environ.get(ENV_MODEL_SOURCE, "bento")
        exposures = os.environ.get(ENV_EXPOSURES) or None
        self.engine = ScoringEngine(config, service_models(config, source), exposures=exposures)
        # created here, not at import: the worker sets PROMETHEUS_MULTIPROC_DIR after importing us
        from prometheus_client import Counter

        self.decisions = Counter(
            "engage_decisions", "Decisions returned by /score", ["cold_start", "message_id"]
        )
        self.quarantined = Counter("engage_inline_events_quarantined", "Inline events set aside")

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the watcher and fsync the decision log."""
        self.engine.close()

    @bentoml.api(input_spec=ScoreRequest)
    def score(
        self, users: list[UserIn], as_of: datetime | None = None, explain: bool = True
    ) -> ScoreResponse:
        """Score up to ``serve.max_users_per_request`` users (413 beyond)."""
        request = ScoreRequest.model_construct(users=users, as_of=as_of, explain=explain)
        response = self.engine.score(request)
        self._count(response.users)
        return response

    def _count(self, answers: Sequence[UserScore]) -> None:
        """Metrics: decisions by (cold start, message) and inline events set aside, one inc per label."""
        decided: dict[tuple[bool, str], int] = {}
        for answer in answers:
            key = (answer.cold_start, answer.message.message_id)
            decided[key] = decided.get(key, 0) + 1
        for (cold, message_id), n in decided.items():
            self.decisions.labels(cold_start="true" if cold else "false", message_id=message_id).inc(n)
        quarantined = sum(sum(a.quarantined_events.values()) for a in answers)
        if quarantined:
            self.quarantined.inc(quarantined)

    @bentoml.api(input_spec=ExplainRequest)
    def explain(
        self,
        user_id: str,
        events: list[EventIn] | None = None,
        attributes: dict[str, AttributeValue] | None = None,
        as_of: datetime | None = None,
    ) -> ExplainResponse:
        """All feature contributions, with values and plain-word texts, for one user."""
        request = ExplainRequest.model_construct(
            user_id=user_id, events=events, attributes=attributes, as_of=as_of
        )
        return self.engine.explain(request)


EngageService.add_asgi_middleware(ApiGuard)


# --- build and serve (called by the CLI) -----------------------------------------------------
def _stored_models(name: str) -> list[Any]:
    from bentoml.exceptions import NotFound

    try:
        return list(bentoml.models.list(name))
    except NotFound:
        return []


def import_champions(config: EngageConfig) -> list[str]:
    """Copy the ``champion`` models of the MLflow registry into the Bento store; return their tags.

    A registered version already imported is reused, so re-building does not duplicate models.
    """
    tags: list[str] = []
    refs = registry_refs(config)
    if OFFERS not in {ref.role for ref in refs}:
        logger.warning("no champion for %s: the Bento scores without an offer model", roles(config)[OFFERS])
    for ref in refs:
        existing = [
            m
            for m in _stored_models(ref.name)
            if m.info.metadata.get("registered_version") == ref.version
            and m.info.metadata.get("tracking_uri") == config.tracking.uri
        ]
        if existing:
            tags.append(str(existing[0].tag))
            continue
        model = bentoml.mlflow.import_model(
            ref.name,
            ref.uri,
            labels={"alias": CHAMPION},
            metadata={"registered_version": ref.version, "tracking_uri": config.tracking.uri},
        )
        tags.append(str(model.tag))
    return tags


def build_bento(config: EngageConfig, build_ctx: str | Path = ".", bentofile: str = "bentofile.yaml") -> str:
    """Import the champion models, then build a Bento that packs them (no MLflow needed to serve).

    Build options come from ``bentofile.yaml``; the imported model tags are added to its models.
    """
    ctx = Path(build_ctx).resolve()
    options = yaml.safe_load((ctx / bentofile).read_text()) or {}
    tags = import_champions(config)
    service = options.pop("service")
    options.pop("models", None)
    bento = bentoml.bentos.build(service, models=tags, build_ctx=str(ctx), **options)
    return str(bento.tag)


def serve(
    config: EngageConfig,
    host: str | None = None,
    port: int | None = None,
    *,
    target: str = "engage.serving.service:EngageService",
    model_source: str = "bento",
    api_token: str | None = None,
) -> int:
    """Run ``bentoml serve`` in the foreground (loopback by default); return its exit code.

    ``target`` is the service import path or a built Bento tag. The config travels as a YAML file.
    """
    with tempfile.TemporaryDirectory(prefix="engage-serve-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        env = {**os.environ, ENV_CONFIG: str(config_path), ENV_MODEL_SOURCE: model_source}
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        # requests score few rows: one OpenMP thread per worker avoids spin contention on small hosts
        env.setdefault("OMP_NUM_THREADS", "1")
        if api_token:
            env[ENV_TOKEN] = api_token
        command = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            target,
            "--host",
            host or config.serve.host,
            "--port",
            str(port or config.serve.port),
        ]
        return subprocess.run(command, env=env, check=False).returncode
