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

import pandas as pd

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
    payload = ("\n".join(lines) + "\n").encode()
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
