"""The feedback log: what happened to each decision (sent, delivered, opened, clicked, converted,
unsubscribed), each report kept once.

``POST /feedback`` and ``engage feedback import`` both end here. A report names a ``decision_id``,
an ``event`` (``engage.offers.outcomes.FEEDBACK_EVENTS``), its ``ts`` and, for ``converted``, an
optional ``revenue``. Its ``feedback_id`` is the caller's idempotency key when given, else a digest
of (decision_id, event, ts): the same report twice is one record (``duplicate`` the second time).
A report for a decision the log does not hold (or dated before it) is kept aside with its reason,
never dropped; one whose ``ts`` lies outside [now - ``max_age``, now + ``max_future``] of the
server's clock is refused (``rejected``). Same layout as the decision log, its own folder:
``<dir>/date=YYYY-MM-DD/feedback-<pid>.jsonl`` (accepted) and ``aside-<pid>.jsonl`` (with
``reason``); the day is the writer's clock. Plain Python: no HTTP here.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from engage.offers.outcomes import FEEDBACK_EVENTS
from engage.scoring.decision_log import Clock, DecisionWriter, LogLayout, LogTail, utc_now

__all__ = [
    "ASIDE",
    "FEEDBACK",
    "FEEDBACK_FIELDS",
    "DecisionIndex",
    "FeedbackBook",
    "FeedbackItem",
    "Verdict",
    "feedback_key",
    "read_feedback",
]

FEEDBACK_FIELDS: tuple[str, ...] = ("feedback_id", "decision_id", "event", "ts", "revenue", "received_at")
FEEDBACK = LogLayout("feedback", FEEDBACK_FIELDS, ("feedback_id", "decision_id", "event", "ts"))
ASIDE = LogLayout("aside", (*FEEDBACK_FIELDS, "reason"), ("feedback_id", "decision_id", "event", "ts"))
"""Reports kept aside: ``reason`` is ``unknown_decision_id`` or ``before_decision``."""

UNKNOWN_DECISION = "unknown_decision_id"
BEFORE_DECISION = "before_decision"
PRUNE_EVERY_S = 600.0

Status = Literal["accepted", "duplicate", "aside", "rejected"]


@dataclass(frozen=True)
class FeedbackItem:
    """One validated report (types checked by the API model): ``ts`` aware UTC."""

    decision_id: str
    event: str
    ts: datetime
    revenue: float | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Verdict:
    """What became of a report: its id, status and, when aside or rejected, the reason."""

    feedback_id: str
    status: Status
    reason: str | None = None


def feedback_key(item: FeedbackItem) -> str:
    """The report's id (32 hex digits): of the caller's idempotency key, else of (decision, event, ts)."""
    text = (
        f"key|{item.idempotency_key}"
        if item.idempotency_key
        else f"{item.decision_id}|{item.event}|{pd.Timestamp(item.ts).tz_convert('UTC').isoformat()}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
# a decision line's id and time, as the writers put them (JSON text without escapes)
_DECISION_ID = re.compile(rb'"decision_id":"([^"\\]+)"')
_DECIDED_AT = re.compile(rb'"decided_at":"([^"\\]+)"')


def _micros(value: datetime | str) -> int:
    """Microseconds since the epoch of an ISO 8601 text or a datetime (naive = UTC)."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return ((when if when.tzinfo else when.replace(tzinfo=UTC)) - _EPOCH) // _MICRO


class DecisionIndex:
    """Every decision of the log decided within ``max_age`` of the clock: id -> decision time.

    Read from the decision log (other processes' files and batch files, tailed on :meth:`refresh`)
    and told this process's own decisions (:meth:`add`). Memory is about 150 bytes per decision.
    """

    def __init__(
        self, log_dir: str | Path, *, max_age: timedelta, own_file: str | None = None, clock: Clock = utc_now
    ) -> None:
        self.max_age = max_age // _MICRO
        self.clock = clock
        self._tail = LogTail(log_dir, skip_file=own_file)
        self._known: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pruned = time.monotonic()
        self.refresh()

    def add(self, decision_ids: Iterable[str], decided_at: datetime) -> None:
        stamp = _micros(decided_at)
        with self._lock:
            self._known.update(dict.fromkeys(decision_ids, stamp))

    def refresh(self) -> None:
        """Read the decisions appended to the log since the last call; prune old ones now and then.

        Two fields of each line, found without parsing it (the log holds millions); a line
        without a readable id and time is counted in ``skipped``.
        """
        rows = []
        for raw in self._tail.lines():
            found_id, found_at = _DECISION_ID.search(raw), _DECIDED_AT.search(raw)
            try:
                if found_id is None or found_at is None:
                    raise ValueError("not a decision")
                rows.append((found_id[1].decode(), _micros(found_at[1].decode())))
            except (ValueError, UnicodeDecodeError, OverflowError):
                self._tail.skipped += 1
        with self._lock:
            self._known.update(rows)
            if time.monotonic() - self._pruned > PRUNE_EVERY_S:
                oldest = _micros(self.clock()) - self.max_age
                self._known = {k: v for k, v in self._known.items() if v >= oldest}
                self._pruned = time.monotonic()

    def decided_at(self, decision_id: str) -> int | None:
        """The decision's time (microseconds since the epoch, UTC), or None when the index lacks it."""
        with self._lock:
            return self._known.get(decision_id)

    def __len__(self) -> int:
        return len(self._known)


