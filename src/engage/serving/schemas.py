"""Request and response models of the scoring API (``/score``, ``/explain``).

Plain pydantic, no BentoML import, so batch code and tests can share them. Every model forbids
unknown fields (a typo is a 4xx naming the field, not a silent default) and hides input values in
validation errors, so raw events and attributes never reach a log through an error message.
Types are not bent: a time is ISO 8601 text (a number is refused, not read as epoch seconds),
``explain`` a JSON boolean, every id and text has a maximum length, and a user appears once per
request. Limits that are configurable or need the server's clock (users and inline events per
request, how far ``as_of`` may lie from now) are checked by the engine, not here.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from engage import schemas as s

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_EVENTS_PER_USER",
    "AttributeValue",
    "ChosenMessage",
    "EventIn",
    "ExplainRequest",
    "ExplainResponse",
    "FeedbackEvent",
    "FeedbackRequest",
    "FeedbackResponse",
    "IsoTime",
    "Reason",
    "ScoreRequest",
    "ScoreResponse",
    "UserIn",
    "UserScore",
    "as_utc",
    "events_records",
    "signup_time",
]

MAX_EVENTS_PER_USER = 10_000
MAX_ATTRIBUTES = 64
ID_LENGTH = 128
TEXT_LENGTH = 4_096

ShortText = Annotated[str, Field(min_length=1, max_length=ID_LENGTH)]
ATTRIBUTE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
AttributeName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=ID_LENGTH,
        pattern=ATTRIBUTE_NAME,
        description="A column name: letters, digits and '_', not starting with a digit",
    ),
]
AttributeValue = Annotated[str, Field(max_length=TEXT_LENGTH)] | bool | int | float | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Timezone-aware UTC inside [1970, 2200); a naive time is read as UTC (the events contract).

    The range keeps every time representable by pandas and polars, so an odd date is a 4xx naming
    the field rather than an overflow deep inside feature code.
    """
    if value is None:
        return None
    try:
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError("time out of range") from exc
    if not EARLIEST <= aware < LATEST:
        raise ValueError(f"time must be in [{EARLIEST:%Y-%m-%d}, {LATEST:%Y-%m-%d})")
    return aware


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _iso_only(value: Any) -> Any:
    """Refuse what pydantic would read as epoch seconds: numbers, booleans and numeric text."""
    if isinstance(value, bool | int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an ISO 8601 time (text), not a number")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_only)]
"""A request time: ISO 8601 text (or a ``datetime`` in Python); numbers are refused, not coerced."""


def signup_time(value: AttributeValue) -> datetime:
    """The ``signup_ts`` attribute (ISO 8601 text) as a UTC time; a ValueError names the attribute."""
    try:
        parsed = datetime.fromisoformat(str(value)) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValueError(f"attribute '{s.SIGNUP_TS}' must be an ISO 8601 time")
    return as_utc(parsed)  # type: ignore[return-value]


class EventIn(_Strict):
    """One recent raw event of the user it is nested under (the events table contract, minus user_id)."""

    ts: IsoTime
    event_type: ShortText
    session_id: str | None = Field(None, max_length=ID_LENGTH)
    item_id: str | None = Field(None, max_length=ID_LENGTH)
    category: str | None = Field(None, max_length=ID_LENGTH)
    amount: float | None = Field(None, allow_inf_nan=False)
    channel: str | None = Field(None, max_length=ID_LENGTH)
    message_id: str | None = Field(None, max_length=ID_LENGTH)
    properties: str | None = Field(None, max_length=TEXT_LENGTH, description="JSON text")

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)  # type: ignore[return-value]


class UserIn(_Strict):
    """A user to score: by id (features from the snapshot) or with recent raw events."""

    user_id: ShortText
    events: list[EventIn] | None = Field(None, max_length=MAX_EVENTS_PER_USER)
    attributes: dict[AttributeName, AttributeValue] | None = Field(None, max_length=MAX_ATTRIBUTES)

    @field_validator("attributes", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """Names checked first, by position: a name is a key, so an error would otherwise echo it."""
        if isinstance(value, dict):
            for i, key in enumerate(value):
                if not (isinstance(key, str) and len(key) <= ID_LENGTH and _NAME.fullmatch(key)):
                    raise ValueError(
                        f"attribute {i + 1}: a name is letters, digits and '_', not starting with a "
                        f"digit, at most {ID_LENGTH} characters"
                    )
        return value

    @field_validator("attributes")
    @classmethod
    def _finite(cls, value: dict[str, AttributeValue] | None) -> dict[str, AttributeValue] | None:
        for key, item in (value or {}).items():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"attribute '{key}' must be a finite number")
            if key == s.USER_ID:
                raise ValueError("attributes must not contain 'user_id' (give it on the user)")
            if key == s.SIGNUP_TS and item is not None:
                signup_time(item)
        return value


