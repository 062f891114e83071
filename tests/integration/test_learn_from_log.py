"""Close the loop: score a simulated world, let it answer, train the offers model from its own log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import polars as pl
import pytest
from typer.testing import CliRunner

from engage import tracking
from engage.cli import app
from engage.config import load_config
from engage.datasets.simulate import simulate, write_simulation
from engage.offers.catalog import load_catalog
from engage.offers.training import fit_offers, offer_table
from engage.scoring.champions import load_champions
from engage.scoring.decision_log import read_decisions
from engage.scoring.job import score_events
from engage.training.churn import train_churn
from engage.training.offers import train_offers

pytestmark = pytest.mark.integration
DAYS = 120


def test_a_model_trained_from_the_served_log_is_registered_and_gated(tmp_path: Path) -> None:
    data = simulate(1_500, DAYS, seed=3)
    write_simulation(data, tmp_path / "world")
    overrides = {
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "labels.min_churned": 100,
        "labels.min_retained": 100,
        "labels.every_days": 14,
        "churn.n_estimators": 80,
        "offers.n_estimators": 60,
    }
    cfg = load_config(overrides=overrides)
    train_churn(data.events, cfg, users=data.users, exposures=data.exposures)
    table = offer_table(data.events, data.exposures, cfg, users=data.users)
    first = train_offers(fit_offers(table, cfg, load_catalog(cfg.offers.catalog_path), n_boot=20), cfg)
    assert first.promoted
    as_of = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=DAYS)  # the world's end
    score_events(
        data.events,
        as_of,
        load_champions(cfg),
        cfg,
        tmp_path / "scores.parquet",
        users=data.users,
        exposures=data.exposures,
        explain_share=0,
        decision_log=tmp_path / "decisions",
    )
    logged, _ = read_decisions(tmp_path / "decisions")
    assert len(logged) > 1_000 and logged["holdout"].astype(bool).any()

    runner = CliRunner()
    world2 = tmp_path / "world2"
    world, log = str(tmp_path / "world"), str(tmp_path / "decisions")
    result = runner.invoke(
        app, ["simulate", "--resume", world, "--decisions", log, "--days", "14", "--out", str(world2)]
    )
    assert result.exit_code == 0, result.output
    assert f"{len(logged):,} answered" in result.output
    truth = pl.read_parquet(world2 / "truth.parquet")
    assert truth["decision_id"].drop_nulls().n_unique() == len(logged)

    settings = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    files = {name: str(world2 / f"{name}.parquet") for name in ("events", "users", "exposures", "truth")}
    args = ["train", "offers", "--decisions", log, "--events", files["events"], "--users", files["users"]]
    args += ["--exposures", files["exposures"], "--truth", files["truth"], *settings]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "registered engage-offers v2" in result.output

    tracking.configure(overrides["tracking.uri"])
    client = mlflow.MlflowClient()
    name = cfg.tracking.offer_model_name
    run = client.get_run(client.get_model_version(name, "2").run_id)
    assert run.info.run_name == "offers-from-decisions"
    m = run.data.metrics
    # the gate re-scored the champion on this run's held-out logged rows
    assert (
        "gate_champion_policy_value_dr" in m and m["gate_challenger_policy_value_dr"] == m["policy_value_dr"]
    )
    promoted = m["gate_promoted"] == 1.0
    assert promoted == (m["policy_value_dr"] > m["gate_champion_policy_value_dr"] + cfg.offers.promote_margin)
    assert tracking.alias_version(name, tracking.CHAMPION) == ("2" if promoted else "1")
    assert m["rows_test"] + m["rows_train"] < len(logged)  # holdout rows of the test split are not judged
    assert m["rows_train"] > 2 * m["rows_test"]
    assert m["oracle_policy_value"] >= m["true_policy_value"]  # the truth of the served rows was found
    assert run.data.params or run.data.tags
