"""Spark execution of the standard feature spec.

Mirrors ``engage.features.polars_engine`` feature by feature, with the same names, point-in-time
filters (``ts < as_of``), smoothing and fill rules, so a user who outgrows one machine changes only
``--engine spark``. Times are compared as integer microseconds since the epoch (UTC), like polars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import FeatureConfig
from engage.features.spec import feature_defs
from engage.spark.session import DAY_US, _us, local_spark

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession
    from pyspark.sql import DataFrame as SparkFrame

_COLUMNS = (s.USER_ID, s.TS, s.EVENT_TYPE, "session_id", "category", "amount")


def _to_spark(spark: SparkSession, frame: pl.DataFrame | pd.DataFrame, columns: dict[str, str]) -> SparkFrame:
    """A Spark DataFrame with an explicit schema (all-null columns cannot be inferred)."""
    pdf = frame.to_pandas() if isinstance(frame, pl.DataFrame) else frame.copy()
    for name in columns:
        if name not in pdf.columns:
            pdf[name] = None
    pdf = pdf[list(columns)].astype(object).where(pdf[list(columns)].notna(), None)
    ddl = ", ".join(f"`{n}` {t}" for n, t in columns.items())
    return spark.createDataFrame(pdf, schema=ddl)


def _one_as_of(
    ev: SparkFrame, carts: SparkFrame, exp: SparkFrame | None, as_of: datetime, config: FeatureConfig
) -> SparkFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    a = _us(as_of)
    before = (
        ev.filter(F.col("__us") < F.lit(a))
        .withColumn("__age", (F.lit(a) - F.col("__us")) / DAY_US)
        .withColumn("__d", F.expr(f"({a} - __us) div {DAY_US}"))
    )
    age, et = F.col("__age"), F.col(s.EVENT_TYPE)

    def cnt(cond: Column) -> Column:
        return F.sum(F.when(cond, 1.0).otherwise(0.0))

    aggs: list[Column] = []
    for w in config.windows:
        inside = age < w
        aggs += [cnt(inside & (et == t)).alias(f"{t}_count_{w}d") for t in s.KNOWN_EVENT_TYPES]
        aggs += [
            F.count_distinct(F.when(inside, F.col("session_id"))).cast("double").alias(f"session_count_{w}d"),
            F.count_distinct(F.when(inside, F.col("__d"))).cast("double").alias(f"active_days_{w}d"),
            F.coalesce(
                F.sum(F.when(inside & et.isin("purchase", "refund"), F.col("amount"))), F.lit(0.0)
            ).alias(f"amount_sum_{w}d"),
            F.coalesce(F.avg(F.when(inside & (et == "purchase"), F.col("amount"))), F.lit(0.0)).alias(
                f"amount_mean_{w}d"
            ),
            F.count_distinct(F.when(inside, F.col("category")))
            .cast("double")
            .alias(f"category_distinct_{w}d"),
        ]
    recent, prev = age < 7, (age >= 7) & (age < 35)

    def ratio(cond: Column) -> Column:
        return (cnt(recent & cond) / 7 + 1 / 28) / (cnt(prev & cond) / 28 + 1 / 28)

    aggs += [
        F.min(age).alias("days_since_last_event"),
        F.min(F.when(et == "purchase", age)).alias("days_since_last_purchase"),
        F.min(F.when(et == "session_start", age)).alias("days_since_last_session"),
        F.min(F.when(et == "email_open", age)).alias("days_since_last_email_open"),
        F.max(age).alias("tenure_days"),
        F.count_distinct(F.when(et == "purchase", F.col("__d"))).cast("double").alias("purchase_days_total"),
        F.max(F.when(et == "purchase", age)).alias("days_since_first_purchase"),
        F.coalesce(
            F.sum(F.when(et == "purchase", F.col("amount")))
            / F.count_distinct(F.when(et == "purchase", F.col("__d"))),
            F.lit(0.0),
        ).alias("purchase_day_amount_mean"),
        ratio(et == "purchase").alias("purchase_rate_ratio_7d_28d"),
        ratio(et == "session_start").alias("session_rate_ratio_7d_28d"),
        ratio(F.lit(True)).alias("event_rate_ratio_7d_28d"),
        (
            F.count_distinct(F.when(age < 28, F.col("__d"))).cast("double")
            - F.count_distinct(F.when((age >= 28) & (age < 56), F.col("__d"))).cast("double")
        ).alias("active_days_change_28d"),
    ]
    frame = before.groupBy(s.USER_ID).agg(*aggs)

    sess = (
        before.filter(F.col("session_id").isNotNull())
        .groupBy(s.USER_ID, "session_id")
        .agg(
            F.min(age).alias("__sage"),
            (F.floor((F.max("__us") - F.min("__us")) / 1_000_000) > config.engaged_session_seconds).alias(
                "__long"
            ),
            F.max(F.when(et == "purchase", 1).otherwise(0)).alias("__buy"),
            F.sum(F.when(et.isin("page_view", "product_view"), 1).otherwise(0)).alias("__views"),
        )
        .withColumn(
            "__engaged",
            F.when(F.col("__long") | (F.col("__buy") == 1) | (F.col("__views") >= 2), 1.0).otherwise(0.0),
        )
        .groupBy(s.USER_ID)
        .agg(
            *[
                F.coalesce(F.avg(F.when(F.col("__sage") < w, F.col("__engaged"))), F.lit(0.0)).alias(
                    f"engaged_session_rate_{w}d"
                )
                for w in config.windows
            ]
        )
    )
    by_user = Window.partitionBy(s.USER_ID)
    cat = (
        before.filter(F.col("category").isNotNull() & (age < 90))
        .groupBy(s.USER_ID, "category")
        .agg(F.count(F.lit(1)).alias("__n"))
        .withColumn("__rank", F.row_number().over(by_user.orderBy(F.desc("__n"), F.asc("category"))))
        .withColumn("__total", F.sum("__n").over(by_user))
        .filter(F.col("__rank") == 1)
        .select(
            s.USER_ID,
            F.col("category").alias("top_category"),
            (F.col("__n") / F.col("__total")).alias("top_category_share_90d"),
        )
    )
    horizon_us = config.cart_abandon_hours * 3_600 * 1_000_000
    abandoned = (
        carts.filter(F.col("__us") + horizon_us <= a)
        .filter(F.col("__next").isNull() | ((F.col("__next") - F.col("__us")) >= horizon_us))
        .withColumn("__cage", (F.lit(a) - F.col("__us")) / DAY_US)
        .groupBy(s.USER_ID)
        .agg(
            *[cnt(F.col("__cage") < w).alias(f"cart_abandon_count_{w}d") for w in config.windows],
            F.min("__cage").alias("days_since_last_cart_abandon"),
        )
    )
    frame = (
        frame.join(sess, on=s.USER_ID, how="left")
        .join(cat, on=s.USER_ID, how="left")
        .join(abandoned, on=s.USER_ID, how="left")
    )
    if exp is not None:
        eage = (F.lit(a) - F.col("__us")) / DAY_US
        fat = (
            exp.filter((F.col("__us") < a) & (F.col(s.MESSAGE_ID) != s.CONTROL_ARM))
            .withColumn("__eage", eage)
            .groupBy(s.USER_ID)
            .agg(
                cnt(F.col("__eage") < 7).alias("messages_received_7d"),
                cnt(F.col("__eage") < 28).alias("messages_received_28d"),
                *[
                    cnt((F.col("__eage") < w) & (F.col(s.CHANNEL) == "email")).alias(f"__emails_{w}d")
                    for w in config.windows
                ],
            )
        )
        frame = frame.join(fat, on=s.USER_ID, how="left")
    else:
        frame = frame.withColumn("messages_received_7d", F.lit(0.0)).withColumn(
            "messages_received_28d", F.lit(0.0)
        )
    for w in config.windows:
        opens, clicks = F.col(f"email_open_count_{w}d"), F.col(f"email_click_count_{w}d")
        received = F.coalesce(F.col(f"__emails_{w}d"), F.lit(0.0)) if exp is not None else opens
        frame = frame.withColumn(
            f"email_open_rate_{w}d",
            F.least(
                F.greatest(F.when(received > 0, opens / received).otherwise(0.0), F.lit(0.0)), F.lit(1.0)
            ),
        ).withColumn(
            f"email_click_rate_{w}d",
            F.least(F.greatest(F.when(opens > 0, clicks / opens).otherwise(0.0), F.lit(0.0)), F.lit(1.0)),
        )
    fill = (
        [f"cart_abandon_count_{w}d" for w in config.windows]
        + [f"engaged_session_rate_{w}d" for w in config.windows]
        + ["messages_received_7d", "messages_received_28d", "top_category_share_90d"]
    )
    frame = frame.fillna(0.0, subset=fill).fillna("none", subset=["top_category"])
    return frame.drop(*[f"__emails_{w}d" for w in config.windows])


def build_features_spark(
    events: str | Path | pl.DataFrame | pd.DataFrame,
    as_of: datetime | Sequence[datetime],
    *,
    config: FeatureConfig,
    users: pl.DataFrame | pd.DataFrame | None = None,
    exposures: pl.DataFrame | pd.DataFrame | None = None,
    spark: SparkSession | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """The standard features computed by Spark; same rows, columns and values as the polars engine."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = spark if spark is not None else local_spark()
    dates = [as_of] if isinstance(as_of, datetime) else list(as_of)
    if isinstance(events, str | Path):
        ev = spark.read.parquet(str(events)).select(*[c for c in _COLUMNS])
    else:
        ev = _to_spark(
            spark,
            events,
            {
                s.USER_ID: "string",
                s.TS: "timestamp",
                s.EVENT_TYPE: "string",
                "session_id": "string",
                "category": "string",
                "amount": "double",
            },
        )
    ev = ev.withColumn("__us", F.unix_micros(F.col(s.TS)))
    ev = ev.cache()
    # the first purchase at or after each add_to_cart (ties included), like polars' forward join_asof
    order = Window.partitionBy(s.USER_ID).orderBy("__us").rangeBetween(0, Window.unboundedFollowing)
    carts = (
        ev.filter(F.col(s.EVENT_TYPE).isin("add_to_cart", "purchase"))
        .withColumn("__next", F.min(F.when(F.col(s.EVENT_TYPE) == "purchase", F.col("__us"))).over(order))
        .filter(F.col(s.EVENT_TYPE) == "add_to_cart")
        .select(s.USER_ID, "__us", "__next")
        .cache()
    )
    exp = None
    if exposures is not None:
        exp = _to_spark(
            spark,
            exposures,
            {s.USER_ID: "string", s.TS: "timestamp", s.MESSAGE_ID: "string", s.CHANNEL: "string"},
        ).withColumn("__us", F.unix_micros(F.col(s.TS)))
    parts = []
    for i, d in enumerate(dates):
        part: pd.DataFrame = _one_as_of(ev, carts, exp, d, config).toPandas()
        part.insert(
            1, s.AS_OF, pd.Timestamp(d).tz_convert("UTC") if pd.Timestamp(d).tz else pd.Timestamp(d, tz="UTC")
        )
        parts.append(part)
        if progress:
            progress(i + 1, len(dates))
    ev.unpersist()
    carts.unpersist()
    frame = pd.concat(parts, ignore_index=True)
    frame[s.AS_OF] = frame[s.AS_OF].astype("datetime64[us, UTC]")
    names = [f.name for f in feature_defs(config)]
    if users is not None:
        u = users if isinstance(users, pl.DataFrame) else pl.from_pandas(users)
        u = u.with_columns([pl.col(c).cast(pl.Float64) for c, dt in u.schema.items() if dt == pl.Boolean])
        upd = u.to_pandas()
        if s.SIGNUP_TS in upd.columns:
            signup = frame[[s.USER_ID]].merge(upd[[s.USER_ID, s.SIGNUP_TS]], on=s.USER_ID, how="left")
            since = (frame[s.AS_OF] - signup[s.SIGNUP_TS].dt.tz_convert("UTC")).dt.total_seconds() / 86_400
            frame["tenure_days"] = pd.concat([frame["tenure_days"], since], axis=1).max(axis=1)
            upd = upd.drop(columns=[s.SIGNUP_TS])
        frame = frame.merge(upd, on=s.USER_ID, how="left")
    extra = sorted(c for c in frame.columns if c not in names and c not in (s.USER_ID, s.AS_OF))
    frame = frame[[s.USER_ID, s.AS_OF, *[n for n in names if n in frame.columns], *extra]]
    for name in names:
        if name in frame.columns and name != "top_category":
            frame[name] = frame[name].astype("float64")
    return frame.sort_values([s.AS_OF, s.USER_ID], kind="stable").reset_index(drop=True)
