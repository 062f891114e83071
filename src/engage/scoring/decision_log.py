"""The decision log: every message choice, with the probability it was chosen, for off-policy evaluation.

The one home of the log's layout, its writer and its readers. Day-partitioned JSON Lines:
``<dir>/date=YYYY-MM-DD/decisions-<pid>.jsonl``, one file per serving process so that writers never
interleave, and ``batch-<key>.jsonl``, one file per batch run. The day is the writer's clock when it
wrote (not a request's ``as_of``, which a client chooses: the folders grow by one a day, whatever
clients send); each line carries ``decided_at``, the policy's decision time, which is what readers
use.

A service write is whole lines in one ``os.write`` on a file opened for appending (once the call
returns the kernel holds it: a process crash loses nothing). A machine crash can at worst cut the
last line short: the writer seals such a line with a newline when it opens the file again. A batch
is all or nothing: written to a hidden temporary file, fsynced, then published under its key (a
digest of its decision ids) with a hard link that fails if the key exists, so a killed run leaves
no partial batch and a re-run of the same job (same ids) appends nothing. Readers skip and count a
cut line, and any line that is not a decision (not a JSON object, or without a text ``user_id``,
``message_id`` or ``decided_at``), instead of failing; they never read temporary files. Only
decision fields are written, never raw events or attributes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.atomic import temporary_path
from engage.hashing import stable_hash64

__all__ = [
    "DECISIONS",
    "DECISION_FIELDS",
    "REQUIRED_FIELDS",
    "BatchWrite",
    "Clock",
    "DecisionWriter",
    "LogLayout",
    "LogTail",
    "batch_key",
    "decision_id_hashes",
    "frame_lines",
    "log_files",
    "read_decisions",
    "utc_now",
]

Clock = Callable[[], datetime]
"""The wall clock, injected so tests control time: returns an aware UTC time."""


def utc_now() -> datetime:
    """The system clock in UTC (the default :data:`Clock`)."""
    return datetime.now(UTC)


DECISION_FIELDS: tuple[str, ...] = (
    "decision_id",
    "decided_at",
    "user_id",
    "as_of",
    "message_id",
    "channel",
    "propensity",
    "expected_gain",
    "holdout",
    "intended_message_id",
    "churn_probability",
    "model_versions",
    "send_at",
    "send_propensity",
)
"""What a log line holds. ``intended_message_id``: the message the policy picks before the holdout
(a holdout decision's counterfactual, else ``message_id``); lines written before it existed read
back with ``message_id`` there unless they are holdouts (then it is unknown: null). ``send_at``
(UTC) and ``send_propensity`` (the chosen hour's probability): null without a timing model; with
one, ``propensity`` is that of the (message, channel, send time) choice."""
# what every reader needs of a line (texts); a line without them is skipped and counted
REQUIRED_FIELDS: tuple[str, ...] = ("user_id", "message_id", "decided_at")
_BATCH_KEY_SALT = 0x6261746368  # "batch"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LogLayout:
    """One day-partitioned JSON Lines log: its files, the fields a line holds and those it needs.

    The decision log is :data:`DECISIONS`; the feedback log (``engage.scoring.feedback``) is another
    layout with the same writer and reader. ``stamp``: the field set to a write's time, if any.
    """

    prefix: str
    fields: tuple[str, ...]
    required: tuple[str, ...]
    stamp: str | None = None
    batch_prefix: str | None = None

    @property
    def globs(self) -> tuple[str, ...]:
        """Published files only: never the hidden temporaries of a batch."""
        prefixes = (self.prefix,) if self.batch_prefix is None else (self.prefix, self.batch_prefix)
        return tuple(f"date=*/{p}-*.jsonl" for p in prefixes)

    def accepts(self, record: Any) -> bool:
        """A JSON object whose required fields are texts."""
        return isinstance(record, dict) and all(isinstance(record.get(k), str) for k in self.required)


DECISIONS = LogLayout("decisions", DECISION_FIELDS, REQUIRED_FIELDS, stamp="decided_at", batch_prefix="batch")


def _day_folder(log_dir: Path, written_at: datetime) -> Path:
    return log_dir / f"date={written_at.astimezone(UTC):%Y-%m-%d}"


def log_files(log_dir: str | Path, layout: LogLayout = DECISIONS) -> list[Path]:
    """Every published log file under ``log_dir``, in date-folder then name order."""
    root = Path(log_dir)
    return sorted({path for pattern in layout.globs for path in root.glob(pattern)})


def batch_key(decision_ids: Iterable[str]) -> str:
    """The key of a batch: a digest of its decision ids, whatever their order (32 hex digits).

    A batch run's ids are fixed by its job (users, as_of, models, seed, run key), so re-running
    the job gives the same key and the log takes it once.
    """
    hashes = np.sort(decision_id_hashes(list(decision_ids)))
    return hashlib.sha256(hashes.tobytes()).hexdigest()[:32]


def decision_id_hashes(decision_ids: list[str]) -> np.ndarray:
    """The 64-bit hashes ``batch_key`` digests in sorted order (Spark computes them per executor)."""
    return stable_hash64(decision_ids, _BATCH_KEY_SALT) if decision_ids else np.zeros(0, np.uint64)


@dataclass(frozen=True)
class BatchWrite:
    """What :meth:`DecisionWriter.write_frame` did: the batch's file, and whether it was already there."""

    path: Path
    key: str
    rows: int
    already_logged: bool


def _jsonable(value: Any) -> Any:
    if value is pd.NaT:
        return None
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # no send time: null, not NaN (which JSON lacks)
    return value


def _json_default(value: Any) -> Any:
    value = _jsonable(value)
    return value if isinstance(value, str | int | float | bool) else str(value)


def _record_lines(
    records: Iterable[Mapping[str, Any]], stamp: str | None, layout: LogLayout = DECISIONS
) -> bytes:
    """One JSON line per record: the layout's fields only, its stamp field (``decided_at``) set."""
    lines = []
    for record in records:
        row = {key: _jsonable(record.get(key)) for key in layout.fields}
        if layout.stamp is not None:
            row[layout.stamp] = stamp
        lines.append(json.dumps(row, separators=(",", ":"), default=_json_default))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _shared_mapping(values: list[Any]) -> dict[str, Any] | None:
    """The one mapping every row carries (chunks carry equal, distinct dicts), else None."""
    distinct = list({id(v): v for v in values}.values())
    first = distinct[0] if distinct else None
    if isinstance(first, dict) and first and all(v == first for v in distinct):
        return first
    return None


def frame_lines(scores: pd.DataFrame, stamp: str) -> bytes:
    """``_record_lines`` for a scores table, built column-wise (a batch run logs millions of rows).

    The lines read back like the per-record ones (same fields and values); a model-versions
    column that is not one shared mapping takes the per-record path.
    """
    versions = scores["model_versions"].tolist() if "model_versions" in scores else [None]
    shared = _shared_mapping(versions)
    if shared is None:
        return _record_lines(scores.to_dict("records"), stamp)
    columns: dict[str, Any] = {}
    for key in DECISION_FIELDS:
        if key in ("decided_at", "model_versions"):
            continue
        if key not in scores:
            columns[key] = pl.Series(key, [None] * len(scores), dtype=pl.Null)
            continue
        column = scores[key]
        if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(column):
            codes, uniques = pd.factorize(column)
            texts = np.array([_jsonable(t) for t in uniques] + [None], dtype=object)
            columns[key] = pl.Series(key, texts[codes].tolist(), dtype=pl.String)
        else:
            values = pl.Series(key, column.to_numpy())
            columns[key] = values.fill_nan(None) if values.dtype.is_float() else values
    table = pl.DataFrame(columns).with_columns(
        pl.struct([pl.lit(str(v)).alias(str(k)) for k, v in shared.items()]).alias("model_versions"),
        pl.lit(stamp).alias("decided_at"),
    )
    return table.write_ndjson().encode()


class DecisionWriter:
    """Appends this process's decisions to the log (the service per request, a batch run at once).

    Lines go to the folder of the day on ``clock`` when they are written; the file of that day stays
    open for appending. :meth:`sync` fsyncs at most once per call instead of once per request (the
    service calls it from its watcher), :meth:`close` fsyncs and closes. Thread-safe. ``layout``
    names another log written the same way (the feedback log).
    """

    def __init__(self, log_dir: str | Path, *, clock: Clock = utc_now, layout: LogLayout = DECISIONS) -> None:
        self.log_dir = Path(log_dir)
        self.layout = layout
        self.file_name = f"{layout.prefix}-{os.getpid()}.jsonl"
        self.clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day: str | None = None
        self._dirty = False

    def __enter__(self) -> DecisionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, folder: Path) -> int:
        if self._fd is not None and folder.name == self._day:
            return self._fd
        self._close_fd()
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / self.file_name, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")  # seal a line cut short by an earlier crash
        self._fd, self._day = fd, folder.name
        return fd

    def _append(self, payload: bytes) -> Path:
        with self._lock:
            folder = _day_folder(self.log_dir, self.clock())
            if payload:
                os.write(self._open(folder), payload)
                self._dirty = True
        return folder / self.file_name

    def write(self, records: Iterable[Mapping[str, Any]], decided_at: datetime | None = None) -> Path:
        """Append records (the layout's fields only, ``decided_at`` set); return the file written to."""
        return self._append(
            _record_lines(records, None if decided_at is None else decided_at.isoformat(), self.layout)
        )

    def write_frame(self, scores: pd.DataFrame, decided_at: datetime) -> BatchWrite:
        """Publish a scores table's decisions as one batch file, all or nothing, at most once.

        The batch's key is :func:`batch_key` of its decision ids: when a file of that key is in the
        log already (any day), nothing is written and ``already_logged`` says so. Otherwise the
        lines go, column-wise, to a hidden temporary file in today's folder, are fsynced, and are
        published as ``batch-<key>.jsonl`` by a hard link that fails when another run published
        the key first. A kill before the link leaves only the temporary file, which readers never
        read and the next batch write removes once its writer is gone.
        """
        key = batch_key(scores["decision_id"].astype(str) if "decision_id" in scores else [])
        name = f"batch-{key}.jsonl"
        if not len(scores):
            return BatchWrite(_day_folder(self.log_dir, self.clock()) / name, key, 0, already_logged=False)
        existing = sorted(self.log_dir.glob(f"date=*/{name}"))
        if existing:
            return BatchWrite(existing[0], key, 0, already_logged=True)
        target = _day_folder(self.log_dir, self.clock()) / name
        payload = frame_lines(scores, decided_at.isoformat()) if len(scores) else b""
        published = _publish(payload, target)
        return BatchWrite(target, key, len(scores) if published else 0, already_logged=not published)

    def sync(self) -> None:
        """fsync what was written since the last sync."""
        with self._lock:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        self._fd, self._day, self._dirty = None, None, False

    def close(self) -> None:
        """fsync and close the open file (the writer reopens on the next write)."""
        with self._lock:
            self._close_fd()


def _publish(payload: bytes, target: Path) -> bool:
    """Write ``payload`` to a temporary file next to ``target``, fsync, then hard-link it as
    ``target`` unless that exists (False then). The folder is fsynced so the link survives a crash."""
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the user's umask decides
    try:
        try:
            view = memoryview(payload)
            for start in range(0, len(view), _CHUNK):
                os.write(fd, view[start : start + _CHUNK])
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        _fsync_folder(folder)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogTail:
    """Reads what was appended to the log since the last :meth:`read` (an offset per file).

    A line still being written is left for the next call; a line that does not parse (cut short by
    a crash) or is not a decision (see ``REQUIRED_FIELDS``; another ``layout``'s required fields)
    is counted in ``skipped``.
    ``skip_lines_with`` drops lines containing a byte marker before parsing them (the contact
    history skips `none` decisions so); ``skip_file`` leaves one file name out after the first
    read (a process's own file, whose decisions it already holds).
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        skip_file: str | None = None,
        skip_lines_with: bytes | None = None,
        layout: LogLayout = DECISIONS,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.layout = layout
        self.skip_file = skip_file
        self.skip_lines_with = skip_lines_with
        self.skipped = 0
        self._offsets: dict[Path, int] = {}
        self._first = True

    def read(self, *, final: bool = False) -> list[dict[str, Any]]:
        """The records appended since the last call, in file order.

        ``final`` also takes a last line without its newline (nothing is writing any more): one
        cut short by a crash is then counted in ``skipped``.
        """
        records: list[dict[str, Any]] = []
        for raw in self.lines(final=final):
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                record = None
            if self.layout.accepts(record):
                records.append(record)
            else:
                self.skipped += 1
        return records

    def lines(self, *, final: bool = False) -> list[bytes]:
        """The raw lines appended since the last call (blank and ``skip_lines_with`` lines left out),
        unparsed: for a reader that needs two fields of millions of lines (``read`` parses them)."""
        lines: list[bytes] = []
        first, self._first = self._first, False
        for path in log_files(self.log_dir, self.layout):
            if not first and path.name == self.skip_file:
                continue
            offset = self._offsets.get(path, 0)
            try:
                size = path.stat().st_size
                if size <= offset:
                    continue
                with path.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read(size - offset)
            except OSError:
                continue
            end = len(chunk) if final else chunk.rfind(b"\n") + 1
            lines += [
                raw
                for raw in chunk[:end].splitlines()
                if raw.strip() and not (self.skip_lines_with and self.skip_lines_with in raw)
            ]
            self._offsets[path] = offset + end
        return lines


def read_decisions(log_dir: str | Path) -> tuple[pd.DataFrame, int]:
    """All decisions under ``log_dir`` and the number of lines skipped (truncated, or not a decision).

    A line written before ``intended_message_id`` existed gets its ``message_id`` there unless it is
    a holdout (whose intended message was not recorded: null).
    """
    tail = LogTail(log_dir)
    rows = tail.read(final=True)
    frame = pd.DataFrame(rows, columns=list(DECISION_FIELDS))
    unknown = frame[s.INTENDED_MESSAGE_ID].isna() & ~frame["holdout"].eq(True)
    if unknown.any():
        frame[s.INTENDED_MESSAGE_ID] = frame[s.INTENDED_MESSAGE_ID].where(~unknown, frame[s.MESSAGE_ID])
    return frame, tail.skipped
