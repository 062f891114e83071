"""Spark reads and validates events as the embedded reader does: same accepted rows, same quarantine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from engage import schemas as s
from engage.events import read_events

pytestmark = pytest.mark.integration

REFERENCE = datetime(2024, 6, 1, tzinfo=UTC)
CSV = """user_id,ts,event_type,amount,session_id,colour
u1,2024-01-01T10:00:00Z,purchase,12.5,s1,red
u1,2024-01-01T10:00:00Z,purchase,12.5,s1,red
 u1 ,2024-01-01T10:00:00Z,purchase,12.50,s1 ,red
u2,2024-01-02 11:30:15.123456+02:00,page_view,,s2,
u3,2024-01-03T08:00:00+0100,page_view,,,blue
u4,2024-01-04T09:15,add_to_cart,,,
u5,2024-01-05,session_start,,,
u6,2024/01/06 10:11:12,purchase,3,,
u7,1704103200,page_view,,,
u8,1704103200000,page_view,,,
,2024-01-01,page_view,,,
u9,2024-01-01,,,,
u10,not a time,page_view,,,
u11,2030-01-01,page_view,,,
u12,2024-01-01,purchase,abc,,
u13,2024-01-01,purchase,inf,,
  u14 ,2024-01-01T00:00:00.5,email_open,,,
u15,2024-13-45,page_view,,,
"""


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from engage.spark import local_spark

    session = local_spark(shuffle_partitions=2)
    yield session
    session.stop()


def _spark_result(spark: Any, path: Path) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    from engage.spark.io import read_input
    from engage.spark.session import utc_session
    from engage.spark.validate import validate_events

    with utc_session(spark):
        checked = validate_events(spark, read_input(spark, path), source=str(path), reference_time=REFERENCE)
        accepted = pl.from_arrow(checked.accepted.toArrow())
        quarantine = pl.from_arrow(checked.quarantine.toArrow())
    assert isinstance(accepted, pl.DataFrame) and isinstance(quarantine, pl.DataFrame)
    return accepted, quarantine, checked.rows_in


def _compare(spark: Any, path: Path) -> pl.DataFrame:
    embedded = read_events(path, reference_time=REFERENCE)
    accepted, quarantine, rows_in = _spark_result(spark, path)
    assert rows_in == embedded.rows_in == accepted.height + quarantine.height
    columns = [c for c in s.EVENT_COLUMNS if c != "properties"]  # JSON text formatting differs
    mine = accepted.select(columns).with_columns(pl.col(s.TS).dt.convert_time_zone(s.UTC))
    theirs = embedded.accepted.select(columns)
    assert mine.sort(s.USER_ID, s.TS).equals(theirs.sort(s.USER_ID, s.TS)), (mine, theirs)
    got = quarantine.sort("row").select("row", s.REASON).with_columns(pl.col("row").cast(pl.Int64))
    want = embedded.quarantine.select("row", s.REASON).with_columns(pl.col("row").cast(pl.Int64))
    assert got.equals(want), (got, want)
    return quarantine


def test_csv_rows_timestamps_and_reasons_match_the_embedded_reader(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(CSV)
    quarantine = _compare(spark, path)
    reasons = set(quarantine[s.REASON])
    assert {s.REASON_DUPLICATE, s.REASON_MISSING_USER, s.REASON_BAD_TS, s.REASON_FUTURE_TS} <= reasons
    assert {s.REASON_BAD_AMOUNT, s.REASON_MISSING_EVENT_TYPE} <= reasons
    assert "colour" in quarantine.columns  # the input row is kept, extra columns included
    # as written, padding included (" u1 " is a duplicate of "u1": its own text is kept)
    inputs = ["row", "user_id", "ts", "event_type", "amount", "session_id", "colour"]
    want = read_events(path, reference_time=REFERENCE).quarantine.select(inputs)
    got = quarantine.sort("row").select(inputs).with_columns(pl.col("row").cast(want.schema["row"]))
    assert got.equals(want), (got, want)


def test_json_lines_with_a_malformed_line_and_no_optional_columns(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"user_id": "a", "ts": "2024-01-01T00:00:00Z", "event_type": "page_view"}),
        "{not json",
        json.dumps({"user_id": "b", "ts": 1704067200, "event_type": "purchase"}),
        json.dumps({"user_id": "b", "ts": 1704067200, "event_type": "purchase"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    quarantine = _compare(spark, path)
    assert quarantine.sort("row")[s.REASON].to_list() == [s.REASON_MALFORMED_LINE, s.REASON_DUPLICATE]
    assert quarantine.sort("row")["line"][0] == "{not json"


def test_hive_partitioned_folder_is_read_with_its_partition_column(spark: Any, tmp_path: Path) -> None:
    from engage.spark.io import read_input

    for day in ("2024-01-01", "2024-01-02"):
        folder = tmp_path / "events" / f"day={day}"
        folder.mkdir(parents=True)
        pl.DataFrame(
            {"user_id": ["a", "b"], "ts": [f"{day}T10:00:00Z"] * 2, "event_type": ["page_view"] * 2}
        ).write_parquet(folder / "part.parquet")
    frame = read_input(spark, tmp_path / "events")
    assert frame.count() == 4 and "day" in frame.columns


def test_users_and_exposures_csv_are_typed_like_the_embedded_reader(spark: Any, tmp_path: Path) -> None:
    from engage.spark.io import read_exposures, read_users
    from engage.spark.session import utc_session

    (tmp_path / "users.csv").write_text("user_id,signup_ts,opted_in,region\na,2024-01-01T00:00:00Z,true,eu\n")
    (tmp_path / "exposures.csv").write_text("user_id,ts,message_id\na,1704067200,coupon\n")
    with utc_session(spark):
        users = read_users(spark, tmp_path / "users.csv")
        exposures = read_exposures(spark, tmp_path / "exposures.csv")
        types = dict(users.dtypes)
        first = exposures.first()
    assert types["signup_ts"] == "timestamp" and types["opted_in"] == "boolean", types
    assert first is not None and first["ts"] == datetime(2024, 1, 1)  # session time is UTC: naive
    assert first["channel"] is None


def test_an_unreadable_users_or_exposures_time_is_an_error_as_in_the_embedded_reader(
    spark: Any, tmp_path: Path
) -> None:
    from engage.events import EventsFileError, utc_column
    from engage.spark.io import read_exposures, read_users
    from engage.spark.session import utc_session

    users = tmp_path / "users.csv"
    users.write_text("user_id,signup_ts\na,2024-01-01T00:00:00Z\nb,\nc,not a time\nd,also not\n")
    exposures = tmp_path / "exposures.csv"
    exposures.write_text("user_id,ts,message_id\na,1704067200,coupon\nb,yesterday,coupon\n")
    for path, option, column, read in (
        (users, "--users", "signup_ts", read_users),
        (exposures, "--exposures", "ts", read_exposures),
    ):
        with pytest.raises(EventsFileError) as embedded:
            utc_column(pl.read_csv(path), column, source=f"{option} {path}")
        with utc_session(spark), pytest.raises(EventsFileError) as mine:
            read(spark, path)
        assert str(mine.value) == str(embedded.value)
