"""The materialized feature snapshot the service answers known users from, reloaded when it changes."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from engage import schemas as s

__all__ = ["FeatureSnapshot", "SnapshotSource"]

logger = logging.getLogger(__name__)


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
