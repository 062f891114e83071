"""The standard features on Spark: the spec's formulas (``engage.features.spec``) compiled to Spark.

``features(spark, events, as_of, config)`` keeps the data on the executors and returns a Spark
DataFrame (the same columns, types and values as the polars engine); ``build_features_spark`` is the
pandas-returning wrapper for local inputs. Times are integer microseconds since the epoch (UTC), so a
window ``lo <= day < hi`` means the same as in polars.

How it stays fast without ``count_distinct``: the events are reduced once to one row per (user,
age-day) holding each reduction's partial (a count, a sum, a min/max, a flag for distinct days); the
windowed reductions then sum those partials over the far smaller table. Sessions and categories are
rolled up by (user, key) once, and their per-user counts are conditional sums as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import FeatureConfig
from engage.features import formula as f
from engage.features.formula import DAY_US
from engage.features.polars_engine import AMOUNT_SCALE, _us
from engage.features.spec import EVENTS, EXPOSURES, INPUT_COLUMNS, feature_defs, feature_tables
from engage.spark.session import local_spark

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession
    from pyspark.sql import DataFrame as SparkFrame

Node = f.Agg | f.TopKey
_EVENT_TYPES = {
    s.USER_ID: "string",
    s.TS: "timestamp",
    s.EVENT_TYPE: "string",
    "session_id": "string",
    "category": "string",
    "amount": "double",
}
_EXPOSURE_TYPES = {s.USER_ID: "string", s.TS: "timestamp", s.MESSAGE_ID: "string", s.CHANNEL: "string"}
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "!=": lambda a, b: a != b,
    "&": lambda a, b: a & b,
    "|": lambda a, b: a | b,
}


def _row(e: f.Expr) -> Column:
    """A row-level expression (a reduction's ``where``/``of``) over a table's rows."""
    from pyspark.sql import functions as F

    if isinstance(e, f.Col):
        return F.col({"day": "__d", "age_us": "__us"}.get(e.name, e.name))
    if isinstance(e, f.Lit):
        return F.lit(e.value)
    if isinstance(e, f.Op):
        out: Column = _OPS[e.op](_row(e.a), _row(e.b))
        return out
    if isinstance(e, f.IsIn):
        return _row(e.a).isin(list(e.values))
    if isinstance(e, f.NotNull):
        return _row(e.a).isNotNull()
    if isinstance(e, f.IsNull):
        return _row(e.a).isNull()
    raise TypeError(f"{type(e).__name__} is not a row-level expression")


def _window(a: f.Agg) -> Column | None:
    """``lo <= day < hi`` on the rows' age-day (None when the reduction reads every day)."""
    from pyspark.sql import functions as F

    d = F.col("__d")
    parts = ([d >= a.lo] if a.lo > 0 else []) + ([d < a.hi] if a.hi is not None else [])
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else parts[0] & parts[1]


def _and(a: Column | None, b: Column | None) -> Column | None:
    return a if b is None else b if a is None else a & b


def _value(a: f.Agg) -> tuple[Column, bool]:
    """The reduced value and whether it is an amount (summed exactly as integer millionths)."""
    from pyspark.sql import functions as F

    assert a.of is not None
    if a.of == f.Col("amount"):
        return F.bround(_row(a.of) * AMOUNT_SCALE, 0).cast("long"), True
    return _row(a.of), False


def _finish(kind: str, total: Column, n: Column | None, scaled: bool) -> Column:
    """A reduction's value from its aggregated parts (like the polars compiler's)."""
    from pyspark.sql import functions as F

    if kind in ("count", "distinct"):
        return F.coalesce(total, F.lit(0)).cast("double")
    if kind == "sum":
        total = F.coalesce(total, F.lit(0))
    if kind == "mean":
        assert n is not None
        total = F.when(n > 0, total / n)
    return total / AMOUNT_SCALE if scaled else total


def _direct(nodes: Sequence[Node], key: str | None = None) -> tuple[list[Column], list[Column]]:
    """One group-by's aggregations and the reductions' values after it (``__v{i}``), row by row."""
    from pyspark.sql import functions as F

    aggs: list[Column] = []
    finals: list[Column] = []
    for i, a in enumerate(nodes):
        name = f"__v{i}"
        if isinstance(a, f.TopKey):
            assert key is not None
            w = F.col(a.weight)
            # the key with the largest positive weight, ties to the smallest key
            order = F.when(w > 0, F.struct((-w).alias("w"), F.col(key).alias("k")))
            aggs.append(F.min_by(F.when(w > 0, F.col(key)), order).alias(name))
            finals.append(F.col(name))
            continue
        cond = _and(None if a.where is None else _row(a.where), _window(a))
        if a.kind == "count":
            aggs.append(F.count(F.lit(1) if cond is None else F.when(cond, 1)).alias(name))
            finals.append(_finish("count", F.col(name), None, False))
            continue
        value, scaled = _value(a)
        picked = value if cond is None else F.when(cond, value)
        if a.kind == "distinct":
            aggs.append(F.count_distinct(picked).alias(name))
        elif a.kind == "mean":
            aggs += [F.sum(picked).alias(name), F.count(picked).alias(name + "n")]
        else:
            aggs.append(getattr(F, a.kind)(picked).alias(name))
        finals.append(_finish(a.kind, F.col(name), F.col(name + "n"), scaled))
    return aggs, finals


def _by_day(before: SparkFrame, nodes: Sequence[Node]) -> SparkFrame:
    """The events' reductions through one (user, age-day) pre-aggregation, then windowed sums.

    Each reduction's partial per day ignores the window (count, sum, min/max, a 0/1 flag for
    distinct days); the window then picks days, which is exact because a day is one age-day.
    """
    from pyspark.sql import functions as F

    partials: dict[tuple[str, f.Expr | None, f.Expr | None], str] = {}
    day_aggs: list[Column] = []

    def partial(kind: str, a: f.Agg) -> str:
        slot = (kind, a.of, a.where)
        if slot not in partials:
            name = partials[slot] = f"__p{len(partials)}"
            cond = None if a.where is None else _row(a.where)
            if kind == "count":
                day_aggs.append(F.count(F.lit(1) if cond is None else F.when(cond, 1)).alias(name))
            elif kind == "flag":
                day_aggs.append(F.max(F.lit(1) if cond is None else F.when(cond, 1)).alias(name))
            else:
                value, _ = _value(a)
                picked = value if cond is None else F.when(cond, value)
                fn = {"n": F.count, "sum": F.sum, "min": F.min, "max": F.max}[kind]
                day_aggs.append(fn(picked).alias(name))
        return partials[slot]

    aggs: list[Column] = []
    finals: list[Column] = []
    for i, a in enumerate(nodes):
        name = f"__v{i}"
        assert isinstance(a, f.Agg), "only rollups have a top key"
        if a.kind == "distinct" and a.of != f.Col("day"):
            raise ValueError(f"distinct {a.of} over the events: state it as a rollup table")
        win = _window(a)

        def over(p: str, win: Column | None = win) -> Column:
            return F.col(p) if win is None else F.when(win, F.col(p))

        if a.kind in ("count", "distinct"):
            aggs.append(F.sum(over(partial("count" if a.kind == "count" else "flag", a))).alias(name))
            finals.append(_finish(a.kind, F.col(name), None, False))
            continue
        scaled = a.of == f.Col("amount")
        if a.kind == "mean":
            aggs += [
                F.sum(over(partial("sum", a))).alias(name),
                F.sum(over(partial("n", a))).alias(name + "n"),
            ]
        else:
            merge = {"sum": F.sum, "min": F.min, "max": F.max}[a.kind]
            aggs.append(merge(over(partial(a.kind, a))).alias(name))
        finals.append(_finish(a.kind, F.col(name), F.col(name + "n"), scaled))
    daily = before.groupBy(s.USER_ID, "__d").agg(*day_aggs)
    return daily.groupBy(s.USER_ID).agg(*aggs).select(s.USER_ID, *finals_named(finals))


def finals_named(finals: Sequence[Column]) -> list[Column]:
    return [c.alias(f"__v{i}") for i, c in enumerate(finals)]


def _post(e: f.Expr, done: dict[Node, str], given: set[str], a_us: int) -> Column:
    """A feature formula over the per-user reductions (columns ``done``), after the tables are joined."""
    from pyspark.sql import functions as F

    if isinstance(e, f.Agg | f.TopKey):
        return F.col(done[e]) if e in done else F.lit(None).cast("double")
    if isinstance(e, f.Lit):
        return F.lit(e.value)
    if isinstance(e, f.Op):
        out: Column = _OPS[e.op](_post(e.a, done, given, a_us), _post(e.b, done, given, a_us))
        return out
    if isinstance(e, f.Ratio):
        num, den = _post(e.num, done, given, a_us), _post(e.den, done, given, a_us)
        return F.when(den > 0, num / den).otherwise(F.lit(e.empty).cast("double"))
    if isinstance(e, f.Clip):
        x = _post(e.a, done, given, a_us)
        return F.when(x.isNotNull(), F.least(F.greatest(x, F.lit(e.lo)), F.lit(e.hi)))
    if isinstance(e, f.Greatest):
        return F.greatest(_post(e.a, done, given, a_us), _post(e.b, done, given, a_us))
    if isinstance(e, f.IfGiven):
        return _post(e.then if e.table in given else e.otherwise, done, given, a_us)
    if isinstance(e, f.SinceUser):
        if f"users.{e.column}" not in given:
            return F.lit(None).cast("double")
        return (F.lit(a_us) - F.unix_micros(F.col(e.column))) / DAY_US
    raise TypeError(f"{type(e).__name__} cannot appear in a feature formula")


def _nodes(config: FeatureConfig) -> dict[str, list[Node]]:
    """Each table's reductions, in order of first use, without repeats."""
    by_table: dict[str, dict[Node, None]] = {}
    for d in feature_defs(config):
        found: list[Node] = [*f.aggs_of(d.formula), *f.top_keys_of(d.formula)]
        for node in found:
            by_table.setdefault(node.table, {}).setdefault(node, None)
    return {t: list(n) for t, n in by_table.items()}


def _aged(rows: SparkFrame, a_us: int) -> SparkFrame:
    """Rows before as_of with their age in microseconds (``__us``) and whole days (``__d``)."""
    from pyspark.sql import functions as F

    age = F.lit(a_us) - F.col("__ts")
    aged = rows.filter(F.col("__ts") < a_us).withColumn("__us", age)
    return aged.withColumn("__d", F.expr(f"__us div {DAY_US}"))  # integer division: exact


def _one_as_of(
    ev: SparkFrame,
    ahead: dict[str, SparkFrame],
    exp: SparkFrame | None,
    users: SparkFrame | None,
    as_of: datetime,
    config: FeatureConfig,
) -> SparkFrame:
    from pyspark.sql import functions as F
    from pyspark.sql.types import TimestampNTZType, TimestampType

    a_us = _us(as_of)
    nodes, before = _nodes(config), _aged(ev, a_us)
    done: dict[Node, str] = {}

    def named(frame: SparkFrame, table: str, table_nodes: Sequence[Node]) -> SparkFrame:
        names = {n: f"__{table}_{i}" for i, n in enumerate(table_nodes)}
        done.update(names)
        return frame.select(s.USER_ID, *[F.col(f"__v{i}").alias(names[n]) for i, n in enumerate(table_nodes)])

    frame = named(_by_day(before, nodes.get(EVENTS, [])), EVENTS, nodes.get(EVENTS, []))
    for t in feature_tables(config):
        table_nodes = nodes.get(t.name, [])
        if isinstance(t, f.Rollup):
            inner: list[Node] = list(dict.fromkeys(n for _, c in t.columns for n in f.aggs_of(c)))
            inner_aggs, inner_finals = _direct(inner)
            inner_done = {n: f"__v{i}" for i, n in enumerate(inner)}
            rows = (
                before.filter(F.col(t.key).isNotNull())
                .groupBy(s.USER_ID, t.key)
                .agg(*inner_aggs)
                .select(s.USER_ID, t.key, *finals_named(inner_finals))
                .select(
                    s.USER_ID,
                    t.key,
                    *[
                        _post(c, inner_done, set(), a_us).alias("__d" if n == "day" else n)
                        for n, c in t.columns
                    ],
                )
            )
            aggs, finals = _direct(table_nodes, key=t.key)
        else:
            rows = _aged(ahead[t.name], a_us)
            aggs, finals = _direct(table_nodes)
        reduced = rows.groupBy(s.USER_ID).agg(*aggs).select(s.USER_ID, *finals_named(finals))
        frame = frame.join(named(reduced, t.name, table_nodes), on=s.USER_ID, how="left")
    given: set[str] = set()
    if exp is not None:
        given.add(EXPOSURES)
        exp_nodes = nodes.get(EXPOSURES, [])
        rows = _aged(exp, a_us)
        his = [n.hi for n in exp_nodes if isinstance(n, f.Agg)]
        if his and None not in his:  # only the longest window is read
            rows = rows.filter(F.col("__d") < max(h for h in his if h is not None))
        aggs, finals = _direct(exp_nodes)
        reduced = rows.groupBy(s.USER_ID).agg(*aggs).select(s.USER_ID, *finals_named(finals))
        frame = frame.join(named(reduced, EXPOSURES, exp_nodes), on=s.USER_ID, how="left")
    if users is not None:
        stamps = [
            x.name for x in users.schema.fields if isinstance(x.dataType, TimestampType | TimestampNTZType)
        ]
        given.update(f"users.{c}" for c in stamps)
        if stamps:
            frame = frame.join(users.select(s.USER_ID, *stamps), on=s.USER_ID, how="left")
    out = [F.timestamp_micros(F.lit(a_us)).alias(s.AS_OF)]
    for d in feature_defs(config):
        value = _post(d.formula, done, given, a_us)
        value = value if d.kind == "category" else value.cast("double")
        out.append((value if d.fill is None else F.coalesce(value, F.lit(d.fill))).alias(d.name))
    return frame.select(s.USER_ID, *out)


def _lookaheads(ev: SparkFrame, config: FeatureConfig) -> dict[str, SparkFrame]:
    """Each lookahead table (all snapshot dates share it): rows with the gap to the next match."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    out = {}
    following = Window.partitionBy(s.USER_ID).orderBy("__ts").rangeBetween(0, Window.unboundedFollowing)
    for t in feature_tables(config):
        if isinstance(t, f.Lookahead):
            rows, until = _row(t.rows), _row(t.until)
            out[t.name] = (
                ev.filter(rows | until)
                .withColumn("__next", F.min(F.when(until, F.col("__ts"))).over(following))
                .filter(rows)
                .select(s.USER_ID, "__ts", (F.col("__next") - F.col("__ts")).alias("gap_us"))
            )
    return out


MAX_FIELDS = 1_000


def _keep_codegen(spark: SparkSession) -> None:
    """Raise ``spark.sql.codegen.maxFields`` to ``MAX_FIELDS`` when lower (a session setting).

    The per-user aggregation has one field per reduction; past the default limit (100) Spark runs
    it without whole-stage code generation, measured 2.5x slower on 1M events in local[2].
    """
    key = "spark.sql.codegen.maxFields"
    current = spark.conf.get(key, None)
    if current is None or int(current) < MAX_FIELDS:
        spark.conf.set(key, str(MAX_FIELDS))


def features(
    spark: SparkSession,
    events: SparkFrame,
    as_of: datetime | Sequence[datetime],
    config: FeatureConfig,
    users: SparkFrame | None = None,
    exposures: SparkFrame | None = None,
) -> SparkFrame:
    """The standard features as a Spark DataFrame; nothing is collected to the driver.

    Columns: ``user_id``, ``as_of`` (timestamp), the spec's features in order (double, ``top_category``
    string), then the users' other columns (booleans as double) in name order; one row per user with
    an event before each as_of. The optional event columns (``session_id``, ``category``, ``amount``)
    may be missing. Callers reading the events several times may cache them first. Sets
    ``spark.sql.codegen.maxFields`` (see :func:`_keep_codegen`).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType

    _keep_codegen(spark)
    dates = [as_of] if isinstance(as_of, datetime) else list(as_of)
    present = set(events.columns)
    ev = events.select(
        *[F.col(c) if c in present else F.lit(None).cast(t).alias(c) for c, t in _EVENT_TYPES.items()]
    ).withColumn("__ts", F.unix_micros(F.col(s.TS)))
    ahead = _lookaheads(ev, config)
    exp = None
    if exposures is not None:
        exp = exposures.select(*_EXPOSURE_TYPES).withColumn("__ts", F.unix_micros(F.col(s.TS)))
    parts = [_one_as_of(ev, ahead, exp, users, d, config) for d in dates]
    frame = parts[0]
    for part in parts[1:]:
        frame = frame.unionByName(part)
    if users is not None:
        attrs = users.drop(s.SIGNUP_TS)
        cast = [
            F.col(x.name).cast("double").alias(x.name)
            if isinstance(x.dataType, BooleanType)
            else F.col(x.name)
            for x in attrs.schema.fields
        ]
        frame = frame.join(attrs.select(*cast), on=s.USER_ID, how="left")
    names = [d.name for d in feature_defs(config)]
    extra = sorted(c for c in frame.columns if c not in names and c not in (s.USER_ID, s.AS_OF))
    return frame.select(s.USER_ID, s.AS_OF, *names, *extra)


