"""Each user's recent messages, so the catalog's cooldowns and the contact cap hold across requests."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

import pandas as pd

from engage import schemas as s
from engage.online.base import contacts_frame
from engage.scoring.decision_log import Clock, LogTail, utc_now

__all__ = ["NONE_MARK", "ContactHistory", "logged_contacts"]

logger = logging.getLogger(__name__)

# how a decision-log line that sent nothing reads: the log tail skips those lines unparsed
NONE_MARK = f'"{s.MESSAGE_ID}":"{s.CONTROL_ARM}"'


def logged_contacts(tail: LogTail) -> list[tuple[str | None, str, int, str]]:
    """The messages (not ``none``) of the decision-log lines ``tail`` reads next, as (decision_id,
    user_id, decision time in ns, message_id); a line without a readable time counts in ``skipped``."""
    rows: list[tuple[str | None, str, int, str]] = []
    for record in tail.read():  # decisions only: user_id, message_id, decided_at are texts
        try:  # ISO 8601 only: pandas would also read "now" or "" (as NaT)
            stamp = pd.Timestamp(datetime.fromisoformat(record["decided_at"])).as_unit("ns").value
        except (ValueError, TypeError, OverflowError):
            tail.skipped += 1  # a line without a readable decision time: skipped, not fatal
            continue
        if record[s.MESSAGE_ID] != s.CONTROL_ARM:
            decision_id = record.get("decision_id")
            decision_id = decision_id if isinstance(decision_id, str) else None
            rows.append((decision_id, record[s.USER_ID], stamp, record[s.MESSAGE_ID]))
    return rows


class ContactHistory:
    """Recent messages per user, for the catalog's cooldowns and the 7-day contact cap.

    Sources: the decision log (batch runs append there with ``decided_at`` = their ``as_of``; other
    workers append their own files), an optional exposures table (``ENGAGE_EXPOSURES``: user_id,
    ts, message_id), and the decisions this process made (:meth:`record`). The time of a contact
    is the decision time; ``none`` never counts. Per user, entries older than ``retention`` before
    the user's newest contact are dropped: no cooldown or cap looks further back.

    The server's clock bounds what is kept: a contact dated more than ``future_tolerance`` after
    ``clock()`` is ignored and counted in ``future`` (a far-future entry would otherwise become the
    user's newest and prune every real contact, lifting the cap for good), so pruning never runs
    ahead of the server's clock.

    ``count="sent"`` (``policy.cap_counts``): a decision of the log or of this process counts only
    once a ``sent`` report names it (:meth:`mark_sent`, from ``/feedback`` or the feedback log),
    still at its decision time; until then it waits, for ``retention``, among the pending ones.
    A report read before its decision is kept (as long) and applied when the decision arrives.
    The exposures table counts in both modes: it lists messages that went out.
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        retention: pd.Timedelta,
        exposures: str | Path | None = None,
        own_file: str | None = None,
        future_tolerance: pd.Timedelta = pd.Timedelta(minutes=5),
        clock: Clock = utc_now,
        count: Literal["decisions", "sent"] = "decisions",
        prune_seconds: float = 300.0,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.exposures = Path(exposures) if exposures else None
        self.retention = int(pd.Timedelta(retention).value)
        self.tolerance = int(pd.Timedelta(future_tolerance).value)
        self.clock = clock
        self.future = 0
        self._lock = threading.Lock()
        self._log: dict[str, list[tuple[int, str]]] = {}
        self._table: dict[str, list[tuple[int, str]]] = {}
        self.count_sent = count == "sent"
        self._pending: dict[str, tuple[str, int, str]] = {}  # decision_id -> (user, time, message)
        self._sent_early: dict[str, int] = {}  # sent reports whose decision is not read yet -> report time
        self.prune_seconds = prune_seconds
        self._newest = -(2**63)  # the newest contact time held (ns)
        self._pruned = -float("inf")  # the first refresh prunes what start-up read from old logs
        self._tail = LogTail(self.log_dir, skip_file=own_file, skip_lines_with=NONE_MARK.encode())
        self._table_mtime: float | None = None
        self.refresh()

    def _latest(self) -> int:
        """The latest contact time kept (ns): the server's clock plus the tolerance."""
        return pd.Timestamp(self.clock()).as_unit("ns").value + self.tolerance

    def _add(
        self,
        store: dict[str, list[tuple[int, str]]],
        user_id: str,
        stamp: int,
        message_id: str,
        latest: int,
    ) -> None:
        if stamp > latest:
            self.future += 1
            return
        entries = store.setdefault(user_id, [])
        entry = (stamp, message_id)
        if entry in entries:
            return
        entries.append(entry)
        self._newest = max(self._newest, stamp)
        newest = max(e[0] for e in entries)
        if entries[0][0] < newest - self.retention:
            entries[:] = [e for e in entries if e[0] >= newest - self.retention]

    def _decided(
        self, decision_id: str | None, user_id: str, stamp: int, message_id: str, latest: int
    ) -> None:
        """A decision read or made (lock held): a contact now, or pending until reported sent."""
        reported = decision_id is not None and self._sent_early.pop(decision_id, None) is not None
        if not self.count_sent or reported:
            self._add(self._log, user_id, stamp, message_id, latest)
        elif decision_id is not None:
            self._pending[decision_id] = (user_id, stamp, message_id)

    def record(
        self, user_id: str, decided_at: datetime, message_id: str, decision_id: str | None = None
    ) -> None:
        """A decision of this process (also appended to its own log file, which is not re-read)."""
        if message_id == s.CONTROL_ARM:
            return
        stamp = pd.Timestamp(decided_at).as_unit("ns").value
        with self._lock:
            self._decided(decision_id, user_id, stamp, message_id, self._latest())

    def mark_sent(self, decision_id: str, sent_at: datetime | str) -> None:
        """A ``sent`` report: with ``count="sent"`` the decision becomes a contact (no-op otherwise)."""
        if not self.count_sent:
            return
        with self._lock:
            pending = self._pending.pop(decision_id, None)
            if pending is not None:
                self._add(self._log, *pending, self._latest())
            else:
                when = datetime.fromisoformat(sent_at) if isinstance(sent_at, str) else sent_at
                self._sent_early[decision_id] = pd.Timestamp(when).as_unit("ns").value

    @property
    def pending(self) -> int:
        """Decisions waiting for a ``sent`` report (``count="sent"``)."""
        return len(self._pending)

    @property
    def users(self) -> int:
        """Users with a contact held from the decision log or this process."""
        return len(self._log)

    def _prune(self) -> None:
        """Every ``prune_seconds``, forget what no cooldown or cap can reach any more: users whose
        newest contact is older than ``retention`` before the newest contact held (never later than
        the server's clock plus the tolerance, so live serving prunes against now while a replayed
        world keeps its own dates), and waiting decisions and early ``sent`` reports older than
        ``retention`` before the clock. Without
        it every user id ever contacted (a caller can send millions of distinct ones) stays in memory
        for the life of the process."""
        if time.monotonic() - self._pruned < self.prune_seconds:
            return
        oldest = self._newest - self.retention
        waiting = pd.Timestamp(self.clock()).as_unit("ns").value - self.retention
        with self._lock:
            self._log = {u: e for u, e in self._log.items() if max(x[0] for x in e) >= oldest}
            self._pending = {k: v for k, v in self._pending.items() if v[1] >= waiting}
            self._sent_early = {k: v for k, v in self._sent_early.items() if v >= waiting}
            self._pruned = time.monotonic()

    def refresh(self) -> None:
        """Read what other processes appended to the log since the last call, and a changed table."""
        self._tail_log()
        self._load_table()
        self._prune()

    def _tail_log(self) -> None:
        rows = logged_contacts(self._tail)
        latest = self._latest()
        with self._lock:
            for decision_id, user_id, stamp, message_id in rows:
                self._decided(decision_id, user_id, stamp, message_id, latest)

    @property
    def skipped(self) -> int:
        """Log lines that could not be read (cut short by a crash, or not a decision)."""
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
        latest = self._latest()
        for user_id, stamp, message_id in zip(
            frame[s.USER_ID].astype(str), stamps, frame[s.MESSAGE_ID].astype(str), strict=True
        ):
            self._add(table, user_id, int(stamp), message_id, latest)
        with self._lock:
            self._table = table
            self._table_mtime = mtime
        logger.info("exposure history loaded: %d users", len(table))

    def entries(self, user_id: str) -> list[tuple[int, str]]:
        """The user's known contacts as (decision time in ns, message id), log first, then table."""
        with self._lock:
            return [*self._log.get(user_id, ()), *self._table.get(user_id, ())]

    def frame(
        self, user_ids: Sequence[str], decided_at: datetime, policy_time: pd.Timestamp
    ) -> pd.DataFrame | None:
        """The users' contacts on the policy's clock (:func:`engage.online.base.contacts_frame`)."""
        return contacts_frame({u: self.entries(u) for u in dict.fromkeys(user_ids)}, decided_at, policy_time)
