"""Batch scoring: embedded and Spark give the same scores and messages; re-runs are byte-identical."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engage.config import load_config
from engage.datasets.simulate import simulate, write_simulation
from engage.offers.catalog import load_catalog
from engage.offers.training import fit_offers, offer_table
from engage.scoring.champions import load_champions
from engage.scoring.job import score_events
from engage.training.churn import train_churn
from engage.training.offers import train_offers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("batch")
    data = simulate(1_500, 120, seed=3)
    paths = write_simulation(data, root / "data")
    cfg = load_config(
        overrides={
            "tracking.uri": f"sqlite:///{root / 'mlflow.db'}",
            "labels.min_churned": 100,
            "labels.min_retained": 100,
            "labels.every_days": 14,
            "churn.n_estimators": 80,
            "offers.n_estimators": 60,
        }
    )
    train_churn(data.events, cfg, users=data.users, exposures=data.exposures)
    table = offer_table(data.events, data.exposures, cfg, users=data.users)
    train_offers(fit_offers(table, cfg, load_catalog(cfg.offers.catalog_path), n_boot=20), cfg)
    as_of = (data.events["ts"].max() - timedelta(days=20)).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"root": root, "paths": paths, "cfg": cfg, "data": data, "as_of": as_of}


def _embedded(world: dict, out: Path) -> pl.DataFrame:
    data = world["data"]
    score_events(
        data.events,
        world["as_of"],
        load_champions(world["cfg"]),
        world["cfg"],
        out,
        users=data.users,
        exposures=data.exposures,
        explain_share=0.2,
        users_per_chunk=400,
    )
    return pl.read_parquet(out)


def test_rerun_gives_the_identical_file_and_chunks_do_not_matter(world: dict) -> None:
    first = _embedded(world, world["root"] / "a.parquet")
    second = _embedded(world, world["root"] / "b.parquet")
    digest = [
        hashlib.sha256((world["root"] / n).read_bytes()).hexdigest() for n in ("a.parquet", "b.parquet")
    ]
    assert digest[0] == digest[1]
    assert first.height == world["data"].events.filter(pl.col("ts") < world["as_of"])["user_id"].n_unique()
    assert first["user_id"].is_unique().all()
    explained = first.filter(pl.col("reasons") != "[]")
    assert 0 < explained.height <= int(0.25 * first.height)
    assert explained["churn_probability"].min() >= first["churn_probability"].quantile(0.7)
    assert set(first["message_id"].unique()) <= {
        "none",
        *(m.id for m in load_catalog(world["cfg"].offers.catalog_path).messages),
    }
    assert second.equals(first)


def test_spark_and_embedded_scores_agree(world: dict) -> None:
    """Scores, snapshot and decision-log batch of a Spark run equal the embedded run's; the batch has
    the embedded key, so the Spark run of the same job appends nothing to the embedded run's log."""
    from engage.scoring.decision_log import log_files, read_decisions
    from engage.spark import score_spark

    root, data, paths = world["root"], world["data"], world["paths"]
    models = load_champions(world["cfg"])
    score_events(
        data.events,
        world["as_of"],
        models,
        world["cfg"],
        root / "e.parquet",
        users=data.users,
        exposures=data.exposures,
        explain_share=0.2,
        users_per_chunk=400,
        snapshot=root / "e-snap.parquet",
        decision_log=root / "e-log",
    )
    embedded = pl.read_parquet(root / "e.parquet")
    summary = score_spark(
        paths["events"],
        world["as_of"],
        models,
        world["cfg"],
        root / "s.parquet",
        users=paths["users"],
        exposures=paths["exposures"],
        explain_share=0.2,
        snapshot=root / "s-snap.parquet",
        decision_log=root / "s-log",
    )
    assert (root / "s.parquet").is_dir() and not any(p.name.startswith(".") for p in root.iterdir())
    spark = pl.read_parquet(root / "s.parquet").sort("user_id")
    assert summary.users == embedded.height == spark.height
    assert summary.explained == embedded.filter(pl.col("reasons") != "[]").height
    assert spark["user_id"].to_list() == embedded["user_id"].to_list()
    np.testing.assert_allclose(
        spark["churn_probability"].to_numpy(), embedded["churn_probability"].to_numpy(), atol=1e-6
    )
    for column in (
        "message_id",
        "decision_id",
        "intended_message_id",
        "risk_band",
        "message_text",
        "holdout",
    ):
        assert spark[column].to_list() == embedded[column].to_list(), column
    assert (spark["reasons"] != "[]").to_list() == (embedded["reasons"] != "[]").to_list()
    assert spark["as_of"].dtype == embedded["as_of"].dtype

    snap_e, snap_s = pl.read_parquet(root / "e-snap.parquet"), pl.read_parquet(root / "s-snap.parquet")
    assert snap_s.columns == snap_e.columns
    assert snap_s["user_id"].to_list() == snap_e["user_id"].to_list()
    np.testing.assert_allclose(
        snap_s["days_since_last_event"].to_numpy(), snap_e["days_since_last_event"].to_numpy(), atol=1e-9
    )

    assert [p.name for p in log_files(root / "s-log")] == [p.name for p in log_files(root / "e-log")]
    log_e, skipped_e = read_decisions(root / "e-log")
    log_s, skipped_s = read_decisions(root / "s-log")
    assert skipped_e == skipped_s == 0
    log_e, log_s = (f.sort_values("decision_id", ignore_index=True) for f in (log_e, log_s))
    assert log_s.drop(columns="churn_probability").equals(log_e.drop(columns="churn_probability"))
    np.testing.assert_allclose(log_s["churn_probability"], log_e["churn_probability"], atol=1e-6)

    again = score_spark(
        paths["events"],
        world["as_of"],
        models,
        world["cfg"],
        root / "s.parquet",
        users=paths["users"],
        exposures=paths["exposures"],
        explain_share=0.2,
        decision_log=root / "e-log",
    )
    assert again.decisions is not None and again.decisions.already_logged
    assert len(log_files(root / "e-log")) == 1
