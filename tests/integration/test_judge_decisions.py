"""`engage evaluate decisions` on a real batch run's decision log: the champion offers model judged as
a candidate off-policy, the page and summary logged to MLflow."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engage.cli import app
from engage.config import load_config
from engage.datasets.simulate import simulate, write_simulation
from engage.offers.catalog import load_catalog
from engage.offers.training import fit_offers, offer_table
from engage.scoring.champions import load_champions
from engage.scoring.job import score_events
from engage.training.churn import train_churn
from engage.training.offers import train_offers

pytestmark = pytest.mark.integration


def test_a_candidate_is_judged_on_the_served_log_and_the_page_reaches_mlflow(tmp_path: Path) -> None:
    data = simulate(1_500, 120, seed=5)
    paths = write_simulation(data, tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(
        overrides={
            "tracking.uri": uri,
            "labels.min_churned": 100,
            "labels.min_retained": 100,
            "labels.every_days": 14,
            "churn.n_estimators": 60,
            "offers.n_estimators": 40,
            "policy.holdout_pct": 0.2,
        }
    )
    train_churn(data.events, cfg, users=data.users, exposures=data.exposures)
    table = offer_table(data.events, data.exposures, cfg, users=data.users)
    result = train_offers(fit_offers(table, cfg, load_catalog(cfg.offers.catalog_path), n_boot=20), cfg)
    log = tmp_path / "decisions"
    last = data.events["ts"].max()
    for back in (35, 21):  # two weekly batch runs whose 7-day outcome windows lie inside the events
        as_of = (last - timedelta(days=back)).replace(hour=0, minute=0, second=0, microsecond=0)
        score_events(
            data.events,
            as_of,
            load_champions(cfg),
            cfg,
            tmp_path / f"scores-{back}.parquet",
            users=data.users,
            exposures=data.exposures,
            explain_share=0,
            decision_log=log,
        )
    report = tmp_path / "judge"
    args = ["evaluate", "decisions", "--decisions", str(log), "--events", str(paths["events"])]
    args += [
        "--users",
        str(paths["users"]),
        "--candidate",
        f"models:/{cfg.tracking.offer_model_name}/{result.version}",
    ]
    args += ["--out", str(report), "--n-boot", "50", "--tracking-uri", uri]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["skipped_lines"] == 0 and summary["rows"] > 1_000
    policies = {(r["policy"], r["estimator"]): r for r in summary["policies"]}
    assert {("candidate", "ips"), ("candidate", "snips"), ("candidate", "dr")} <= set(policies)
    candidate = policies[("candidate", "dr")]
    assert candidate["ci_low"] <= candidate["value"] <= candidate["ci_high"]
    assert 0 < summary["ess"]["candidate"] <= summary["rows"] and summary["max_weight"]["candidate"] >= 1
    assert summary["overall_lift"]["converted"]["holdout_n"] > 0
    assert {r["group"] for r in summary["per_message"]} <= {
        "none",
        *load_catalog(cfg.offers.catalog_path).arms,
    }
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'evaluate-decisions'")
    assert len(runs) == 1
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"report.html", "summary.json", "plots", "tables"} <= artifacts
    assert "value_candidate_dr" in runs[0].data.metrics
