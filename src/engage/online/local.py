"""The local online store: one host's files, as the service worked before Redis (the default).

Contacts come from :class:`~engage.serving.history.ContactHistory` (the decision log tailed, plus
this process's decisions), feedback idempotency from the feedback log
(:class:`~engage.scoring.feedback.FeedbackBook` remembers reports), features from the Parquet
snapshot. Check-and-record is atomic within one process (the engine holds each user while it
decides); other workers and replicas see a decision when their watcher reads the log, about a
second later, so several replicas need the Redis store for a strict cap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

import pandas as pd

from engage.serving.history import ContactHistory

__all__ = ["LocalStore"]


class _Contacts:
    def __init__(self, history: ContactHistory) -> None:
        self.history = history
        self.decisions: list[tuple[str, datetime, str, str]] = []

    def frame(
        self, user_ids: Sequence[str], decided_at: datetime, policy_time: pd.Timestamp
    ) -> pd.DataFrame | None:
        return self.history.frame(user_ids, decided_at, policy_time)

    def record(self, user_id: str, decided_at: datetime, message_id: str, decision_id: str) -> None:
        self.decisions.append((user_id, decided_at, message_id, decision_id))


class LocalStore:
    """:class:`~engage.online.base.OnlineStore` over this host's contact history (no feature rows)."""

    name = "local"
    features_loaded = False

    def __init__(self, history: ContactHistory) -> None:
        self.history = history

    @contextmanager
    def reserve(self, user_ids: Sequence[str]) -> Iterator[_Contacts]:
        contacts = _Contacts(self.history)
        yield contacts
        for user_id, decided_at, message_id, decision_id in contacts.decisions:
            self.history.record(user_id, decided_at, message_id, decision_id)

    def feature_rows(self, user_ids: Sequence[str], as_of: datetime | None) -> None:
        return None  # the engine reads the snapshot file itself

    def mark_sent(self, decision_id: str, sent_at: datetime | str) -> None:
        self.history.mark_sent(decision_id, sent_at)

    def claim_feedback(self, feedback_id: str, ttl_seconds: int) -> bool:
        return True  # the feedback book remembers this host's reports

    def decision_time(self, decision_id: str) -> int | None:
        return None  # the feedback desk's index of the log holds them

    def problem(self) -> str | None:
        return None

    def refresh(self) -> None:
        self.history.refresh()

    def close(self) -> None:
        return None
