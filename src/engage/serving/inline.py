"""Feature rows of a request: users given with raw events go through the training/batch feature code.

Inline rows are then conformed to the snapshot's columns and dtypes, so one model input reaches the
scoring path whichever way a user came in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import EngageConfig
from engage.serving.schemas import UserIn, events_records, signup_time

__all__ = ["INLINE", "SNAPSHOT", "FeatureRows", "conform", "inline_features"]

SNAPSHOT = "snapshot"
INLINE = "inline"


@dataclass
class FeatureRows:
    """Feature frames by source and, per requested user, (source, row) or None for a cold start.

    Snapshot and inline rows are scored separately so snapshot rows keep the exact dtypes batch
    scoring used (same answer), whatever the inline rows looked like.
    """

    frames: dict[str, pd.DataFrame]
    where: list[tuple[str, int] | None]
    quarantined: dict[str, dict[str, int]]


def inline_features(
    users: Sequence[UserIn], as_of: datetime, config: EngageConfig
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Features of users given with raw events, via the same feature code as training and batch.

    Events are validated like a file (quarantine, never silent drops); quarantined counts per user
    and reason come back instead of failing the request.
    """
    from engage.events import validate_events
    from engage.features import build_features

    records = [row for user in users for row in events_records(user)]
    raw = pl.DataFrame(records, schema_overrides={s.TS: s.TS_DTYPE}, infer_schema_length=None)
    result = validate_events(raw, source="request", reference_time=as_of)
    quarantined: dict[str, dict[str, int]] = {}
    if result.quarantine.height:
        counts = result.quarantine.group_by([s.USER_ID, s.REASON]).len()
        for user_id, reason, n in counts.iter_rows():
            quarantined.setdefault(str(user_id), {})[str(reason)] = int(n)
    attributes: list[dict[str, Any]] = [
        {s.USER_ID: u.user_id, **(u.attributes or {})} for u in users if u.attributes
    ]
    for row in attributes:
        if row.get(s.SIGNUP_TS) is not None:
            row[s.SIGNUP_TS] = signup_time(row[s.SIGNUP_TS])
    users_frame = pl.DataFrame(attributes, infer_schema_length=None, strict=False) if attributes else None
    if users_frame is not None and s.SIGNUP_TS in users_frame.columns:
        users_frame = users_frame.with_columns(pl.col(s.SIGNUP_TS).cast(s.TS_DTYPE))
    features = build_features(result.accepted, [as_of], config=config.features, users=users_frame)
    frame = features.to_pandas() if hasattr(features, "to_pandas") else pd.DataFrame(features)
    if not frame.empty:
        frame[s.USER_ID] = frame[s.USER_ID].astype(str)
        frame[s.AS_OF] = pd.to_datetime(frame[s.AS_OF], utc=True)
    return frame, quarantined


def conform(frame: pd.DataFrame, reference: dict[str, Any]) -> pd.DataFrame:
    """Inline feature rows with every reference column, in the reference dtype.

    Attributes a caller left out are missing values (a missing consent flag is False: no consent
    known, no message on that channel); values of the wrong type become missing instead of
    reaching the model as an object column.
    """
    out = frame.copy()
    for name, dtype in reference.items():
        if name in (s.USER_ID, s.AS_OF):
            continue
        column = out[name] if name in out.columns else pd.Series([None] * len(out), index=out.index)
        if pd.api.types.is_bool_dtype(dtype):
            out[name] = np.array([value is True or value == 1 for value in column], dtype=bool)
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            out[name] = pd.to_datetime(column, utc=True, errors="coerce")
        elif pd.api.types.is_numeric_dtype(dtype):
            out[name] = pd.to_numeric(column, errors="coerce").astype(float)
        else:
            out[name] = [None if pd.isna(v) else str(v) for v in column.astype(object)]
    return out
