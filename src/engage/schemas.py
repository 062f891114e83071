"""Table contracts shared by every layer: column names, dtypes and known vocabularies.

Everything above this module refers to columns through these names so that a contract
change is a one-line edit here. See DESIGN.md, "Table contracts".
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pandas as pd
import polars as pl

UTC: Final = "UTC"
TS_DTYPE: Final = pl.Datetime("us", UTC)


def utc_values(stamps: Any) -> np.ndarray:
    """Timestamps as naive UTC ``datetime64`` values (naive inputs are UTC); NaT stays NaT.

    A column that already holds UTC timestamps is read as it is, without a conversion pass.
    """
    if not (isinstance(stamps, pd.Series) and isinstance(stamps.dtype, pd.DatetimeTZDtype)):
        stamps = pd.to_datetime(pd.Series(stamps), utc=True)
    elif str(stamps.dtype.tz) != UTC:
        stamps = stamps.dt.tz_convert(UTC)
    return stamps.values


# --- events -----------------------------------------------------------------------------
USER_ID: Final = "user_id"
TS: Final = "ts"
EVENT_TYPE: Final = "event_type"

EVENT_REQUIRED: Final[tuple[str, ...]] = (USER_ID, TS, EVENT_TYPE)
EVENT_OPTIONAL: Final[dict[str, pl.DataType]] = {
    "session_id": pl.String(),
    "item_id": pl.String(),
    "category": pl.String(),
    "amount": pl.Float64(),
    "channel": pl.String(),
    "message_id": pl.String(),
    "properties": pl.String(),
}
EVENT_SCHEMA: Final[dict[str, pl.DataType]] = {
    USER_ID: pl.String(),
    TS: TS_DTYPE,
    EVENT_TYPE: pl.String(),
    **EVENT_OPTIONAL,
}
EVENT_COLUMNS: Final[tuple[str, ...]] = tuple(EVENT_SCHEMA)

# Event types the simulator emits and the standard features know by name. Others are kept.
KNOWN_EVENT_TYPES: Final[tuple[str, ...]] = (
    "session_start",
    "page_view",
    "product_view",
    "add_to_cart",
    "purchase",
    "refund",
    "email_open",
    "email_click",
    "push_open",
)

# --- quarantine -------------------------------------------------------------------------
REASON: Final = "reason"
REASON_MISSING_USER: Final = "missing_user_id"
REASON_BAD_TS: Final = "unparseable_timestamp"
REASON_FUTURE_TS: Final = "timestamp_after_reference"
REASON_BAD_AMOUNT: Final = "non_numeric_amount"
REASON_DUPLICATE: Final = "duplicate_row"
REASON_MISSING_EVENT_TYPE: Final = "missing_event_type"
REASON_GUEST: Final = "guest"
REASON_MALFORMED_LINE: Final = "malformed_line"  # a JSON Lines line that is not one JSON object
QUARANTINE_REASONS: Final[tuple[str, ...]] = (
    REASON_MISSING_USER,
    REASON_MISSING_EVENT_TYPE,
    REASON_BAD_TS,
    REASON_FUTURE_TS,
    REASON_BAD_AMOUNT,
    REASON_DUPLICATE,
    REASON_GUEST,
    REASON_MALFORMED_LINE,
)

# --- users ------------------------------------------------------------------------------
SIGNUP_TS: Final = "signup_ts"
CHANNELS: Final[tuple[str, ...]] = ("email", "push", "in_app", "web_popup")


TIMEZONE: Final = "timezone"
"""Optional users-table column: the user's IANA time zone. Absent, empty or unknown: the zone is
inferred from activity, else UTC, and the send time says which (``engage.timing.zones``)."""


def consent_column(channel: str) -> str:
    """Name of the users-table flag saying the user accepts messages on `channel`."""
    return f"consent_{channel}"


# --- exposures (campaign log) -----------------------------------------------------------
MESSAGE_ID: Final = "message_id"
CHANNEL: Final = "channel"
PROPENSITY: Final = "propensity"
INTENDED_MESSAGE_ID: Final = "intended_message_id"
"""The message the policy picks before the holdout: a holdout row's counterfactual message, else
``message_id`` itself (every decision carries it, so lift per message groups on one column)."""
CONTROL_ARM: Final = "none"
EXPOSURE_COLUMNS: Final[tuple[str, ...]] = (USER_ID, TS, MESSAGE_ID, CHANNEL, PROPENSITY)
CONVERTED: Final = "converted"
REVENUE: Final = "revenue"

# --- features / labels / scores ---------------------------------------------------------
AS_OF: Final = "as_of"
LABEL: Final = "churned"
EXPECTED_GAIN: Final = "expected_gain"
SEND_AT: Final = "send_at"
SEND_PROPENSITY: Final = "send_propensity"
SEND_REASON: Final = "send_reason"
SCORE_TYPES: Final[dict[str, str]] = {
    USER_ID: "string",
    AS_OF: "timestamp",
    "churn_probability": "double",
    "risk_band": "string",
    "reasons": "string",  # JSON text in files; a list of reasons in memory and in the API
    MESSAGE_ID: "string",
    CHANNEL: "string",
    "message_text": "string",
    EXPECTED_GAIN: "double",
    PROPENSITY: "double",
    "holdout": "boolean",
    INTENDED_MESSAGE_ID: "string",
    "cold_start": "boolean",
    "model_versions": "string",  # JSON text in files; a mapping in memory and in the API
    "decision_id": "string",
    "predicted_purchases": "double",  # over the next value_horizon_days (BTYD); null: no purchase yet
    "predicted_revenue": "double",  # predicted_purchases x expected spend per purchase (Gamma-Gamma)
    "value_horizon_days": "int",
    "expected_next_order_at": "timestamp",  # null when the user is more likely gone than active
    "send_at": "timestamp",  # UTC; null without a timing model or when nothing is sent
    "send_propensity": "double",  # P(this send hour); propensity is then P(message) x this
    "send_reason": "string",  # why this hour ("usually active 19:00-22:00 on weekdays")
}
"""The one list of score fields (batch files, ``/score`` answers, Spark), with their stored types."""
SCORE_FIELDS: Final[tuple[str, ...]] = tuple(SCORE_TYPES)
