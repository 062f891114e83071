"""What the service needs from an online store, whichever backend holds it (local files or Redis).

The store keeps each user's recent contacts (for the catalog's cooldowns and the contact cap), the
decisions feedback may name, feedback idempotency keys and, optionally, the latest feature row per
user. :class:`OnlineStore` is the protocol the engine talks to; ``engage.online.local`` (one host,
today's files) and ``engage.online.redis`` (shared by workers and replicas) implement it.

The cap itself is not here: the store hands the policy (``engage.offers.policy``) the users'
contacts through :func:`contacts_frame`, and :meth:`OnlineStore.reserve` makes reading them and
recording the new decisions one atomic step, so every backend enforces the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

import numpy as np
import pandas as pd

from engage import schemas as s

__all__ = [
    "BUSY",
    "UNAVAILABLE",
    "ContactConflict",
    "Contacts",
    "OnlineStore",
    "StoreUnavailable",
    "StoredRows",
    "contacts_frame",
    "ns",
]

UNAVAILABLE = "contact store unavailable"
"""Why a decision sends nothing while the store cannot be reached (the answer's ``withheld``)."""
BUSY = "contact store busy"
"""Why a decision sends nothing after its users' contacts kept changing under it (other replicas)."""

Entry = tuple[int, str]
"""One contact: decision time in ns since the epoch (UTC) and the message id."""


class StoreUnavailable(RuntimeError):
    """The online store did not answer in time (down, unreachable or slower than its timeout)."""


class ContactConflict(RuntimeError):
    """Another process recorded a contact for one of the users between the read and the record."""


def ns(moment: datetime | pd.Timestamp | str) -> int:
    """A time as ns since the epoch (naive = UTC)."""
    return int(pd.Timestamp(moment).as_unit("ns").value)


def contacts_frame(
    entries: Mapping[str, Iterable[Entry]], decided_at: datetime, policy_time: pd.Timestamp
) -> pd.DataFrame | None:
    """The users' contacts as the policy's ``history`` (user_id, ts, message_id); None when none.

    Scoring judges cooldowns and caps at ``policy_time`` (the feature rows' as_of), while the
    decision is made at ``decided_at`` (the request's as_of, else now). Each contact is moved by
    the difference, so its age at ``policy_time`` is its true age at ``decided_at``.
    """
    shift = ns(decided_at) - ns(policy_time)
    rows = [
        (user_id, stamp - shift, message_id) for user_id, got in entries.items() for stamp, message_id in got
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


class StoredRows:
    """Feature rows read from the store: a frame of the rows found and each user's row (or None)."""

    def __init__(self, frame: pd.DataFrame, where: list[int | None]) -> None:
        self.frame = frame
        self.where = where

    def without(self, drop: np.ndarray) -> StoredRows:
        gone = set(drop.tolist())
        keep = [i for i in range(len(self.frame)) if i not in gone]
        new_pos = {old: new for new, old in enumerate(keep)}
        return StoredRows(
            self.frame.iloc[keep].reset_index(drop=True),
            [None if w is None or w in gone else new_pos[w] for w in self.where],
        )


class Contacts(Protocol):
    """The reserved users' contacts, read once; decisions recorded here land when the block ends."""

    def frame(
        self, user_ids: Sequence[str], decided_at: datetime, policy_time: pd.Timestamp
    ) -> pd.DataFrame | None:
        """The users' contacts as the policy's history (see :func:`contacts_frame`)."""
        ...

    def record(self, user_id: str, decided_at: datetime, message_id: str, decision_id: str) -> None:
        """A new decision of a reserved user (``none`` is remembered for feedback, never a contact)."""
        ...


class OnlineStore(Protocol):
    """The service's shared state: contacts, decisions feedback may name, feedback keys, features."""

    name: str
    features_loaded: bool
    """Whether the store holds feature rows (``engage online load``) for ``/score`` to read."""

    def feature_rows(self, user_ids: Sequence[str], as_of: datetime | None) -> StoredRows | None:
        """The users' latest feature rows at or before ``as_of``; None when the store holds none."""
        ...

    def reserve(self, user_ids: Sequence[str]) -> AbstractContextManager[Contacts]:
        """Read the users' contacts and record their new decisions as one step.

        Raises :class:`ContactConflict` on leaving the block when another process recorded a
        contact for one of them in between (nothing recorded: read again and decide again), and
        :class:`StoreUnavailable` when the store does not answer in time.
        """
        ...

    def mark_sent(self, decision_id: str, sent_at: datetime | str) -> None:
        """A ``sent`` report: with ``policy.cap_counts: sent`` the decision becomes a contact."""
        ...

    def claim_feedback(self, feedback_id: str, ttl_seconds: int) -> bool:
        """True the first time ``feedback_id`` is claimed in ``ttl_seconds``, False for a repeat."""
        ...

    def decision_time(self, decision_id: str) -> int | None:
        """A decision's time in microseconds since the epoch, when the store knows it."""
        ...

    def problem(self) -> str | None:
        """Why the store cannot be used now (for ``/readyz``), or None."""
        ...

    def refresh(self) -> None:
        """Off the request path (the engine's watcher): read what changed, check the connection."""
        ...

    def close(self) -> None: ...
