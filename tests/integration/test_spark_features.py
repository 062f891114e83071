"""Spark and polars compile the same formulas to the same feature table (floats within 1e-9)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest

from engage import schemas as s
from engage.config import FeatureConfig
from engage.features import build_features, feature_defs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    pytest.importorskip("pyspark")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from engage.spark import local_spark

    session = local_spark(shuffle_partitions=2)
    yield session
    session.stop()


def _random_log(n: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    users = [f"u{i}" for i in range(40)]
    types = [*s.KNOWN_EVENT_TYPES, "custom_thing"]
    uid = rng.choice(users, n)
    events = pl.DataFrame(
        {
            s.USER_ID: uid,
            s.TS: [start + timedelta(seconds=int(x)) for x in rng.integers(0, 150 * 86_400, n)],
            s.EVENT_TYPE: rng.choice(types, n),
            "session_id": [
                f"{u}-{k}" if k >= 0 else None for u, k in zip(uid, rng.integers(-1, 6, n), strict=True)
            ],
            "category": list(rng.choice(np.array(["books", "toys", "garden", None], dtype=object), n)),
            "amount": np.where(rng.random(n) < 0.4, np.round(rng.normal(30, 20, n), 2), np.nan),
        },
        schema_overrides={s.TS: s.TS_DTYPE},
    ).with_columns(pl.col("amount").fill_nan(None))
    exposures = pl.DataFrame(
        {
            s.USER_ID: rng.choice(users, 200),
            s.TS: [start + timedelta(seconds=int(x)) for x in rng.integers(0, 150 * 86_400, 200)],
            s.MESSAGE_ID: rng.choice(["none", "cart_coupon", "newsletter"], 200),
            s.CHANNEL: rng.choice(["email", "push"], 200),
            s.PROPENSITY: np.full(200, 0.5),
        },
        schema_overrides={s.TS: s.TS_DTYPE},
    )
    people = pl.DataFrame(
        {
            s.USER_ID: users,
            s.SIGNUP_TS: [start - timedelta(days=int(d)) for d in rng.integers(0, 400, len(users))],
            "region": rng.choice(["north", "south"], len(users)),
            "consent_email": rng.random(len(users)) < 0.7,
        },
        schema_overrides={s.SIGNUP_TS: s.TS_DTYPE},
    )
    return events, exposures, people


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert list(a.dtypes) == list(b.dtypes)
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(
        a.reset_index(drop=True), b.reset_index(drop=True), check_exact=False, rtol=0, atol=1e-9
    )


def test_spark_matches_polars_on_a_random_log(spark: Any) -> None:
    from engage.spark import build_features_spark

    events, exposures, users = _random_log(3_000, seed=7)
    dates = [datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 17, 13, 30, tzinfo=UTC)]
    cfg = FeatureConfig(windows=(7, 28, 90), cart_abandon_hours=24)
    local = build_features(events, dates, config=cfg, users=users, exposures=exposures)
    remote = build_features_spark(events, dates, config=cfg, users=users, exposures=exposures, spark=spark)
    assert local["cart_abandon_count_90d"].sum() > 0 and local["top_category"].nunique() > 1
    _assert_same(local, remote)


def test_spark_matches_polars_without_exposures_or_users(spark: Any, tmp_path: Any) -> None:
    from engage.spark import build_features_spark

    events, _, _ = _random_log(800, seed=11)
    path = tmp_path / "events.parquet"
    events.write_parquet(path)
    dates = [datetime(2024, 2, 20, tzinfo=UTC)]
    cfg = FeatureConfig(windows=(7, 28), cart_abandon_hours=6)
    _assert_same(
        build_features(events, dates, config=cfg), build_features_spark(path, dates, config=cfg, spark=spark)
    )


def test_spark_matches_polars_on_simulated_users(spark: Any) -> None:
    from engage.datasets.simulate import simulate
    from engage.spark import build_features_spark

    sim = simulate(250, 120, seed=5)
    # one snapshot at midnight, one mid-day (age-day buckets then differ from calendar days)
    dates = [datetime(2024, 3, 15, tzinfo=UTC), datetime(2024, 4, 20, 9, 45, tzinfo=UTC)]
    cfg = FeatureConfig()
    local = build_features(sim.events, dates, config=cfg, users=sim.users, exposures=sim.exposures)
    remote = build_features_spark(
        sim.events, dates, config=cfg, users=sim.users, exposures=sim.exposures, spark=spark
    )
    assert local["session_count_28d"].sum() > 0 and local["engaged_session_rate_28d"].between(0, 1).all()
    assert local["active_days_28d"].max() > 1 and local["category_distinct_90d"].max() > 1
    # every feature of the spec takes several values here, so the comparison covers each formula
    flat = [d.name for d in feature_defs(cfg) if local[d.name].nunique(dropna=True) < 2]
    assert flat == [], f"features constant on the test data: {flat}"
    _assert_same(local, remote)


def test_the_spark_native_entry_keeps_a_dataframe_and_treats_optional_columns_as_optional(
    spark: Any,
) -> None:
    import engage.spark
    from engage.spark.feature_engine import _to_spark

    events, _, users = _random_log(600, seed=3)
    bare = events.select(s.USER_ID, s.TS, s.EVENT_TYPE)  # no session_id, category or amount
    dates = [datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)]
    cfg = FeatureConfig(windows=(7, 28))
    frame = engage.spark.features(
        spark,
        spark.createDataFrame(bare.to_pandas()),
        dates,
        cfg,
        users=_to_spark(spark, users, {s.USER_ID: "string", s.SIGNUP_TS: "timestamp", "region": "string"}),
    )
    assert type(frame).__name__ == "DataFrame" and not isinstance(frame, pd.DataFrame)
    types = dict(frame.dtypes)
    names = [d.name for d in feature_defs(cfg)]
    assert frame.columns == [s.USER_ID, s.AS_OF, *names, "region"]
    assert types[s.AS_OF] == "timestamp" and types["top_category"] == "string"
    assert {types[n] for n in names if n != "top_category"} == {"double"}
    nulls = bare.with_columns(
        pl.lit(None, pl.String).alias("session_id"),
        pl.lit(None, pl.String).alias("category"),
        pl.lit(None, pl.Float64).alias("amount"),
    )
    local = build_features(nulls, dates, config=cfg, users=users.select(s.USER_ID, s.SIGNUP_TS, "region"))
    remote = frame.toPandas().sort_values([s.AS_OF, s.USER_ID], kind="stable", ignore_index=True)
    stamps = remote[s.AS_OF]
    remote[s.AS_OF] = (stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps).astype(
        "datetime64[us, UTC]"
    )
    _assert_same(local, remote)


@pytest.mark.realdata
def test_spark_matches_polars_on_online_retail_ii(spark: Any, shared_data: Any) -> None:
    from engage.datasets.online_retail_ii import load_online_retail_ii
    from engage.spark import build_features_spark

    path = shared_data / "online_retail_ii" / "online_retail_II_2009-2010.parquet"
    events = load_online_retail_ii(path).accepted
    # a subset of customers keeps Spark under a minute; every line of theirs is kept
    customers = events.select(pl.col(s.USER_ID).unique().sort().head(400))
    events = events.join(customers, on=s.USER_ID, how="semi")
    dates = [datetime(2010, 6, 1, tzinfo=UTC), datetime(2010, 11, 20, 15, 0, tzinfo=UTC)]
    cfg = FeatureConfig()
    local = build_features(events, dates, config=cfg)
    remote = build_features_spark(events, dates, config=cfg, spark=spark)
    assert local["refund_count_90d"].sum() > 0 and local["top_category"].nunique() > 2
    assert (local["amount_sum_90d"] != 0).any()
    _assert_same(local, remote)
