"""The decision log: every message choice, with the probability it was chosen, for off-policy evaluation.

Day-partitioned JSON Lines (``<dir>/date=YYYY-MM-DD/decisions-<pid>.jsonl``). Each batch of records
is one ``write`` on a file opened for appending and is fsynced, one file per process so that
workers never interleave. A crash can at worst leave a truncated last line; the reader skips such a
line and counts it instead of failing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

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
    "churn_probability",
    "model_versions",
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def append_decisions(
    records: Iterable[Mapping[str, Any]], log_dir: str | Path, *, decided_at: datetime
) -> Path:
    """Append records (only the decision fields; never raw events or attributes) to today's file."""
    folder = Path(log_dir) / f"date={decided_at:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"decisions-{os.getpid()}.jsonl"
    lines = []
    for record in records:
        row = {key: _jsonable(record.get(key)) for key in DECISION_FIELDS if key != "decided_at"}
        row["decided_at"] = decided_at.isoformat()
        lines.append(json.dumps(row, separators=(",", ":"), default=str))
    if not lines:
        return path
    return _append(path, ("\n".join(lines) + "\n").encode())


def append_decision_frame(scores: pd.DataFrame, log_dir: str | Path, *, decided_at: datetime) -> Path:
    """``append_decisions`` for a scores table, built column-wise (a batch run logs millions).

    The lines read back exactly like ``append_decisions``' (same fields and values); a model
    versions column that is not one shared mapping falls back to the per-record path.
    """
    versions = scores["model_versions"].tolist() if "model_versions" in scores else [None]
    distinct = list({id(v): v for v in versions}.values())  # one object per scored chunk, typically
    shared = distinct[0] if distinct and all(v == distinct[0] for v in distinct) else None
    if not len(scores) or not isinstance(shared, dict) or not shared:
        return append_decisions(scores.to_dict("records"), log_dir, decided_at=decided_at)
    folder = Path(log_dir) / f"date={decided_at:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"decisions-{os.getpid()}.jsonl"
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
            columns[key] = pl.Series(key, column.to_numpy())
    table = pl.DataFrame(columns).with_columns(
        pl.struct([pl.lit(str(v)).alias(str(k)) for k, v in shared.items()]).alias("model_versions"),
        pl.lit(decided_at.isoformat()).alias("decided_at"),
    )
    return _append(path, table.write_ndjson().encode())


def _append(path: Path, payload: bytes) -> Path:
    """One write of whole lines on a file opened for appending, fsynced."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            payload = b"\n" + payload  # seal a line truncated by an earlier crash
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_decisions(log_dir: str | Path) -> tuple[pd.DataFrame, int]:
    """All decisions under ``log_dir`` and the number of unreadable (truncated) lines skipped."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    for path in sorted(Path(log_dir).glob("date=*/decisions-*.jsonl")):
        with path.open("rb") as fh:
            for raw in fh:
                try:
                    rows.append(json.loads(raw))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    skipped += 1
    frame = (
        pd.DataFrame(rows, columns=list(DECISION_FIELDS)) if rows else pd.DataFrame(columns=DECISION_FIELDS)
    )
    return frame, skipped