class FeedbackBook:
    """Takes reports: validates them against the clock and the decisions, keeps each once, logs them.

    Remembers the ids of the reports dated within ``max_age`` (its own and, on :meth:`refresh`,
    other processes'), so a repeat is a ``duplicate`` wherever it was first reported. Thread-safe.
    """

    def __init__(
        self,
        feedback_dir: str | Path,
        decisions: DecisionIndex,
        *,
        max_age: timedelta,
        max_future: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self.decisions = decisions
        self.max_age, self.max_future = max_age, max_future
        self.clock = clock
        self.writers = {
            layout.prefix: DecisionWriter(feedback_dir, clock=clock, layout=layout)
            for layout in (FEEDBACK, ASIDE)
        }
        self._tails = [
            LogTail(feedback_dir, layout=layout, skip_file=self.writers[layout.prefix].file_name)
            for layout in (FEEDBACK, ASIDE)
        ]
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pruned = time.monotonic()
        self.initial = self.refresh()

    def time_problem(self, ts: datetime, now: datetime) -> str | None:
        """Why ``ts`` cannot be a report's time (outside [now - max_age, now + max_future]), else None."""
        if now - self.max_age <= ts <= now + self.max_future:
            return None
        minutes = self.max_future.total_seconds() / 60
        return (
            f"ts: must lie within {self.max_age.days} days before and {minutes:g} minutes after the "
            f"server's clock ({now:%Y-%m-%dT%H:%M:%SZ})"
        )

    def submit(self, items: Sequence[FeedbackItem]) -> list[Verdict]:
        """Judge and log the reports, in order (a repeat inside ``items`` is a duplicate too)."""
        now = self.clock()
        received = now.isoformat()
        verdicts: list[Verdict] = []
        lines: dict[str, list[dict[str, Any]]] = {FEEDBACK.prefix: [], ASIDE.prefix: []}
        refreshed = False
        with self._lock:
            for item in items:
                fid = feedback_key(item)
                problem = self.time_problem(item.ts, now)
                if problem is not None:
                    verdicts.append(Verdict(fid, "rejected", problem))
                    continue
                if fid in self._seen:
                    verdicts.append(Verdict(fid, "duplicate"))
                    continue
                decided = self.decisions.decided_at(item.decision_id)
                if decided is None and not refreshed:  # a batch published a moment ago
                    self.decisions.refresh()
                    refreshed = True
                    decided = self.decisions.decided_at(item.decision_id)
                reason = None
                if decided is None:
                    reason = UNKNOWN_DECISION
                elif _micros(item.ts) < decided - self.max_future // _MICRO:
                    reason = BEFORE_DECISION
                record = {
                    "feedback_id": fid,
                    "decision_id": item.decision_id,
                    "event": item.event,
                    "ts": pd.Timestamp(item.ts).tz_convert("UTC").isoformat(),
                    "revenue": item.revenue,
                    "received_at": received,
                    "reason": reason,
                }
                lines[ASIDE.prefix if reason else FEEDBACK.prefix].append(record)
                self._seen[fid] = _micros(item.ts)
                verdicts.append(Verdict(fid, "aside" if reason else "accepted", reason))
            for prefix, records in lines.items():
                if records:
                    self.writers[prefix].write(records)
        return verdicts

    def refresh(self) -> list[dict[str, Any]]:
        """Remember the reports other processes logged since the last call; return their accepted ones."""
        accepted = self._tails[0].read()
        aside = self._tails[1].read()
        with self._lock:
            for record in (*accepted, *aside):
                try:
                    self._seen[record["feedback_id"]] = _micros(record["ts"])
                except (ValueError, TypeError, OverflowError):
                    continue
            if time.monotonic() - self._pruned > PRUNE_EVERY_S:
                oldest = _micros(self.clock() - self.max_age)
                self._seen = {k: v for k, v in self._seen.items() if v >= oldest}
                self._pruned = time.monotonic()
        return [r for r in accepted if r.get("event") in FEEDBACK_EVENTS]

    def sync(self) -> None:
        for writer in self.writers.values():
            writer.sync()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def read_feedback(feedback_dir: str | Path, *, aside: bool = False) -> tuple[pd.DataFrame, int]:
    """Every accepted report (``aside=True``: those kept aside, with ``reason``) and the lines skipped."""
    layout = ASIDE if aside else FEEDBACK
    tail = LogTail(feedback_dir, layout=layout)
    return pd.DataFrame(tail.read(final=True), columns=list(layout.fields)), tail.skipped
