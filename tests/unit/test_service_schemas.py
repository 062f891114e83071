"""Request models of the scoring API: what is accepted, what is rejected, and what errors show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from engage import schemas as s
from engage.serving.schemas import (
    MAX_EVENTS_PER_USER,
    ExplainRequest,
    ScoreRequest,
    UserIn,
    events_records,
    signup_time,
)

SENTINEL = "SENTINEL-RAW-991"


def locs(exc: ValidationError) -> list[tuple[str | int, ...]]:
    return [tuple(e["loc"]) for e in exc.errors()]


def test_minimal_request_takes_defaults() -> None:
    request = ScoreRequest.model_validate({"users": [{"user_id": "u1"}]})
    assert request.explain is True and request.as_of is None
    assert request.users[0].events is None and request.users[0].attributes is None


def test_times_become_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    request = ScoreRequest.model_validate(
        {
            "users": [{"user_id": "u1", "events": [{"ts": "2024-03-01T10:00:00", "event_type": "purchase"}]}],
            "as_of": datetime(2024, 3, 2, 12, tzinfo=plus_two),
        }
    )
    assert request.as_of == datetime(2024, 3, 2, 10, tzinfo=UTC) and request.as_of.tzinfo == UTC
    assert request.users[0].events[0].ts == datetime(2024, 3, 1, 10, tzinfo=UTC)  # type: ignore[index]


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({}, ("users",)),
        ({"users": []}, ("users",)),
        ({"users": [{"user_id": ""}]}, ("users", 0, "user_id")),
        ({"users": [{"userid": "u1"}]}, ("users", 0, "userid")),
        ({"users": [{"user_id": "u1"}], "as_of": "1900-01-01T00:00:00Z"}, ("as_of",)),
        (
            {"users": [{"user_id": "u1", "events": [{"ts": "soon", "event_type": "x"}]}]},
            ("users", 0, "events", 0, "ts"),
        ),
        (
            {
                "users": [
                    {"user_id": "u1", "events": [{"ts": "2024-01-01", "event_type": "x", "amount": "nan"}]}
                ]
            },
            ("users", 0, "events", 0, "amount"),
        ),
        ({"users": [{"user_id": "u1", "attributes": {"score": float("inf")}}]}, ("users", 0, "attributes")),
        ({"users": [{"user_id": "u1", "attributes": {"user_id": "u2"}}]}, ("users", 0, "attributes")),
        ({"users": [{"user_id": "u1"}], "explain": "perhaps"}, ("explain",)),
        # attribute names become columns: a NUL once panicked polars' pandas export and hung a worker
        ({"users": [{"user_id": "u1", "attributes": {"pl\u0000an": "a"}}]}, ("users", 0, "attributes")),
        ({"users": [{"user_id": "u1", "attributes": {"2plan": "a"}}]}, ("users", 0, "attributes")),
        ({"users": [{"user_id": "u1", "attributes": {"my plan": "a"}}]}, ("users", 0, "attributes")),
        ({"users": [{"user_id": "u1", "attributes": {"plan": "\udb5e"}}]}, ("users", 0, "attributes")),
        ({"users": [{"user_id": "u1", "attributes": {"plan": "x" * 4097}}]}, ("users", 0, "attributes")),
    ],
)
def test_bad_input_names_the_field(payload: dict, loc: tuple[str | int, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate(payload)
    assert any(found[: len(loc)] == loc for found in locs(info.value)), locs(info.value)


def test_errors_never_echo_raw_input() -> None:
    payload = {
        "users": [
            {
                "user_id": "u1",
                "events": [{"ts": SENTINEL, "event_type": "x", "properties": 3}],
                "attributes": {"plan": [SENTINEL]},
            }
        ]
    }
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate(payload)
    assert len(info.value.errors()) >= 2
    assert SENTINEL not in str(info.value)


def test_events_per_user_are_bounded() -> None:
    event = {"ts": "2024-01-01T00:00:00Z", "event_type": "page_view"}
    UserIn.model_validate({"user_id": "u1", "events": [event] * MAX_EVENTS_PER_USER})
    with pytest.raises(ValidationError):
        UserIn.model_validate({"user_id": "u1", "events": [event] * (MAX_EVENTS_PER_USER + 1)})


def test_events_records_follow_the_events_contract() -> None:
    user = UserIn.model_validate(
        {"user_id": "u9", "events": [{"ts": "2024-01-01T00:00:00Z", "event_type": "purchase", "amount": 5}]}
    )
    (row,) = events_records(user)
    assert row[s.USER_ID] == "u9" and row["amount"] == 5.0
    assert set(row) == set(s.EVENT_COLUMNS)


def test_explain_request_is_one_flat_user() -> None:
    request = ExplainRequest.model_validate({"user_id": "u1", "as_of": "2024-05-01"})
    assert request.user_id == "u1" and request.as_of == datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(ValidationError):
        ExplainRequest.model_validate({"users": [{"user_id": "u1"}]})


def test_signup_time_attribute_must_be_a_time() -> None:
    user = UserIn.model_validate({"user_id": "u1", "attributes": {"signup_ts": "2024-01-02T03:04:05+01:00"}})
    assert signup_time(user.attributes["signup_ts"]) == datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC)  # type: ignore[index]
    with pytest.raises(ValidationError) as info:
        UserIn.model_validate({"user_id": "u1", "attributes": {"signup_ts": "last spring"}})
    assert locs(info.value) == [("attributes",)] and "signup_ts" in str(info.value)
