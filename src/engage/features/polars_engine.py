"""The embedded feature engine: compiles the spec's formulas to polars (lazy, streaming), point in time.

A feature for (user, as_of) reads only events with ``ts < as_of`` (see ``engage.features.formula``
for the tables and ``engage.features.spec`` for the formulas; Spark compiles the same formulas in
``engage.spark.feature_engine``). Users are those with an event before as_of.

How the compiled plan stays fast (one pass over the events per table, no per-window ``n_unique``):

- Every row gets its integer age-day ``d = (as_of - ts) // 1 day``; windows are integer, so every
  windowed count is a plain sum of flags, and all of a table's reductions run in one group-by.
- Distinct age-days in bounded windows are 64-bit masks of the days seen (bit ``d`` set), counted
  per window with a popcount; unbounded ones use ``n_unique``.
- Rollup tables (sessions, categories) group the events by one 64-bit hash of (user, key), then
  join their user by a 64-bit hash of user_id: two keys merge only on a hash collision (about 1e-19
  per pair). Event types are integer codes (an Enum cast); strings are only the user and rollup keys.
- Amounts are summed as integer millionths: an integer sum does not depend on the order threads merge
  partial sums in, so a re-run gives the same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import FeatureConfig
from engage.features import formula as f
from engage.features.formula import DAY_US
from engage.features.spec import EVENTS, EXPOSURES, INPUT_COLUMNS, FeatureDef, feature_defs, feature_tables

AMOUNT_SCALE = 1_000_000  # amounts are summed exactly in millionths (int64: up to ~9e12 per user)
MAX_MASK_DAYS = 640  # distinct days in windows up to this long use bit masks, longer ones n_unique
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TYPE_CODE = {t: i for i, t in enumerate(s.KNOWN_EVENT_TYPES)}
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: (user hash * _MIX) xor key hash is a rollup key
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
Progress = Callable[[int, int], None]


def _as_lazy(events: pl.DataFrame | pl.LazyFrame | pd.DataFrame) -> pl.LazyFrame:
    if isinstance(events, pd.DataFrame):
        events = pl.from_pandas(events)
    return events.lazy() if isinstance(events, pl.DataFrame) else events


def _us(d: datetime) -> int:
    """Microseconds since the epoch for a tz-aware (or UTC-naive) datetime, exactly."""
    d = d if d.tzinfo is not None else d.replace(tzinfo=UTC)
    delta = d - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _hold_if_small(events: pl.LazyFrame, limit: int) -> pl.LazyFrame:
    """The events read once when at most ``limit`` rows: the engine's passes then share them.

    Counting a plain Parquet scan reads only the files' metadata.
    """
    if limit <= 0:
        return events
    rows = events.select(pl.len()).collect(engine="streaming").item()
    if rows > limit:
        return events
    present = events.collect_schema().names()
    return events.select([c for c in present if c in INPUT_COLUMNS]).collect(engine="streaming").lazy()


def _utc(name: str, dtype: pl.Datetime) -> pl.Expr:
    """A timestamp column as microseconds in UTC (a zone-less one is taken as UTC)."""
    col = pl.col(name).dt.cast_time_unit("us")
    return col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")


def _row(e: f.Expr) -> pl.Expr:
    """A row-level expression (a reduction's ``where``/``of``) over a table's rows."""
    if isinstance(e, f.Col):
        return pl.col({"day": "__d", "age_us": "__us"}.get(e.name, e.name))
    if isinstance(e, f.Lit):
        return pl.lit(e.value)
    if isinstance(e, f.Op):
        return _OPS[e.op](_row(e.a), _row(e.b))
    if isinstance(e, f.IsIn):
        if e.a == f.Col(s.EVENT_TYPE) and all(v in _TYPE_CODE for v in e.values):
            codes = [_TYPE_CODE[v] for v in e.values]
            return pl.col("__et") == codes[0] if len(codes) == 1 else pl.col("__et").is_in(codes)
        return _row(e.a).is_in(list(e.values))
    if isinstance(e, f.NotNull):
        return _row(e.a).is_not_null()
    if isinstance(e, f.IsNull):
        return _row(e.a).is_null()
    raise TypeError(f"{type(e).__name__} is not a row-level expression")


def _condition(a: f.Agg) -> pl.Expr | None:
    """The rows an aggregate reads: its ``where`` and its window on the age-day."""
    parts = [] if a.where is None else [_row(a.where)]
    d = pl.col("__d")
    if a.lo > 0:
        parts.append(d >= a.lo)
    if a.hi is not None:
        parts.append(d < a.hi)
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out & p
    return out


@dataclass
class _Reduction:
    """One group-by's aggregations and, per reduction, its value over the aggregated columns."""

    aggs: list[pl.Expr]
    finals: dict[f.Agg | f.TopKey, pl.Expr]


def _reduce(nodes: Sequence[f.Agg | f.TopKey], prefix: str) -> _Reduction:
    """Compile a table's reductions to one group-by (``aggs``) and their values after it (``finals``)."""
    out = _Reduction([], {})
    masks: dict[f.Expr | None, int] = {}  # distinct-day condition -> days covered by its mask words
    for a in nodes:
        day_agg = isinstance(a, f.Agg) and a.kind == "distinct" and a.of == f.Col("day")
        if day_agg and isinstance(a, f.Agg) and a.hi is not None and a.hi <= MAX_MASK_DAYS:
            masks[a.where] = max(masks.get(a.where, 0), a.hi)
    mask_names: dict[f.Expr | None, str] = {}
    for i, (where, days) in enumerate(masks.items()):
        name = f"{prefix}m{i}"
        mask_names[where] = name
        d = pl.col("__d")
        cond = None if where is None else _row(where)
        for j in range((days + 63) // 64):
            lo = 64 * j
            bit = pl.lit(2, pl.UInt64).pow((d - lo).clip(0, 63).cast(pl.UInt32))
            inside = (d >= lo) & (d < lo + 64) if cond is None else (d >= lo) & (d < lo + 64) & cond
            out.aggs.append(
                pl.when(inside).then(bit).otherwise(pl.lit(0, pl.UInt64)).bitwise_or().alias(f"{name}_{j}")
            )
    for i, a in enumerate(nodes):
        name = f"{prefix}{i}"
        col = pl.col(name)
        if isinstance(a, f.TopKey):
            w = pl.col(a.weight)
            out.aggs.append(pl.col("__key").filter((w == w.max()) & (w > 0)).min().alias(name))
            out.finals[a] = col
            continue
        cond = _condition(a)
        if a.kind == "count":
            out.aggs.append(pl.len().alias(name) if cond is None else cond.sum().alias(name))
            out.finals[a] = col.cast(pl.Float64)
            continue
        assert a.of is not None
        value = _row(a.of)
        scaled = a.of == f.Col("amount")
        if scaled:
            value = (value * AMOUNT_SCALE).round().cast(pl.Int64)
        picked = value if cond is None else pl.when(cond).then(value)
        if a.kind == "distinct" and a.where in mask_names and a.of == f.Col("day") and a.hi is not None:
            total: pl.Expr = pl.lit(0, pl.UInt32)
            for j in range((masks[a.where] + 63) // 64):
                lo, hi = max(a.lo - 64 * j, 0), min(a.hi - 64 * j, 64)
                if lo < hi:
                    bits = ((1 << hi) - 1) ^ ((1 << lo) - 1)
                    word = pl.col(f"{mask_names[a.where]}_{j}")
                    total = total + (word & pl.lit(bits, pl.UInt64)).bitwise_count_ones()
            out.finals[a] = total.cast(pl.Float64)
        elif a.kind == "distinct":
            kept = value if cond is None else value.filter(cond)
            out.aggs.append(kept.drop_nulls().n_unique().alias(name))
            out.finals[a] = col.cast(pl.Float64)
        elif a.kind == "mean":
            out.aggs += [picked.sum().alias(name), picked.count().alias(f"{name}n")]
            mean = col / pl.col(f"{name}n")
            out.finals[a] = pl.when(pl.col(f"{name}n") > 0).then(mean / AMOUNT_SCALE if scaled else mean)
        else:
            out.aggs.append(getattr(picked, a.kind)().alias(name))
            out.finals[a] = col / AMOUNT_SCALE if scaled else col
    return out


def _post(e: f.Expr, done: dict[f.Agg | f.TopKey, str], given: set[str], as_of: datetime) -> pl.Expr:
    """A feature formula over the per-user reductions (columns ``done``), after the tables are joined."""
    if isinstance(e, f.Agg | f.TopKey):
        return pl.col(done[e]) if e in done else pl.lit(None, pl.Float64)
    if isinstance(e, f.Lit):
        return pl.lit(e.value)
    if isinstance(e, f.Op):
        return _OPS[e.op](_post(e.a, done, given, as_of), _post(e.b, done, given, as_of))
    if isinstance(e, f.Ratio):
        num, den = _post(e.num, done, given, as_of), _post(e.den, done, given, as_of)
        return pl.when(den > 0).then(num / den).otherwise(pl.lit(e.empty, pl.Float64))
    if isinstance(e, f.Clip):
        return _post(e.a, done, given, as_of).clip(e.lo, e.hi)
    if isinstance(e, f.Greatest):
        return pl.max_horizontal(_post(e.a, done, given, as_of), _post(e.b, done, given, as_of))
    if isinstance(e, f.IfGiven):
        return _post(e.then if e.table in given else e.otherwise, done, given, as_of)
    if isinstance(e, f.SinceUser):
        if f"users.{e.column}" not in given:
            return pl.lit(None, pl.Float64)
        return (pl.lit(as_of).cast(s.TS_DTYPE) - pl.col(e.column)).dt.total_microseconds() / DAY_US
    raise TypeError(f"{type(e).__name__} cannot appear in a feature formula")


def _nodes(
    defs: Sequence[FeatureDef], tables: Sequence[f.Rollup | f.Lookahead]
) -> dict[str, list[f.Agg | f.TopKey]]:
    """Each table's reductions, in order of first use, without repeats."""
    by_table: dict[str, dict[f.Agg | f.TopKey, None]] = {}
    for d in defs:
        found: list[f.Agg | f.TopKey] = [*f.aggs_of(d.formula), *f.top_keys_of(d.formula)]
        for node in found:
            by_table.setdefault(node.table, {}).setdefault(node, None)
    del tables
    return {t: list(nodes) for t, nodes in by_table.items()}


def _aged(rows: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """Rows before as_of with their age in microseconds (``__us``) and whole days (``__d``)."""
    a_us = _us(as_of)
    age = pl.lit(a_us, pl.Int64) - pl.col(s.TS).dt.epoch("us")
    return (
        rows.filter(pl.col(s.TS) < pl.lit(as_of).cast(s.TS_DTYPE))
        .with_columns(age.alias("__us"))
        .with_columns((pl.col("__us") // DAY_US).cast(pl.Int32).alias("__d"))
    )


def _one_as_of(
    ev: pl.LazyFrame,
    as_of: datetime,
    config: FeatureConfig,
    lookaheads: dict[str, pl.LazyFrame],
    exposures: pl.LazyFrame | None,
    users: pl.DataFrame | None,
) -> pl.LazyFrame:
    defs, tables = feature_defs(config), feature_tables(config)
    nodes = _nodes(defs, tables)
    before = _aged(ev, as_of)
    done: dict[f.Agg | f.TopKey, str] = {}

    def finish(grouped: pl.LazyFrame, key: str, table: str, red: _Reduction) -> pl.LazyFrame:
        names = {node: f"__{table}_{i}" for i, node in enumerate(red.finals)}
        done.update(names)
        return grouped.select(key, *[red.finals[n].alias(names[n]) for n in red.finals])

    # the events: one group-by per user (each reduction streams the events on its own: one plan
    # sharing the scan would buffer the input for the slowest branch; the reduced tables are small)
    red = _reduce(nodes.get(EVENTS, []), "__e")
    frame = (
        finish(before.group_by(s.USER_ID).agg(red.aggs), s.USER_ID, EVENTS, red)
        .with_columns(pl.col(s.USER_ID).hash(seed=0).alias("__uh"))
        .collect(engine="streaming")
        .lazy()
    )
    for t in tables:
        if isinstance(t, f.Rollup):
            cols = dict(t.columns)
            inner = [n for c in cols.values() for n in f.aggs_of(c)]
            inner_red = _reduce(list(dict.fromkeys(inner)), "__i")
            inner_done: dict[f.Agg | f.TopKey, str] = {
                n: f"__i{i}" for i, n in enumerate(dict.fromkeys(inner))
            }
            has_top = any(isinstance(n, f.TopKey) for n in nodes.get(t.name, []))
            rows = (
                before.filter(pl.col(t.key).is_not_null())
                .group_by("__k_" + t.key)
                .agg(
                    pl.col("__uh").first(),
                    *([pl.col(t.key).first().alias("__key")] if has_top else []),
                    *inner_red.aggs,
                )
                .with_columns([inner_red.finals[n].alias(inner_done[n]) for n in inner_done])
                .select(
                    "__uh",
                    *(["__key"] if has_top else []),
                    *[
                        _post(c, inner_done, set(), as_of).alias("__d" if name == "day" else name)
                        for name, c in cols.items()
                    ],
                )
            )
            red = _reduce(nodes.get(t.name, []), "__r")
            table = finish(rows.group_by("__uh").agg(red.aggs), "__uh", t.name, red)
            frame = frame.join(table.collect(engine="streaming").lazy(), on="__uh", how="left")
        else:
            rows = _aged(lookaheads[t.name], as_of)
            red = _reduce(nodes.get(t.name, []), "__l")
            frame = frame.join(
                finish(rows.group_by(s.USER_ID).agg(red.aggs), s.USER_ID, t.name, red),
                on=s.USER_ID,
                how="left",
            )
    given = set()
    if exposures is not None:
        given.add(EXPOSURES)
        exp_nodes = nodes.get(EXPOSURES, [])
        rows = _aged(exposures, as_of)
        his = [n.hi for n in exp_nodes if isinstance(n, f.Agg)]
        if his and None not in his:  # only the longest window is read
            rows = rows.filter(pl.col("__d") < max(h for h in his if h is not None))
        red = _reduce(exp_nodes, "__x")
        frame = frame.join(
            finish(rows.group_by(s.USER_ID).agg(red.aggs), s.USER_ID, EXPOSURES, red),
            on=s.USER_ID,
            how="left",
        )
    if users is not None:
        stamps = {c: dt for c, dt in users.schema.items() if isinstance(dt, pl.Datetime)}
        given.update(f"users.{c}" for c in stamps)
        if stamps:
            utc = [_utc(c, dt) for c, dt in stamps.items()]
            frame = frame.join(users.lazy().select(s.USER_ID, *utc), on=s.USER_ID, how="left")
    features = []
    for d in defs:
        value = _post(d.formula, done, given, as_of)
        value = value if d.kind == "category" else value.cast(pl.Float64)
        features.append(value.fill_null(d.fill) if d.fill is not None else value)
    return frame.select(
        s.USER_ID,
        pl.lit(as_of).cast(s.TS_DTYPE).alias(s.AS_OF),
        *[v.alias(d.name) for v, d in zip(features, defs, strict=True)],
    )


def _lookaheads(ev: pl.LazyFrame, config: FeatureConfig) -> dict[str, pl.LazyFrame]:
    """Each lookahead table, once for all snapshot dates: rows with the time of the next match."""
    out = {}
    for t in feature_tables(config):
        if not isinstance(t, f.Lookahead):
            continue
        rows = ev.filter(_row(t.rows)).select(s.USER_ID, s.TS).sort(s.TS)
        until = ev.filter(_row(t.until)).select(s.USER_ID, pl.col(s.TS).alias("__next")).sort("__next")
        joined = rows.join_asof(
            until, left_on=s.TS, right_on="__next", by=s.USER_ID, strategy="forward", check_sortedness=False
        ).with_columns((pl.col("__next") - pl.col(s.TS)).dt.total_microseconds().alias("gap_us"))
        out[t.name] = joined.collect(engine="streaming").lazy()
    return out


def build_features(
    events: pl.DataFrame | pl.LazyFrame | pd.DataFrame,
    as_of: datetime | Sequence[datetime],
    *,
    config: FeatureConfig,
    users: pl.DataFrame | pd.DataFrame | None = None,
    exposures: pl.DataFrame | pl.LazyFrame | pd.DataFrame | None = None,
    engine: str = "polars",
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Features for every user with an event before each as_of, sorted by (as_of, user_id)."""
    del engine
    dates = [as_of] if isinstance(as_of, datetime) else list(as_of)
    if isinstance(events, pl.LazyFrame):
        events = _hold_if_small(events, config.in_memory_events)
    # integer stand-ins: event type codes, a user hash and one 64-bit (user, key) hash per rollup
    uh = pl.col(s.USER_ID).hash(seed=0)
    rollup_keys = [t.key for t in feature_tables(config) if isinstance(t, f.Rollup)]
    ev = _as_lazy(events).with_columns(
        pl.col(s.EVENT_TYPE)
        .cast(pl.Enum(list(_TYPE_CODE)), strict=False)
        .to_physical()
        .cast(pl.Int8)
        .fill_null(-1)
        .alias("__et"),
        uh.alias("__uh"),
        *[(uh * pl.lit(_MIX, pl.UInt64) ^ pl.col(k).hash(seed=1)).alias("__k_" + k) for k in rollup_keys],
    )
    exp = _as_lazy(exposures) if exposures is not None else None
    u = None if users is None else users if isinstance(users, pl.DataFrame) else pl.from_pandas(users)
    ahead = _lookaheads(ev, config)
    parts = []
    for i, d in enumerate(dates):
        parts.append(_one_as_of(ev, d, config, ahead, exp, u).collect(engine="streaming"))
        if progress:
            progress(i + 1, len(dates))
    frame = pl.concat(parts, how="diagonal_relaxed")
    if u is not None:
        attrs = u.drop([c for c in (s.SIGNUP_TS,) if c in u.columns])
        attrs = attrs.with_columns(
            [pl.col(c).cast(pl.Float64) for c, dt in attrs.schema.items() if dt == pl.Boolean]
        )
        frame = frame.join(attrs, on=s.USER_ID, how="left")
    names = [d.name for d in feature_defs(config)]
    extra = [c for c in frame.columns if c not in names and c not in (s.USER_ID, s.AS_OF)]
    frame = frame.select(s.USER_ID, s.AS_OF, *names, *sorted(extra)).sort(s.AS_OF, s.USER_ID)
    return frame.to_pandas()
