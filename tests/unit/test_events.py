"""The events layer: bad inputs land in the quarantine with the right reason, files fail clearly."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage import schemas as s
from engage.events import (
    EventsFileError,
    read_events,
    validate_events,
    write_validation,
)

REF = datetime(2025, 1, 1, tzinfo=UTC)
GOOD = {"user_id": "u1", "ts": "2024-03-01T12:00:00Z", "event_type": "purchase", "amount": "9.5"}


def _one(**changes: str | None) -> pl.DataFrame:
    row = {**GOOD, **changes}
    return pl.DataFrame({k: [v] for k, v in row.items()}, schema={k: pl.String for k in row})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"user_id": None}, s.REASON_MISSING_USER),
        ({"user_id": "   "}, s.REASON_MISSING_USER),
        ({"event_type": ""}, s.REASON_MISSING_EVENT_TYPE),
        ({"ts": None}, s.REASON_BAD_TS),
        ({"ts": "yesterday"}, s.REASON_BAD_TS),
        ({"ts": "2024-13-45"}, s.REASON_BAD_TS),
        ({"ts": "2026-06-01T00:00:00Z"}, s.REASON_FUTURE_TS),
        ({"amount": "ten"}, s.REASON_BAD_AMOUNT),
        ({"amount": "inf"}, s.REASON_BAD_AMOUNT),
    ],
)
def test_each_bad_row_is_quarantined_with_its_reason(changes: dict[str, str | None], reason: str) -> None:
    raw = pl.concat([_one(), _one(**changes)])
    result = validate_events(raw, source="t", reference_time=REF)
    assert result.accepted.height == 1
    assert result.quarantine[s.REASON].to_list() == [reason]
    assert result.quarantine["row"].to_list() == [2]


def test_exact_duplicates_keep_one_copy_and_count_the_rest() -> None:
    raw = pl.concat([_one(), _one(), _one(), _one(amount="1")])
    result = validate_events(raw, source="t")
    assert result.accepted.height == 2
    assert result.quarantine[s.REASON].to_list() == [s.REASON_DUPLICATE] * 2
    assert result.summary().quarantined == {s.REASON_DUPLICATE: 2}


def test_timezones_are_normalized_to_utc() -> None:
    raw = pl.concat([_one(ts="2024-03-01T14:00:00+02:00"), _one(ts="2024-03-01 12:00:00", amount="1")])
    result = validate_events(raw, source="t")
    assert result.accepted[s.TS].dtype == s.TS_DTYPE
    assert result.accepted[s.TS].to_list() == [datetime(2024, 3, 1, 12, tzinfo=UTC)] * 2


def test_unknown_event_types_are_kept_and_counted() -> None:
    raw = pl.concat([_one(), _one(event_type="survey_answer")])
    summary = validate_events(raw, source="t").summary()
    assert summary.accepted == 2
    assert summary.unknown_event_types == {"survey_answer": 1}


def test_extra_columns_are_folded_into_properties_not_lost() -> None:
    raw = _one().with_columns(pl.lit("DE").alias("country"))
    accepted = validate_events(raw, source="t").accepted
    assert json.loads(accepted["properties"][0]) == {"country": "DE"}


def test_accepted_rows_follow_the_contract_exactly() -> None:
    accepted = validate_events(pl.concat([_one(), _one(user_id="u2")]), source="t").accepted
    assert dict(accepted.schema) == s.EVENT_SCHEMA


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("events.csv", "user,ts,event_type\nu1,2024-01-01,purchase\n", "missing required column 'user_id'"),
        ("events.csv", "user_id,event_type\nu1,purchase\n", "missing required column 'ts'"),
        ("events.jsonl", "{not json\n", "cannot be read as jsonl"),
        ("events.xlsx", "whatever", "unknown file format"),
    ],
)
def test_unreadable_files_raise_one_clear_error(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(EventsFileError) as info:
        read_events(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(EventsFileError, match="file not found"):
        read_events(tmp_path / "nope.parquet")


def test_parquet_with_garbage_bytes_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(EventsFileError, match="cannot be read as parquet"):
        read_events(path)


def test_the_three_formats_give_the_same_accepted_table(tmp_path: Path) -> None:
    rows = [GOOD, {**GOOD, "user_id": "u2", "ts": "2024-03-02T00:00:00+01:00"}, {**GOOD, "ts": "bad"}]
    frame = pl.DataFrame(rows)
    frame.write_csv(tmp_path / "e.csv")
    frame.write_parquet(tmp_path / "e.parquet")
    with gzip.open(tmp_path / "e.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    results = [read_events(tmp_path / n) for n in ("e.csv", "e.parquet", "e.jsonl.gz")]
    for result in results:
        assert result.accepted.equals(results[0].accepted)
        assert result.quarantine[s.REASON].to_list() == [s.REASON_BAD_TS]


def test_column_map_renames_before_validation(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("customer,time,kind\nu1,2024-01-01,purchase\n")
    result = read_events(path, column_map={"customer": "user_id", "time": "ts", "kind": "event_type"})
    assert result.accepted.height == 1


def test_native_parquet_types_are_accepted(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "user_id": [1, 2],
            "ts": [datetime(2024, 1, 1), datetime(2024, 1, 2)],
            "event_type": ["purchase", "refund"],
            "amount": [3.0, -3.0],
        }
    )
    path = tmp_path / "e.parquet"
    frame.write_parquet(path)
    accepted = read_events(path).accepted
    assert accepted[s.USER_ID].to_list() == ["1", "2"]
    assert accepted["amount"].to_list() == [3.0, -3.0]


def test_write_validation_writes_both_files(tmp_path: Path) -> None:
    result = validate_events(pl.concat([_one(), _one(ts="bad")]), source="t")
    accepted, quarantine = write_validation(result, tmp_path / "out")
    assert pl.read_parquet(accepted).height == 1
    assert pl.read_parquet(quarantine)[s.REASON].to_list() == [s.REASON_BAD_TS]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["accepted.parquet", "quarantine.parquet"]


_messy = st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["u1", "u2", " ", ""]))
_ts = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2027, 1, 1)).map(lambda d: d.isoformat()),
)
_amount = st.one_of(st.none(), st.text(max_size=5), st.floats(allow_nan=True).map(str))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(_messy, _ts, st.sampled_from(["purchase", "", "x", None]), _amount), max_size=30),
    duplicate_first=st.booleans(),
)
def test_conservation_and_contract_for_any_input(
    rows: list[tuple[str | None, str | None, str | None, str | None]], duplicate_first: bool
) -> None:
    if duplicate_first and rows:
        rows = [rows[0], *rows]
    raw = pl.DataFrame(
        rows,
        schema={"user_id": pl.String, "ts": pl.String, "event_type": pl.String, "amount": pl.String},
        orient="row",
    )
    result = validate_events(raw, source="prop", reference_time=REF)
    assert result.accepted.height + result.quarantine.height == raw.height
    assert sorted(result.quarantine["row"].to_list()) == sorted(set(result.quarantine["row"].to_list()))
    acc = result.accepted
    assert dict(acc.schema) == s.EVENT_SCHEMA
    assert acc[s.USER_ID].null_count() == 0 and (acc[s.USER_ID].str.strip_chars() != "").all()
    assert acc[s.TS].null_count() == 0 and (acc[s.TS] <= REF).all()
    assert acc["amount"].drop_nulls().is_finite().all()
    assert acc.is_unique().all()


def test_fingerprint_changes_with_content_not_with_row_order() -> None:
    from engage.events import fingerprint

    events = validate_events(pl.concat([_one(), _one(user_id="u2"), _one(amount="3")]), source="t").accepted
    same = fingerprint(events.reverse())
    assert fingerprint(events) == same
    changed = events.with_columns(
        pl.when(pl.col("user_id") == "u2").then(1.0).otherwise(pl.col("amount")).alias("amount")
    )
    assert fingerprint(changed)["sha256"] != same["sha256"]
    assert same["rows"] == 3 and same["users"] == 2
