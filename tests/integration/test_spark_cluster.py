"""Spark scoring on a real cluster on loopback and through Spark Connect gives the embedded run's scores.

A standalone master and two workers (1 core, 1 GB each) are started with pyspark's own
``spark-class``, and a Spark Connect server with its ``spark-submit``; the driver of the cluster run
has ``spark.driver.maxResultSize=1m`` while the features it scores are many times larger, so
nothing proportional to the users may come back to it. Teardown kills every process started here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from engage.config import load_config
from engage.datasets.simulate import simulate, write_simulation
from engage.offers.catalog import load_catalog
from engage.offers.training import fit_offers, offer_table
from engage.scoring.champions import load_champions
from engage.scoring.job import score_events
from engage.spark.cluster import LocalCluster, local_cluster
from engage.training.churn import train_churn
from engage.training.offers import train_offers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCORING_USERS = 10_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A standalone master, two workers (1 core, 1 GB) and a Spark Connect server on 127.0.0.1."""
    with local_cluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="1g") as started:
        yield started


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Champions trained on a small log; a larger log to score (its features are several MB)."""
    root = tmp_path_factory.mktemp("cluster-world")
    train = simulate(1_500, 120, seed=3)
    cfg = load_config(
        overrides={
            "tracking.uri": f"sqlite:///{root / 'mlflow.db'}",
            "labels.min_churned": 100,
            "labels.min_retained": 100,
            "labels.every_days": 14,
            "churn.n_estimators": 60,
            "offers.n_estimators": 40,
            "spark.partitions": 4,
        }
    )
    train_churn(train.events, cfg, users=train.users, exposures=train.exposures)
    table = offer_table(train.events, train.exposures, cfg, users=train.users)
    train_offers(fit_offers(table, cfg, load_catalog(cfg.offers.catalog_path), n_boot=10), cfg)
    data = simulate(SCORING_USERS, 60, seed=11)
    paths = write_simulation(data, root / "data")
    as_of = (data.events["ts"].max() - timedelta(days=5)).replace(hour=0, minute=0, second=0, microsecond=0)
    models = load_champions(cfg)
    embedded = root / "embedded.parquet"
    score_events(
        data.events,
        as_of,
        models,
        cfg,
        embedded,
        users=data.users,
        exposures=data.exposures,
        explain_share=0.2,
        snapshot=root / "embedded-snapshot.parquet",
    )
    return {
        "root": root,
        "cfg": cfg,
        "paths": paths,
        "as_of": as_of,
        "models": models,
        "embedded": pl.read_parquet(embedded),
        "feature_bytes": pl.read_parquet(root / "embedded-snapshot.parquet").estimated_size(),
    }


def _score_and_compare(spark: Any, world: dict[str, Any], name: str) -> None:
    from engage.spark import run_scoring

    paths, root = world["paths"], world["root"]
    _, run = run_scoring(
        spark,
        str(paths["events"]),
        world["as_of"],
        world["models"],
        world["cfg"],
        users=str(paths["users"]),
        exposures=str(paths["exposures"]),
        explain_share=0.2,
        out=root / f"{name}.parquet",
        snapshot=root / f"{name}-snapshot.parquet",
        decision_log=root / f"{name}-log",
    )
    embedded = world["embedded"]
    scores = pl.read_parquet(root / f"{name}.parquet" / "*.parquet").sort("user_id")
    assert run.users == embedded.height == scores.height
    assert scores["user_id"].to_list() == embedded["user_id"].to_list()
    np.testing.assert_allclose(
        scores["churn_probability"].to_numpy(), embedded["churn_probability"].to_numpy(), atol=1e-6
    )
    for column in ("message_id", "message_text", "decision_id", "intended_message_id"):
        assert scores[column].to_list() == embedded[column].to_list(), column
    assert run.decisions is not None and run.decisions.rows == embedded.height


def test_standalone_cluster_with_a_1m_result_limit_gives_the_embedded_scores(
    cluster: LocalCluster, world: dict[str, Any]
) -> None:
    from pyspark.sql import SparkSession

    from engage.spark import spark_session

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()  # one SparkContext per process: this one must be the cluster's
    assert world["feature_bytes"] > 4 * 1024 * 1024  # the features are several times the limit
    spark = spark_session(
        world["cfg"].spark,
        master=cluster.master,
        conf={"spark.driver.maxResultSize": "1m", "spark.executor.memory": "768m", "spark.cores.max": "2"},
    )
    try:
        assert spark.sparkContext.master == cluster.master
        _score_and_compare(spark, world, "cluster")
        # the control: bringing the features to the driver, as the old path did, breaks the limit
        with pytest.raises(Exception, match="maxResultSize"):
            spark.read.parquet(str(world["root"] / "cluster-snapshot.parquet")).toPandas()
    finally:
        spark.stop()


def test_spark_connect_gives_the_embedded_scores(cluster: LocalCluster, world: dict[str, Any]) -> None:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(cluster.connect).getOrCreate()
    try:
        assert type(spark).__module__.startswith("pyspark.sql.connect")
        _score_and_compare(spark, world, "connect")
    finally:
        spark.stop()
    # pyspark marks the process Connect-only and keeps the mark after stop(); a classic session
    # asked of engage afterwards (the later tests', a notebook's) is still a classic one
    assert os.environ.get("SPARK_CONNECT_MODE_ENABLED") == "1"
    from engage.spark import local_spark

    classic = local_spark(shuffle_partitions=1)
    try:
        assert not type(classic).__module__.startswith("pyspark.sql.connect")
    finally:
        classic.stop()
