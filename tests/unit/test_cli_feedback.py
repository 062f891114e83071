"""``engage feedback import``: the same validation and idempotency as ``/feedback``, from a file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from typer.testing import CliRunner

from engage.cli import app
from engage.scoring.decision_log import DecisionWriter
from engage.scoring.feedback import read_feedback

runner = CliRunner()
NOW = datetime.now(UTC).replace(microsecond=0)


def _decisions(log: Path, n: int) -> list[str]:
    ids = [f"d{i:04d}" for i in range(n)]
    scores = pd.DataFrame(
        {
            "decision_id": ids,
            "user_id": [f"u{i}" for i in range(n)],
            "message_id": "cart_coupon",
            "propensity": 0.9,
            "model_versions": [{"churn": "engage-churn/1"}] * n,
        }
    )
    with DecisionWriter(log) as writer:
        writer.write_frame(scores, NOW - timedelta(hours=2))
    return ids


def _reports(ids: list[str]) -> list[dict[str, object]]:
    at = (NOW - timedelta(hours=1)).isoformat()
    return [
        {"decision_id": ids[0], "event": "sent", "ts": at},
        {"decision_id": ids[0], "event": "sent", "ts": at},  # the same report again
        {"decision_id": ids[1], "event": "converted", "ts": at, "revenue": 12.5},
        {"decision_id": "unknown", "event": "opened", "ts": at},
        {"decision_id": ids[2], "event": "bounced", "ts": at},  # not an event
        {"decision_id": ids[2], "event": "opened", "ts": at, "revenue": 1.0},  # revenue without converted
        {"decision_id": ids[3], "event": "clicked", "ts": (NOW - timedelta(days=400)).isoformat()},
        {"decision_id": ids[4], "event": "clicked", "ts": at, "user_id": "ignored column"},
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_import_counts_each_report_once_and_keeps_unknown_ones_aside(tmp_path: Path, suffix: str) -> None:
    log, feedback = tmp_path / "decisions", tmp_path / "feedback"
    rows = _reports(_decisions(log, 5))
    path = tmp_path / f"reports{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        frame = pl.DataFrame(rows, schema_overrides={"revenue": pl.Float64})
        frame.write_csv(path) if suffix == ".csv" else frame.write_parquet(path)
    args = ["feedback", "import", str(path), "--decisions", str(log), "--feedback-log", str(feedback)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "8 reports" in first.output and "3 accepted, 1 duplicate, 1 aside, 3 rejected" in first.output
    assert "aside: 1 unknown_decision_id" in first.output and "row 5: event" in first.output
    again = runner.invoke(app, args)
    assert "0 accepted, 5 duplicate, 0 aside, 3 rejected" in again.output, again.output
    kept, _ = read_feedback(feedback)
    aside, _ = read_feedback(feedback, aside=True)
    assert sorted(kept["event"]) == ["clicked", "converted", "sent"] and len(aside) == 1
    assert kept.loc[kept["event"] == "converted", "revenue"].tolist() == [12.5]


def test_a_file_without_the_report_columns_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "reports.csv"
    path.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["feedback", "import", str(path), "--feedback-log", str(tmp_path / "f")])
    assert result.exit_code == 2 and "missing required column(s) decision_id, event, ts" in result.output
