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


def _jsonl(rows: list[dict[str, object] | str]) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@pytest.mark.parametrize("packed", [False, True])
def test_a_malformed_json_line_is_quarantined_with_its_row_not_the_whole_file(
    tmp_path: Path, packed: bool
) -> None:
    """Before: one broken line rejected the whole file with polars' 'ExpectedObjectKey at character 18'."""
    text = _jsonl(
        [GOOD, '{"user_id": "u2", oops', "", {**GOOD, "user_id": "u3"}, "[1, 2]", {**GOOD, "ts": "bad"}]
    )
    path = tmp_path / ("e.jsonl.gz" if packed else "e.jsonl")
    if packed:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    result = read_events(path)
    assert result.rows_in == 5 == result.accepted.height + result.quarantine.height  # blank line: no record
    assert result.accepted[s.USER_ID].to_list() == ["u1", "u3"]
    quarantine = result.quarantine
    assert quarantine["row"].to_list() == [2, 4, 5]
    assert quarantine[s.REASON].to_list() == [
        s.REASON_MALFORMED_LINE,
        s.REASON_MALFORMED_LINE,
        s.REASON_BAD_TS,
    ]
    assert quarantine["line"].to_list()[:2] == ['{"user_id": "u2", oops', "[1, 2]"]
    assert quarantine["ts"].to_list()[2] == "bad"
    assert result.summary().quarantined == {s.REASON_MALFORMED_LINE: 2, s.REASON_BAD_TS: 1}


def test_a_file_with_no_json_object_at_all_is_still_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("user_id,ts,event_type\nu1,2024-01-01,purchase\n")  # a CSV under the wrong name
    with pytest.raises(EventsFileError, match=r"e\.jsonl: cannot be read as jsonl: no line is a JSON object"):
        read_events(path)


def test_epoch_numbers_read_alike_from_csv_json_and_parquet(tmp_path: Path) -> None:
    """Before: CSV epoch text was quarantined as unparseable while JSON/Parquet numbers were accepted."""
    numbers = [1709294400, 1709294400000, 1709294400.5, -86400]
    expected = [
        datetime(2024, 3, 1, 12, tzinfo=UTC),
        datetime(2024, 3, 1, 12, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=UTC),
        datetime(1969, 12, 31, tzinfo=UTC),
    ]
    rows = [{"user_id": f"u{i}", "ts": n, "event_type": "purchase"} for i, n in enumerate(numbers)]
    (tmp_path / "e.csv").write_text(
        "user_id,ts,event_type\n" + "".join(f"u{i}, {n} ,purchase\n" for i, n in enumerate(numbers))
    )
    (tmp_path / "e.jsonl").write_text(_jsonl(list(rows)))
    (tmp_path / "s.jsonl").write_text(_jsonl([{**r, "ts": str(r["ts"])} for r in rows]))
    pl.DataFrame(rows[:2] + rows[3:]).write_parquet(tmp_path / "i.parquet")  # integer column
    pl.DataFrame(rows, schema_overrides={"ts": pl.Float64}).write_parquet(tmp_path / "f.parquet")
    for name in ("e.csv", "e.jsonl", "s.jsonl", "f.parquet"):
        result = read_events(tmp_path / name)
        assert result.quarantine.height == 0, name
        assert result.accepted[s.TS].to_list() == expected, name
    assert read_events(tmp_path / "i.parquet").accepted[s.TS].to_list() == expected[:2] + expected[3:]


def test_epochs_out_of_range_and_number_like_text_are_quarantined_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text(
        "user_id,ts,event_type\nu1,99999999999999999999999,purchase\nu2,1e9,purchase\nu3,nan,purchase\n"
    )
    result = read_events(tmp_path / "e.csv")
    assert result.accepted.height == 0
    assert result.quarantine[s.REASON].to_list() == [s.REASON_BAD_TS] * 3
    pl.DataFrame(
        {"user_id": ["u1", "u2"], "ts": [1e30, float("inf")], "event_type": ["x", "x"]}
    ).write_parquet(tmp_path / "e.parquet")
    assert read_events(tmp_path / "e.parquet").quarantine[s.REASON].to_list() == [s.REASON_BAD_TS] * 2


