"""`engage outcomes` and `engage evaluate decisions` on a decision log written by the one writer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engage.cli import app
from engage.scoring.decision_log import DecisionWriter, log_files, read_decisions

runner = CliRunner()
T0 = datetime(2024, 3, 1, tzinfo=UTC)
MESSAGES = ["none", "cart_coupon", "winback_offer"]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """600 decisions on two days (20% holdout), events around them, and one cut-short log line."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rng = np.random.default_rng(0)
    log = tmp_path / "decisions"
    with DecisionWriter(log, clock=lambda: T0) as writer:
        for day in (0, 10):
            decided = T0 + timedelta(days=day)
            records = []
            for i in range(300):
                intended = str(rng.choice(MESSAGES, p=[0.2, 0.5, 0.3]))
                held = bool(rng.random() < 0.2)
                records.append(
                    {
                        "decision_id": f"d{day}-{i}",
                        "user_id": f"u{i}",
                        "as_of": decided,
                        "message_id": "none" if held else intended,
                        "intended_message_id": intended,
                        "channel": "email",
                        "propensity": 1.0
                        if held
                        else {"none": 0.2, "cart_coupon": 0.5, "winback_offer": 0.3}[intended],
                        "holdout": held,
                        "churn_probability": float(rng.random()),
                        "model_versions": {"churn": "engage-churn/1"},
                    }
                )
            writer.write(records, decided)
    with log_files(log)[0].open("ab") as fh:
        fh.write(b'{"decision_id": "cut", "user_id": "u1", "mess')  # a crash cut this line short
    n_events = 4000
    events = pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 300, n_events)],
            "ts": [T0 + timedelta(hours=float(h)) for h in rng.uniform(-200, 600, n_events)],
            "event_type": rng.choice(["purchase", "page_view"], n_events, p=[0.1, 0.9]).tolist(),
            "amount": rng.uniform(5, 60, n_events).tolist(),
        }
    )
    events.write_parquet(tmp_path / "events.parquet")
    return {"log": log, "events": tmp_path / "events.parquet", "root": tmp_path}


def test_outcomes_writes_one_row_per_decision_and_counts_the_skipped_line(world: dict[str, Path]) -> None:
    out = world["root"] / "o" / "outcomes.parquet"
    result = runner.invoke(
        app,
        [
            "outcomes",
            "--decisions",
            str(world["log"]),
            "--events",
            str(world["events"]),
            "--window",
            "1w",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    decisions, skipped = read_decisions(world["log"])
    assert skipped == 1 and frame.height == len(decisions) == 600
    assert frame["decision_id"].to_list() == decisions["decision_id"].tolist()
    assert {"converted", "revenue", "still_active", "unsubscribed"} <= set(frame.columns)
    assert 0 < frame["converted"].sum() < frame.height
    meta = pq.read_metadata(out).metadata
    assert meta[b"engage.skipped_lines"] == b"1" and meta[b"engage.window_days"] == b"7"
    assert "1 log line(s) skipped" in " ".join(result.output.split())


def test_evaluate_decisions_writes_summary_page_and_plots(world: dict[str, Path]) -> None:
    report = world["root"] / "judge"
    args = ["evaluate", "decisions", "--decisions", str(world["log"]), "--events", str(world["events"])]
    result = runner.invoke(app, [*args, "--out", str(report), "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["rows"] == 600 and summary["skipped_lines"] == 1 and summary["window_days"] == 7
    assert any("1 decision-log line(s) were skipped" in w for w in summary["warnings"])
    assert set(summary["overall_lift"]) == {"converted", "revenue"}
    assert {r["group"] for r in summary["per_message"]} == set(MESSAGES)
    assert {(r["policy"], r["estimator"]) for r in summary["policies"]} >= {
        ("serving", "on_policy"),
        ("none", "dr"),
    }
    assert summary["ess"]["serving"] > 0 and summary["max_weight"]["none"] == pytest.approx(5.0)
    page = (report / "report.html").read_text()
    assert "Lift per message" in page and page.count("data:image/png;base64") == 3
    for name in ("lift_per_message.png", "policy_values.png", "lift_per_message.csv", "policy_values.csv"):
        assert (report / name).stat().st_size > 0
    again = runner.invoke(app, [*args, "--out", str(report), "--n-boot", "50"])  # seeded: the same numbers
    assert json.loads((report / "summary.json").read_text()) == summary, again.output


def test_bad_windows_and_logs_are_one_message(world: dict[str, Path]) -> None:
    base = ["outcomes", "--events", str(world["events"]), "--out", str(world["root"] / "x.parquet")]
    result = runner.invoke(app, [*base, "--decisions", str(world["log"]), "--window", "soon"])
    assert result.exit_code == 2 and "--window: cannot read 'soon'" in " ".join(result.output.split())
    empty = world["root"] / "empty"
    empty.mkdir()
    result = runner.invoke(app, [*base, "--decisions", str(empty)])
    assert result.exit_code == 2 and f"--decisions {empty}: no decision log files" in result.output
    result = runner.invoke(
        app, ["outcomes", "--decisions", str(world["log"]), "--out", str(world["root"] / "y.parquet")]
    )
    assert result.exit_code == 2 and "give --events, --feedback or both" in result.output


def test_outcomes_read_the_feedback_log_folder(world: dict[str, Path]) -> None:
    from engage.scoring.feedback import FEEDBACK

    decided = T0 + timedelta(days=10)
    reports = [
        {
            "feedback_id": f"f{i}",
            "decision_id": f"d10-{i}",
            "event": "converted",
            "ts": (decided + timedelta(days=2)).isoformat(),
            "revenue": 999.0,
            "received_at": (decided + timedelta(days=2)).isoformat(),
        }
        for i in range(3)
    ]
    folder = world["root"] / "feedback"
    with DecisionWriter(folder, clock=lambda: decided, layout=FEEDBACK) as writer:
        writer.write(reports)
    out = world["root"] / "with_feedback.parquet"
    args = ["outcomes", "--decisions", str(world["log"]), "--events", str(world["events"]), "--out", str(out)]
    result = runner.invoke(app, [*args, "--feedback", str(folder)])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out).filter(pl.col("decision_id").is_in([r["decision_id"] for r in reports]))
    assert frame["converted"].all() and frame["revenue"].to_list() == [999.0] * 3
