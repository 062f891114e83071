"""Request models of the scoring API: what is accepted, what is rejected, and what errors show."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from engage import schemas as s
from engage.serving.schemas import (
    ID_LENGTH,
    MAX_EVENTS_PER_USER,
    TEXT_LENGTH,
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


# --- types are not bent, users are distinct, ids are bounded ----------------------------------
def _parsed(model: type[ScoreRequest] | type[ExplainRequest], payload: dict, mode: str) -> object:
    """Validate as the service does (JSON text) or in Python (``model_validate``)."""
    if mode == "json":
        return model.model_validate_json(json.dumps(payload))
    return model.model_validate(payload)


ONE = [{"user_id": "u1"}]


@pytest.mark.parametrize("mode", ["json", "python"])
@pytest.mark.parametrize(
    ("model", "payload", "loc"),
    [
        (ScoreRequest, {"users": ONE, "explain": "yes"}, ("explain",)),
        (ScoreRequest, {"users": ONE, "explain": "true"}, ("explain",)),
        (ScoreRequest, {"users": ONE, "explain": 1}, ("explain",)),
        (ScoreRequest, {"users": ONE, "as_of": 1_717_200_000}, ("as_of",)),
        (ScoreRequest, {"users": ONE, "as_of": 1.7172e9}, ("as_of",)),
        (ScoreRequest, {"users": ONE, "as_of": "1717200000"}, ("as_of",)),
        (ScoreRequest, {"users": ONE, "as_of": " -1.5e3 "}, ("as_of",)),
        (ScoreRequest, {"users": ONE, "as_of": True}, ("as_of",)),
        (
            ScoreRequest,
            {"users": [{"user_id": "u1", "events": [{"ts": 1_717_200_000, "event_type": "x"}]}]},
            ("users", 0, "events", 0, "ts"),
        ),
        (ExplainRequest, {"user_id": "u1", "as_of": 1_717_200_000}, ("as_of",)),
    ],
)
def test_types_are_refused_not_coerced(model: type, payload: dict, loc: tuple, mode: str) -> None:
    """``"explain": "yes"`` was read as true and a number as epoch seconds; both are refused now."""
    with pytest.raises(ValidationError) as info:
        _parsed(model, payload, mode)
    assert loc in locs(info.value)


@pytest.mark.parametrize("mode", ["json", "python"])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T10:00:00Z", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T12:00:00+02:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01 10:00:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01", datetime(2024, 3, 1, tzinfo=UTC)),
    ],
)
def test_iso_8601_times_and_booleans_still_work(text: str, expected: datetime, mode: str) -> None:
    payload = {"users": [{"user_id": "u1", "events": [{"ts": text, "event_type": "x"}]}], "as_of": text}
    request = _parsed(ScoreRequest, {**payload, "explain": False}, mode)
    assert isinstance(request, ScoreRequest) and request.explain is False
    assert request.as_of == expected and request.users[0].events[0].ts == expected  # type: ignore[index]


def test_a_user_twice_in_one_request_is_refused_naming_both_places() -> None:
    """One entry per user: otherwise one contact is scored and logged twice (or its entries disagree)."""
    users = [{"user_id": SENTINEL}, {"user_id": "u2"}, {"user_id": SENTINEL, "events": []}]
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate_json(json.dumps({"users": users}))
    assert locs(info.value) == [("users",)]
    assert "users[2].user_id: duplicate of users[0].user_id" in str(info.value)
    assert SENTINEL not in str(info.value)
    assert len(ScoreRequest.model_validate({"users": users[:2]}).users) == 2


EVENT = {"ts": "2024-01-01T00:00:00Z", "event_type": "page_view"}
ID_FIELDS = ["event_type", "session_id", "item_id", "category", "channel", "message_id"]


def _with(where: str, value: str) -> dict:
    """A request with ``value`` in one id or text field."""
    if where == "user_id":
        return {"users": [{"user_id": value}]}
    if where == "attribute value":
        return {"users": [{"user_id": "u1", "attributes": {"plan": value}}]}
    if where == "attribute name":
        return {"users": [{"user_id": "u1", "attributes": {value: "a"}}]}
    return {"users": [{"user_id": "u1", "events": [{**EVENT, where: value}]}]}


@pytest.mark.parametrize(
    ("where", "limit"),
    [
        ("user_id", ID_LENGTH),
        *[(name, ID_LENGTH) for name in ID_FIELDS],
        ("properties", TEXT_LENGTH),
        ("attribute value", TEXT_LENGTH),
        ("attribute name", ID_LENGTH),
    ],
)
def test_every_id_and_text_has_a_maximum_length(where: str, limit: int) -> None:
    """A 1M-character id is refused wherever it is put, and the limit itself is accepted."""
    ScoreRequest.model_validate_json(json.dumps(_with(where, "a" * limit)))
    for length in (limit + 1, 1_000_000):
        with pytest.raises(ValidationError) as info:
            ScoreRequest.model_validate_json(json.dumps(_with(where, "a" * length)))
        assert len(str(info.value)) < 2_000, "the error does not echo the value"
    with pytest.raises(ValidationError):
        ExplainRequest.model_validate({"user_id": "a" * 1_000_000})
