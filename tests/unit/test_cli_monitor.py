"""`engage monitor`: exit code 0 on a stable pair of snapshots, 1 on a drifted one, files written.

The snapshots are feature tables of one small simulated world written by `engage features` (the
builder `engage score --snapshot` runs). A week apart the world is stable; seven weeks apart recency
and tenure features have moved; a perturbed copy of the stable one moves by construction. The
calibration check uses the simulator's own probability of inactivity over 30 days as the served risk
(calibrated by construction) against a constant risk (not).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from engage.cli import app
from engage.datasets.simulate import simulate, write_simulation

runner = CliRunner()
DATES = ("2024-04-01", "2024-04-29", "2024-05-06", "2024-05-20")
SMALL_WEEKS = ["--set", "monitor.min_week_rows=300"]  # weeks of ~1,000 labelled users


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("monitor")
    data = simulate(1_500, 150, seed=3)
    paths = write_simulation(data, root / "data")
    files = dict(paths)
    for day in DATES:
        snap = root / f"snapshot_{day}.parquet"
        args = ["features", "--events", str(paths["events"]), "--users", str(paths["users"])]
        result = runner.invoke(app, [*args, "--as-of", day, "--out", str(snap)])
        assert result.exit_code == 0, result.output
        files[day] = snap
    near = pl.read_parquet(files["2024-05-06"])
    perturbed = near.with_columns(pl.col("amount_sum_28d") * 3, pl.col("plan").replace({"free": "trial"}))
    files["perturbed"] = root / "perturbed.parquet"
    perturbed.drop("tenure_days").write_parquet(files["perturbed"])
    oracle = data.states.filter(pl.col("ts") >= pl.datetime(2024, 3, 25, time_zone="UTC")).select(
        "user_id", pl.col("ts").alias("as_of"), pl.col("p_inactive_30d").alias("churn_probability")
    )
    files["oracle"] = root / "oracle_scores.parquet"
    oracle.write_parquet(files["oracle"])
    files["constant"] = root / "constant_scores.parquet"
    oracle.with_columns(pl.lit(0.02).alias("churn_probability")).write_parquet(files["constant"])
    return files


def _monitor(
    world: dict[str, Path], out: Path, reference: str, current: str, *extra: str
) -> tuple[int, dict]:
    args = ["monitor", "--reference", str(world[reference]), "--current", str(world[current])]
    result = runner.invoke(app, [*args, "--out", str(out), *extra])
    assert result.exit_code in (0, 1), result.output
    assert (out / "monitor.html").exists(), result.output
    summary = json.loads((out / "monitor.json").read_text())
    assert summary["status"] in ("ok", "warn", "alert")
    assert (result.exit_code == 1) == (summary["status"] == "alert"), result.output
    return result.exit_code, summary


def test_a_stable_week_exits_0_and_seven_weeks_of_drift_exit_1(
    world: dict[str, Path], tmp_path: Path
) -> None:
    code, summary = _monitor(world, tmp_path / "near", "2024-04-29", "2024-05-06")
    assert code == 0 and not summary["alerts"]
    assert all(f["psi"] < summary["thresholds"]["psi_alert"] for f in summary["features"])
    code, summary = _monitor(world, tmp_path / "far", "2024-04-01", "2024-05-20")
    assert code == 1
    alerted = {f["feature"] for f in summary["features"] if f["status"] == "alert"}
    assert alerted & {"tenure_days", "days_since_first_purchase"}  # seven weeks older: the population ages
    page = (tmp_path / "far" / "monitor.html").read_text()
    assert "Drift per feature" in page and "data:image/png;base64," in page


def test_a_perturbed_copy_alerts_on_what_was_changed(world: dict[str, Path], tmp_path: Path) -> None:
    code, summary = _monitor(world, tmp_path / "p", "2024-04-29", "perturbed")
    assert code == 1
    alerted = {f["feature"] for f in summary["features"] if f["status"] == "alert"}
    assert {"amount_sum_28d", "plan", "tenure_days"} <= alerted  # tenure_days: gone from the current
    stable = {f["feature"] for f in summary["features"] if f["status"] == "ok"}
    assert "amount_sum_7d" in stable  # untouched columns stay quiet


def test_thresholds_come_from_the_config(world: dict[str, Path], tmp_path: Path) -> None:
    code, summary = _monitor(
        world, tmp_path / "t", "2024-04-29", "2024-05-06", "--set", "monitor.psi_alert=0.02"
    )
    assert code == 1 and summary["thresholds"]["psi_alert"] == 0.02


def test_calibration_alerts_on_a_miscalibrated_score_only(world: dict[str, Path], tmp_path: Path) -> None:
    common = ["--events", str(world["events"]), *SMALL_WEEKS]
    code, summary = _monitor(
        world, tmp_path / "ok", "2024-04-29", "2024-05-06", "--scores", str(world["oracle"]), *common
    )
    weeks = summary["calibration"]
    judged = [w for w in weeks if w["complete"]]
    assert judged and any(not w["complete"] for w in weeks)  # the last weeks' horizon is still open
    assert all(w["status"] == "ok" for w in judged) and code == 0
    assert summary["score"]["reference_dates"][0].startswith("2024-04-29")
    code, summary = _monitor(
        world, tmp_path / "bad", "2024-04-29", "2024-05-06", "--scores", str(world["constant"]), *common
    )
    assert code == 1 and any(a.startswith("calibration, week of") for a in summary["alerts"])


def test_bad_inputs_exit_2_in_engage_words(world: dict[str, Path], tmp_path: Path) -> None:
    base = ["monitor", "--reference", str(world["2024-04-29"]), "--current", str(world["2024-05-06"])]
    result = runner.invoke(app, [*base, "--events", str(world["events"]), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "give --scores too" in result.output
    bad = tmp_path / "bad_scores.csv"
    bad.write_text("user_id,as_of,churn_probability\nu1,2024-05-06,0.2\nu2,2024-05-06,1.5\n")
    result = runner.invoke(app, [*base, "--scores", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "row 2, column churn_probability" in result.output
    empty = tmp_path / "empty.parquet"
    pl.read_parquet(world["2024-05-06"]).head(0).write_parquet(empty)
    result = runner.invoke(app, ["monitor", "--reference", str(world["2024-04-29"]), "--current", str(empty)])
    assert result.exit_code == 2 and f"--current {empty}: no rows" in result.output
