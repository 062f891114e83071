"""The decision log: one layout, writer and reader; survives a crash mid-write; decision fields only."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engage.scoring.decision_log import DecisionWriter, LogTail, read_decisions

WHEN = datetime(2024, 6, 1, 12, tzinfo=UTC)


def append_decisions(records: list[dict[str, object]], log_dir: Path, *, decided_at: datetime) -> Path:
    with DecisionWriter(log_dir) as writer:
        return writer.write(records, decided_at)


def _record(i: int) -> dict[str, object]:
    return {
        "decision_id": f"d{i}",
        "user_id": f"u{i}",
        "message_id": "cart_coupon",
        "propensity": 0.9,
        "holdout": False,
        "events": [{"secret": "raw event"}],
        "attributes": {"email": "x@example.com"},
    }


def test_round_trip_and_day_partition(tmp_path: Path) -> None:
    append_decisions([_record(1), _record(2)], tmp_path, decided_at=WHEN)
    append_decisions([_record(3)], tmp_path, decided_at=WHEN.replace(day=2))
    frame, skipped = read_decisions(tmp_path)
    assert skipped == 0
    assert frame["decision_id"].tolist() == ["d1", "d2", "d3"]
    assert frame["decided_at"].tolist() == [WHEN.isoformat()] * 2 + [WHEN.replace(day=2).isoformat()]


def test_the_day_folder_is_the_writers_clock_not_the_decision_time(tmp_path: Path) -> None:
    """A client chooses ``as_of`` (the decision time): it must not choose the log's folders."""
    today = [datetime(2026, 3, 1, 23, 59, tzinfo=UTC)]
    writer = DecisionWriter(tmp_path, clock=lambda: today[0])
    with writer:
        for year in (1999, 2150, 2199):  # decision times far from the clock
            writer.write([_record(year)], WHEN.replace(year=year))
        today[0] += timedelta(minutes=2)  # past midnight: the next write opens the next day's file
        path = writer.write([_record(4)], WHEN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["date=2026-03-01", "date=2026-03-02"]
    assert path == tmp_path / "date=2026-03-02" / writer.file_name
    frame, skipped = read_decisions(tmp_path)
    assert skipped == 0
    assert frame["decision_id"].tolist() == ["d1999", "d2150", "d2199", "d4"]
    assert frame["decided_at"].iloc[2] == WHEN.replace(year=2199).isoformat(), "the record keeps it"


def test_lines_that_are_not_decisions_are_skipped_and_counted(tmp_path: Path) -> None:
    """Well-formed JSON that is not a decision (no user_id, not an object, ...) never breaks a reader."""
    path = append_decisions([_record(1)], tmp_path, decided_at=WHEN)
    good = json.loads(path.read_text())
    bad = [
        {k: v for k, v in good.items() if k != "user_id"},
        {**good, "user_id": None},
        {**good, "message_id": 7},
        {k: v for k, v in good.items() if k != "decided_at"},
        [good],
        "a text",
        12,
        None,
    ]
    with path.open("a") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in bad)
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")  # deeper than the JSON parser recurses
    append_decisions([_record(2)], tmp_path, decided_at=WHEN)
    frame, skipped = read_decisions(tmp_path)
    assert frame["decision_id"].tolist() == ["d1", "d2"]
    assert skipped == len(bad) + 1
    tail = LogTail(tmp_path)
    assert [r["decision_id"] for r in tail.read()] == ["d1", "d2"] and tail.skipped == len(bad) + 1


def test_raw_events_and_attributes_are_never_written(tmp_path: Path) -> None:
    path = append_decisions([_record(1)], tmp_path, decided_at=WHEN)
    text = path.read_text()
    assert "raw event" not in text and "example.com" not in text


def test_a_truncated_last_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = append_decisions([_record(1), _record(2)], tmp_path, decided_at=WHEN)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 17])  # a crash in the middle of the second record
    frame, skipped = read_decisions(tmp_path)
    assert frame["decision_id"].tolist() == ["d1"]
    assert skipped == 1
    append_decisions([_record(3)], tmp_path, decided_at=WHEN)
    frame, skipped = read_decisions(tmp_path)
    assert frame["decision_id"].tolist() == ["d1", "d3"]
    assert skipped == 1


def test_column_wise_log_reads_back_like_the_per_record_log(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(2)
    n = 50
    versions = {"churn": "engage-churn/3", "offers": "engage-offers/1"}
    scores = pd.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(n)],
            "user_id": [f"u{i}" for i in range(n)],
            "as_of": pd.Timestamp("2024-05-01", tz="UTC"),
            "message_id": rng.choice(["none", "cart_coupon"], n),
            "channel": "email",
            "propensity": rng.random(n),
            "expected_gain": rng.normal(size=n),
            "holdout": rng.random(n) < 0.2,
            "churn_probability": rng.random(n),
            "model_versions": [versions] * n,
        }
    )
    with DecisionWriter(tmp_path / "fast") as writer:
        writer.write_frame(scores, WHEN)
    append_decisions(scores.to_dict("records"), tmp_path / "slow", decided_at=WHEN)
    fast, skipped = read_decisions(tmp_path / "fast")
    slow, _ = read_decisions(tmp_path / "slow")
    assert skipped == 0 and len(fast) == n
    pd.testing.assert_frame_equal(fast, slow)


def test_chunks_with_equal_version_mappings_take_the_column_wise_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch run scores in chunks, each with its own (equal) versions dict: still one fast write."""
    import pandas as pd

    from engage.scoring import decision_log as decisions

    n = 40
    chunks = [{"churn": "engage-churn/3"}, {"churn": "engage-churn/3"}]  # equal, not the same object
    scores = pd.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(n)],
            "user_id": [f"u{i}" for i in range(n)],
            "message_id": "none",
            "propensity": 1.0,
            "model_versions": [chunks[i // (n // 2)] for i in range(n)],
        }
    )

    def per_record(*args: object, **kwargs: object) -> None:
        raise AssertionError("fell back to the per-record path")

    monkeypatch.setattr(decisions, "_record_lines", per_record)
    with decisions.DecisionWriter(tmp_path) as writer:
        writer.write_frame(scores, WHEN)
    back, skipped = read_decisions(tmp_path)
    assert skipped == 0 and len(back) == n
    assert (
        back["model_versions"]
        .map(lambda v: v["churn"] if isinstance(v, dict) else v)
        .eq("engage-churn/3")
        .all()
    )