def _spark_type(dtype: pl.DataType) -> str:
    """A Spark SQL type for a polars column type (for local frames handed to Spark)."""
    if isinstance(dtype, pl.Datetime):
        return "timestamp"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_integer():
        return "bigint"
    if dtype.is_float():
        return "double"
    return "string"


def _to_spark(spark: SparkSession, frame: pl.DataFrame | pd.DataFrame, columns: dict[str, str]) -> SparkFrame:
    """A Spark DataFrame with an explicit schema (all-null columns cannot be inferred)."""
    pdf = frame.to_pandas() if isinstance(frame, pl.DataFrame) else frame.copy()
    for name in columns:
        if name not in pdf.columns:
            pdf[name] = None
    pdf = pdf[list(columns)].astype(object).where(pdf[list(columns)].notna(), None)
    ddl = ", ".join(f"`{n}` {t}" for n, t in columns.items())
    return spark.createDataFrame(pdf, schema=ddl)


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
    """:func:`features` for local inputs, collected as pandas (the same table as the polars engine).

    For tests and small runs: the result passes through the driver; jobs at scale call
    :func:`features` and write its DataFrame from the executors.
    """
    spark = spark if spark is not None else local_spark()
    if isinstance(events, str | Path):
        ev = spark.read.parquet(str(events))
        ev = ev.select(*[c for c in INPUT_COLUMNS if c in ev.columns])
    else:
        ev = _to_spark(spark, events, _EVENT_TYPES)
    ev = ev.cache()  # read by each table's pass
    exp = None if exposures is None else _to_spark(spark, exposures, _EXPOSURE_TYPES)
    u = None
    if users is not None:
        upl = users if isinstance(users, pl.DataFrame) else pl.from_pandas(users)
        u = _to_spark(spark, upl, {c: _spark_type(t) for c, t in upl.schema.items()})
    try:
        frame: pd.DataFrame = features(spark, ev, as_of, config, users=u, exposures=exp).toPandas()
    finally:
        ev.unpersist()
    if progress:
        n = 1 if isinstance(as_of, datetime) else len(as_of)
        progress(n, n)
    stamps = pd.to_datetime(frame[s.AS_OF])
    frame[s.AS_OF] = (stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps).astype(
        "datetime64[us, UTC]"
    )
    return frame.sort_values([s.AS_OF, s.USER_ID], kind="stable").reset_index(drop=True)
