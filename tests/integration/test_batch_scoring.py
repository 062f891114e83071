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
    from engage.spark import score_spark

    embedded = _embedded(world, world["root"] / "e.parquet")
    paths = world["paths"]
    score_spark(
        paths["events"],
        world["as_of"],
        load_champions(world["cfg"]),
        world["cfg"],
        world["root"] / "s.parquet",
        users=paths["users"],
        exposures=paths["exposures"],
        explain_share=0.2,
    )
    spark = pl.read_parquet(world["root"] / "s.parquet")
    assert spark["user_id"].to_list() == embedded["user_id"].to_list()
    np.testing.assert_allclose(
        spark["churn_probability"].to_numpy(), embedded["churn_probability"].to_numpy(), atol=1e-6
    )
    assert spark["message_id"].to_list() == embedded["message_id"].to_list()
    assert spark["decision_id"].to_list() == embedded["decision_id"].to_list()
    assert spark["intended_message_id"].to_list() == embedded["intended_message_id"].to_list()
    assert spark["risk_band"].to_list() == embedded["risk_band"].to_list()
