"""Audiences: the decisions of a scores table that a platform sends, one group per message or channel.

Pure: a scores table in, one frame per audience out, with the columns an e-mail or push platform
imports. Holdout users and the ``none`` choice get nothing, so they are left out, but counted: the
counts go into the export's manifest next to the rows of each audience, and rows in = exported +
holdout + none. A row an importer could not use (no user, message, channel, text or decision id,
or a decision id seen twice: it is the idempotency key downstream) stops the split naming the row
and the column.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Final, get_args

import polars as pl

from engage import schemas as s
from engage.audiences import By

__all__ = [
    "AUDIENCE_COLUMNS",
    "DECISION_ID",
    "HOLDOUT",
    "MESSAGE_TEXT",
    "SEND_AT",
    "AudienceError",
    "Audiences",
    "audience_stem",
    "split_audiences",
]

BY_COLUMN: Final[dict[str, str]] = {"message": s.MESSAGE_ID, "channel": s.CHANNEL}

MESSAGE_TEXT: Final = "message_text"
DECISION_ID: Final = "decision_id"
HOLDOUT: Final = "holdout"
SEND_AT: Final = "send_at"
"""The send time, exported when the scores carry it (DESIGN's score contract names it; the batch
scores do not carry it yet)."""
AUDIENCE_COLUMNS: Final[tuple[str, ...]] = (
    s.USER_ID,
    s.MESSAGE_ID,
    s.CHANNEL,
    MESSAGE_TEXT,
    SEND_AT,
    DECISION_ID,
)
"""The exported columns, in file order (``send_at`` only when present)."""
REQUIRED: Final[tuple[str, ...]] = (s.USER_ID, s.MESSAGE_ID, s.CHANNEL, MESSAGE_TEXT, DECISION_ID, HOLDOUT)
_ROW = "__row"


class AudienceError(ValueError):
    """A scores table that cannot be exported, with the row and column named."""


@dataclass(frozen=True)
class Audiences:
    """The exported decisions, one frame per audience (sorted by name; rows in user_id order)."""

    by: By
    frames: dict[str, pl.DataFrame]
    rows_in: int
    holdout: int
    """Holdout users: kept from every message so lift can be measured; never exported."""
    none: int
    """Users whose chosen message is ``none`` (sending nothing was the best choice)."""
    columns: tuple[str, ...]
    send_at: bool
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def exported(self) -> int:
        return sum(self.counts.values())


def split_audiences(scores: pl.DataFrame, by: By, *, source: str = "scores") -> Audiences:
    """Split ``scores`` (the columns of ``engage.schemas.SCORE_TYPES``) into audiences by message or
    channel; holdout rows and ``none`` rows are counted and left out. ``source`` names the table in
    errors."""
    if by not in get_args(By):
        raise AudienceError(f"{source}: cannot split by {by!r}; use one of {', '.join(get_args(By))}")
    missing = [c for c in REQUIRED if c not in scores.columns]
    if missing:
        raise AudienceError(
            f"{source}: missing column(s) {', '.join(missing)} (an `engage score` output has them); "
            f"columns found: {', '.join(scores.columns) or 'none'}"
        )
    frame = scores.with_row_index(_ROW, offset=1).with_columns(_flag(scores, HOLDOUT, source))
    held = frame[HOLDOUT]
    control = (~held) & (frame[s.MESSAGE_ID] == s.CONTROL_ARM).fill_null(False)
    kept = frame.filter(~held & ~control)
    columns = tuple(c for c in AUDIENCE_COLUMNS if c in scores.columns)
    _check_rows(kept, columns, source)
    key = BY_COLUMN[by]
    kept = kept.select(columns).sort(s.USER_ID, DECISION_ID)
    frames = {
        str(name[0]): part
        for name, part in sorted(kept.partition_by(key, as_dict=True, maintain_order=True).items())
    }
    return Audiences(
        by=by,
        frames=frames,
        rows_in=scores.height,
        holdout=int(held.sum()),
        none=int(control.sum()),
        columns=columns,
        send_at=SEND_AT in columns,
        counts={name: part.height for name, part in frames.items()},
    )


def _flag(scores: pl.DataFrame, name: str, source: str) -> pl.Series:
    """A boolean column (a CSV's true/false text too); a value that is neither stops the split."""
    column = scores[name]
    if column.dtype == pl.Boolean:
        return column.fill_null(False)
    text = column.cast(pl.String).str.to_lowercase().str.strip_chars()
    words = {"true": True, "1": True, "false": False, "0": False, "": False}
    values = text.replace_strict(words, default=None, return_dtype=pl.Boolean)
    bad = values.is_null() & text.is_not_null()
    if bad.any():
        row = int(bad.arg_true()[0])
        raise AudienceError(
            f"{source}: row {row + 1}, column {name}: {column[row]!r} is not true/false "
            f"({int(bad.sum()):,} such rows)"
        )
    return values.fill_null(False).alias(name)


def _check_rows(kept: pl.DataFrame, columns: tuple[str, ...], source: str) -> None:
    """Every exported row has its ids, channel and text; decision ids are unique."""
    for name in (c for c in columns if c != SEND_AT):
        empty = kept[name].is_null() | (kept[name].cast(pl.String).str.strip_chars() == "")
        if empty.any():
            row = int(kept[_ROW].filter(empty)[0])
            raise AudienceError(
                f"{source}: row {row}, column {name}: empty in a decision to export "
                f"({int(empty.sum()):,} such rows); every sent decision needs it"
            )
    twice = kept[DECISION_ID].is_duplicated()
    if twice.any():
        rows = kept[_ROW].filter(twice).head(2).to_list()
        raise AudienceError(
            f"{source}: rows {rows[0]} and {rows[1]}, column {DECISION_ID}: the same decision id twice "
            f"({int(twice.sum()):,} rows); it is the idempotency key, one per decision"
        )


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def audience_stem(by: By, name: str) -> str:
    """The file name stem of an audience, ``message-<id>``: safe characters only; a name that had to
    change gets a short hash of the original, so two audiences never share a file."""
    slug = _UNSAFE.sub("_", name).strip("._") or "audience"
    if slug != name:
        slug = f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return f"{by}-{slug}"
