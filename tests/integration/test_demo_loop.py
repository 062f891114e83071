"""engage demo --rounds: the closed loop writes loop.json, one round per object, judged by the truth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engage.cli import app
from engage.cli.demo_loop import LOOP_KEYS
from engage.scoring.decision_log import read_decisions

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_rounds_write_the_loop_record(tmp_path: Path) -> None:
    settings = {
        "labels.min_churned": 100,
        "labels.min_retained": 100,
        "labels.every_days": 14,
        "churn.n_estimators": 60,
        "offers.n_estimators": 40,
    }
    args = ["demo", "--out", str(tmp_path), "--users", "1500", "--days", "100", "--rounds", "2"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Downloading artifacts" not in result.output  # MLflow's bar per model load, turned off
    loop = json.loads((tmp_path / "loop.json").read_text())
    assert [row["round"] for row in loop] == [0, 1, 2]
    for row in loop:
        assert set(LOOP_KEYS) <= set(row)
        assert row["oracle_value"] >= max(row["true_value"], row["none_value"])
        assert row["lift_ci_low"] <= row["lift_measured"] <= row["lift_ci_high"]
        assert math.isfinite(row["lift_true"])
    assert loop[0]["dr_estimate"] is None  # nothing to estimate from before the first round
    for row in loop[1:]:
        assert row["dr_ci_low"] <= row["dr_estimate"] <= row["dr_ci_high"]
        assert row["dr_logged_ci_low"] <= row["dr_logged"] <= row["dr_logged_ci_high"]
        assert row["oracle_value"] <= row["oracle_value_no_contact_rules"] + 1e-12
        assert row["holdout_control"] > 0 and row["treated"] > 0
        # the truth's judgement of each model's greedy policy under the same rules as the oracle
        assert row["champion_greedy_share_of_oracle"] <= 1 + 1e-9
    # a challenger the gate turned down is judged by the truth on the next round's users
    assert ("rejected_challenger_greedy_share_of_oracle" in loop[2]) == (not loop[1]["promoted"])
    versions = [int(row["offers_version"]) for row in loop]
    assert versions == sorted(versions) and len(set(versions)) == 3  # retrained (and gated) every round
    assert (tmp_path / "world" / "world.json").is_file()
    world = json.loads((tmp_path / "world" / "world.json").read_text())
    assert world["day"] == 100 + 2 * 14
    assert len(list((tmp_path / "decisions").glob("round-*"))) == 2
    # exploration decays with the served batches (policy.epsilon_decay 1: epsilon / k by default) and
    # the log holds each round's own propensities: 1 - eps + eps / n for the greedy arm, else eps / n
    assert [row["epsilon"] for row in loop[1:]] == pytest.approx([0.05, 0.025])
    for row in loop[1:]:
        decisions, _ = read_decisions(tmp_path / "decisions" / f"round-{row['round']}")
        served = decisions[~decisions["holdout"].astype(bool)]["propensity"].to_numpy(float)
        eps = row["epsilon"]
        forms = [eps / k for k in range(1, 7)] + [1 - eps + eps / k for k in range(1, 7)]
        assert all(min(abs(p - f) for f in forms) < 1e-9 for p in served)
