"""``/feedback`` in plain Python: reports matched to the service's decisions, sends counted for caps.

:class:`FeedbackDesk` holds the index of known decisions (the log, tailed, plus this process's own)
and the :class:`~engage.scoring.feedback.FeedbackBook`, and tells the online store which decisions
were sent (``policy.cap_counts: sent``): this process's reports at once, other processes' and
``engage feedback import``'s when the watcher reads the feedback log. With a shared store (Redis) a
report is taken once across replicas (the store's ``claim_feedback``) and may name a decision
another replica made (the store's ``decision_time``); while the store is unreachable, this
process's memory of the logs judges alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from engage.config import EngageConfig
from engage.online.base import OnlineStore, StoreUnavailable
from engage.scoring.decision_log import Clock, utc_now
from engage.scoring.feedback import DecisionIndex, FeedbackBook, FeedbackItem, feedback_key
from engage.serving.schemas import FeedbackRequest, FeedbackResponse

__all__ = ["FeedbackDesk", "FeedbackRefused"]

logger = logging.getLogger(__name__)


class FeedbackRefused(ValueError):
    """A report whose ``ts`` lies too far from the server's clock (the service answers 422)."""


class _SharedIndex(DecisionIndex):
    """The log's decisions, then the store's (decisions other replicas made and logged elsewhere)."""

    def __init__(self, store: OnlineStore, log_dir: str, **kwargs: Any) -> None:
        self.store = store
        super().__init__(log_dir, **kwargs)

    def decided_at(self, decision_id: str) -> int | None:
        known = super().decided_at(decision_id)
        if known is not None:
            return known
        try:
            return self.store.decision_time(decision_id)
        except StoreUnavailable:
            return None


class FeedbackDesk:
    """The service's side of the feedback log (thread-safe; :meth:`refresh` from the watcher)."""

    def __init__(
        self, config: EngageConfig, store: OnlineStore, *, own_file: str, clock: Clock = utc_now
    ) -> None:
        serve = config.serve
        max_age = timedelta(days=serve.feedback_max_age_days)
        self.store = store
        self.ttl_seconds = int(max_age.total_seconds())
        self.clock = clock
        self.decisions = _SharedIndex(
            store, serve.decision_log_dir, max_age=max_age, own_file=own_file, clock=clock
        )
        self.book = FeedbackBook(
            serve.feedback_log_dir,
            self.decisions,
            max_age=max_age,
            max_future=timedelta(minutes=serve.max_future_minutes),
            clock=clock,
        )
        self._mark_sent(self.book.initial)

    def decided(self, decision_ids: Sequence[str], decided_at: datetime) -> None:
        """This process's decisions (its own log file is not re-read)."""
        self.decisions.add(decision_ids, decided_at)

    def submit(self, request: FeedbackRequest) -> FeedbackResponse:
        """Judge, keep once and log one report; :class:`FeedbackRefused` for a ``ts`` out of bounds."""
        item = FeedbackItem(
            decision_id=request.decision_id,
            event=request.event,
            ts=request.ts,
            revenue=request.revenue,
            idempotency_key=request.idempotency_key,
        )
        problem = self.book.time_problem(item.ts, self.clock())
        if problem is not None:
            raise FeedbackRefused(problem)
        if not self._claim(feedback_key(item)):
            return FeedbackResponse(feedback_id=feedback_key(item), status="duplicate", reason=None)
        (verdict,) = self.book.submit([item])
        if verdict.status == "rejected":
            raise FeedbackRefused(verdict.reason or "feedback refused")
        if verdict.status == "accepted" and item.event == "sent":
            self._mark_one(item.decision_id, item.ts)
        return FeedbackResponse(feedback_id=verdict.feedback_id, status=verdict.status, reason=verdict.reason)

    def refresh(self) -> None:
        """Decisions and reports other processes logged since the last call."""
        self.decisions.refresh()
        self._mark_sent(self.book.refresh())

    def _claim(self, feedback_id: str) -> bool:
        """First report of this id across replicas (always True for the local store or while down)."""
        try:
            return self.store.claim_feedback(feedback_id, self.ttl_seconds)
        except StoreUnavailable:
            return True

    def _mark_one(self, decision_id: str, ts: datetime | str) -> None:
        try:
            self.store.mark_sent(decision_id, ts)
        except StoreUnavailable:
            logger.warning("sent report for %s not counted: online store unavailable", decision_id)

    def _mark_sent(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            if record.get("event") == "sent":
                self._mark_one(str(record["decision_id"]), str(record["ts"]))

    def sync(self) -> None:
        self.book.sync()

    def close(self) -> None:
        self.book.close()