class ScoreRequest(_Strict):
    """``POST /score`` body: each user at most once (one answer and one logged decision per user)."""

    users: list[UserIn] = Field(..., min_length=1)
    as_of: IsoTime | None = Field(
        None, description="Decision time (UTC); default: latest snapshot row, or now for inline events"
    )
    explain: StrictBool = Field(True, description="Include the top reasons (the costly part)")

    @field_validator("as_of")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)

    @field_validator("users")
    @classmethod
    def _distinct(cls, users: list[UserIn]) -> list[UserIn]:
        """A repeated user is refused, naming both positions (not the id: it may be personal data).

        Scoring it twice would log two decisions for one contact; answering once would break the
        one-answer-per-entry order a client maps answers by; its entries may also disagree.
        """
        first: dict[str, int] = {}
        for i, user in enumerate(users):
            j = first.setdefault(user.user_id, i)
            if j != i:
                raise ValueError(f"users[{i}].user_id: duplicate of users[{j}].user_id (one entry per user)")
        return users


class ExplainRequest(UserIn):
    """``POST /explain`` body: one user, plus an optional decision time."""

    as_of: IsoTime | None = None

    @field_validator("as_of")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)


class Reason(BaseModel):
    """One feature's push on the churn risk, in plain words."""

    feature: str
    value: float | str | None = None
    contribution: float
    text: str


class ChosenMessage(BaseModel):
    """The chosen arm (``none`` = send nothing) and the probability the policy gave it.

    Not the catalog's :class:`engage.offers.catalog.Message` (a message definition): this is one
    decision's pick, as the API returns it under ``message``.
    """

    message_id: str
    channel: str | None = None
    text: str | None = None
    expected_gain: float
    propensity: float
    holdout: bool
    intended_message_id: str = Field(
        description="The message the policy picks before the holdout: for a holdout user the one it "
        "would have sent, otherwise message_id"
    )
    withheld: str | None = Field(
        None,
        description="Why nothing is sent although the policy picked intended_message_id (e.g. "
        "'contact store unavailable'); null when message_id is the policy's choice",
    )
    send_at: datetime | None = Field(
        None,
        description="When to send (UTC): the user's best hour in the window; null without a timing model",
    )
    send_propensity: float | None = Field(
        None, description="Probability of this send hour (exploration); propensity is then the pair's"
    )
    send_reason: str | None = Field(
        None, description="Why this hour, e.g. 'usually active 19:00-22:00 on weekdays'"
    )


class UserScore(BaseModel):
    """One decision: risk, reasons, message, provenance."""

    user_id: str
    churn_probability: float
    risk_band: str
    reasons: list[Reason]
    message: ChosenMessage
    feature_as_of: datetime | None
    model_versions: dict[str, str]
    decision_id: str
    cold_start: bool
    quarantined_events: dict[str, int] = Field(
        default_factory=dict, description="Inline events set aside, by reason"
    )
    predicted_purchases: float | None = Field(
        None, description="Expected purchases in the next value_horizon_days (null: no purchase yet)"
    )
    predicted_revenue: float | None = Field(
        None, description="Expected revenue in the next value_horizon_days"
    )
    value_horizon_days: int | None = None
    expected_next_order_at: datetime | None = Field(
        None, description="Expected date of the next order (null when the user is more likely gone)"
    )


class ScoreResponse(BaseModel):
    """``POST /score`` answer, users in request order."""

    users: list[UserScore]


class ExplainResponse(BaseModel):
    """``POST /explain`` answer: every feature's contribution, largest push first."""

    user_id: str
    churn_probability: float
    risk_band: str
    contributions: list[Reason]
    feature_as_of: datetime | None
    model_versions: dict[str, str]
    cold_start: bool
    quarantined_events: dict[str, int] = Field(default_factory=dict)


FeedbackEvent = Literal["sent", "delivered", "opened", "clicked", "converted", "unsubscribed"]
"""``engage.offers.outcomes.FEEDBACK_EVENTS`` as a type (a test keeps the two equal)."""


class FeedbackRequest(_Strict):
    """``POST /feedback`` body (and one row of ``engage feedback import``): what happened to a decision.

    The same report twice counts once: its key is ``idempotency_key`` when given, else
    (decision_id, event, ts). How far ``ts`` may lie from the server's clock is checked by the engine.
    """

    decision_id: ShortText
    event: FeedbackEvent
    ts: IsoTime = Field(description="When it happened (ISO 8601; naive = UTC)")
    revenue: float | None = Field(None, ge=0, allow_inf_nan=False, description="Only with 'converted'")
    idempotency_key: str | None = Field(None, min_length=1, max_length=ID_LENGTH)

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)  # type: ignore[return-value]

    @model_validator(mode="after")
    def _revenue_only_when_converted(self) -> FeedbackRequest:
        if self.revenue is not None and self.event != "converted":
            raise ValueError("revenue: only a 'converted' report carries revenue")
        return self


class FeedbackResponse(BaseModel):
    """``POST /feedback`` answer: ``accepted``, ``duplicate`` (already reported) or ``aside`` (kept, with
    the reason: ``unknown_decision_id``, ``before_decision``)."""

    feedback_id: str
    status: Literal["accepted", "duplicate", "aside"]
    reason: str | None = None


def events_records(user: UserIn) -> list[dict[str, Any]]:
    """The user's inline events as rows of the events table (user_id filled in)."""
    return [{s.USER_ID: user.user_id, **event.model_dump()} for event in user.events or []]
