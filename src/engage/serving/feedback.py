"""``/feedback`` in plain Python: reports matched to the service's decisions, sends counted for caps.

:class:`FeedbackDesk` holds the index of known decisions (the log, tailed, plus this process's own)
and the :class:`~engage.scoring.feedback.FeedbackBook`, and tells the contact history which
decisions were sent (``policy.cap_counts: sent``): this process's reports at once, other processes'
and ``engage feedback import``'s when the watcher reads the feedback log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from engage.config import EngageConfig
from engage.scoring.decision_log import Clock, utc_now
from engage.scoring.feedback import DecisionIndex, FeedbackBook, FeedbackItem
from engage.serving.history import ContactHistory
from engage.serving.schemas import FeedbackRequest, FeedbackResponse

__all__ = ["FeedbackDesk", "FeedbackRefused"]


class FeedbackRefused(ValueError):
    """A report whose ``ts`` lies too far from the server's clock (the service answers 422)."""


class FeedbackDesk:
    """The service's side of the feedback log (thread-safe; :meth:`refresh` from the watcher)."""

    def __init__(
        self, config: EngageConfig, history: ContactHistory, *, own_file: str, clock: Clock = utc_now
    ) -> None:
        serve = config.serve
        max_age = timedelta(days=serve.feedback_max_age_days)
        self.history = history
        self.decisions = DecisionIndex(
            serve.decision_log_dir, max_age=max_age, own_file=own_file, clock=clock
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
        (verdict,) = self.book.submit([item])
        if verdict.status == "rejected":
            raise FeedbackRefused(verdict.reason or "feedback refused")
        if verdict.status == "accepted" and item.event == "sent":
            self.history.mark_sent(item.decision_id, item.ts)
        return FeedbackResponse(feedback_id=verdict.feedback_id, status=verdict.status, reason=verdict.reason)

    def refresh(self) -> None:
        """Decisions and reports other processes logged since the last call."""
        self.decisions.refresh()
        self._mark_sent(self.book.refresh())

    def _mark_sent(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            if record.get("event") == "sent":
                self.history.mark_sent(str(record["decision_id"]), str(record["ts"]))

    def sync(self) -> None:
        self.book.sync()

    def close(self) -> None:
        self.book.close()