@pytest.mark.parametrize("with_parquet_inside", [False, True])
def test_a_folder_given_as_the_events_file_is_refused_in_engage_words(
    tmp_path: Path, with_parquet_inside: bool
) -> None:
    """Before: 'failed to retrieve first file schema (parquet): expanded paths were empty ...'."""
    folder = tmp_path / "events.parquet"
    folder.mkdir()
    if with_parquet_inside:  # polars would have read it as a data set, silently
        _one().write_parquet(folder / "part-0.parquet")
    with pytest.raises(EventsFileError) as info:
        read_events(folder)
    assert str(info.value) == f"{folder}: is a folder; give one events file (CSV, Parquet or JSON Lines)"


def test_utc_column_reads_timestamps_like_the_events_reader_and_names_a_bad_row() -> None:
    from engage.events import utc_column

    frame = pl.DataFrame({"ts": [datetime(2024, 1, 1, 10), None]})
    assert utc_column(frame, "ts", source="t")["ts"].to_list() == [datetime(2024, 1, 1, 10, tzinfo=UTC), None]
    text = pl.DataFrame({"ts": ["2024-01-01", "1709294400", "soon"]})
    with pytest.raises(
        EventsFileError, match=r"^x\.csv: column 'ts' row 3: cannot read 'soon' as a timestamp$"
    ):
        utc_column(text, "ts", source="x.csv")
    assert utc_column(text.head(2), "ts", source="x")["ts"].to_list() == [
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 3, 1, 12, tzinfo=UTC),
    ]


_KILLED_WRITE = """
import os, sys
from pathlib import Path
import polars as pl
from engage import atomic

def write_then_die(self, target, *args, **kwargs):
    with open(target, "wb") as fh:
        fh.write(b"half a parquet file")
    os._exit(9)  # killed between writing the temporary file and renaming it

pl.DataFrame.write_parquet = write_then_die
atomic.write_parquet_atomic(pl.DataFrame({"a": [1]}), Path(sys.argv[1]))
"""


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """Before: `.x.parquet.<random>.tmp` stayed for good after every killed run."""
    import subprocess
    import sys

    from engage.atomic import write_parquet_atomic

    target = tmp_path / "out" / "x.parquet"
    for _ in range(2):  # the second killed write removes the first one's leftover
        assert subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(target)]).returncode == 9
        leftovers = [p.name for p in target.parent.iterdir()]
        assert len(leftovers) >= 1 and all(n.startswith(".x.parquet.") for n in leftovers)
    assert len(leftovers) == 1
    other = target.parent / "y.parquet"
    other.write_bytes(b"another target's file stays")
    write_parquet_atomic(pl.DataFrame({"a": [2]}), target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.parquet", "y.parquet"]
    assert pl.read_parquet(target)["a"].to_list() == [2]


def test_a_live_writers_temporary_file_is_left_alone(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    from engage.atomic import write_parquet_atomic

    target = tmp_path / "x.parquet"
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".x.parquet.engage-tmp-{sleeper.pid}@{host}.aaaa"
        remote = tmp_path / ".x.parquet.engage-tmp-1@elsewhere.bbbb"
        remote_old = tmp_path / ".x.parquet.engage-tmp-2@elsewhere.cccc"
        for path in (live, remote, remote_old):
            path.write_bytes(b"in progress")
        day_ago = time.time() - 2 * 24 * 3600
        os.utime(remote_old, (day_ago, day_ago))
        write_parquet_atomic(pl.DataFrame({"a": [1]}), target)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, remote.name, "x.parquet"])
    finally:
        sleeper.kill()
        sleeper.wait()
