"""The embedded feature engine (polars, lazy, streaming): one query per snapshot date, point in time.

A feature for (user, as_of) reads only events with ``ts < as_of``. Cart abandonment looks for the
next purchase within N hours, and only carts at least N hours older than as_of are judged, so the
purchase search never reaches as_of either. Users are those with an event before as_of.

How it stays fast (one pass over the events per reduction, no per-window ``n_unique``):

- Every event gets its integer age-day ``d = floor((as_of - ts) / 1 day)``; for an integer window
  ``w``, ``age < w`` iff ``d < w``, so every windowed count is a plain sum of ``d < w`` flags.
- Per user, one group-by computes all counts, sums, recencies and the active days, the latter as
  64-bit masks of the age-days seen (bit ``d`` set), counted per window with a popcount.
- Sessions are reduced to one row per (user, session), keyed by one 64-bit hash of both, holding the
  session's newest age-day and its engaged flag; ``session_count_{w}d`` counts the sessions whose
  newest age-day is ``< w`` (the same as distinct sessions among events in the window).
- Categories likewise: one row per (user, category code) with its newest age-day and its 90-day
  count; the top category is the most frequent, ties to the first name, without sorting.
- Event types and categories are integer codes (an Enum cast); strings are only the user key.

Semantics worth knowing (the Spark engine in ``engage.spark`` computes the same):

- ``active_days_{w}d`` counts distinct 24-hour periods before as_of (``d``), not calendar days;
  they are the same when as_of is at midnight UTC. ``active_days_change_28d`` is the count for
  ``d < 28`` minus the count for ``28 <= d < 56``.
- Sessions are told apart by a 64-bit hash of (user_id, session_id): two sessions of one user could
  merge only on a hash collision (about 1e-19 per pair); session and category rows join their user
  by a 64-bit hash of user_id likewise.
- An engaged session lasts more than ``engaged_session_seconds`` whole seconds, has a purchase, or has
  2+ page/product views, judged on its events before as_of.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import FeatureConfig
from engage.features.spec import INPUT_COLUMNS, feature_defs

DAY_US = 86_400 * 1_000_000
AMOUNT_SCALE = 1_000_000  # amounts are summed exactly in millionths (int64: up to ~9e12 per user)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TYPE_CODE = {t: i for i, t in enumerate(s.KNOWN_EVENT_TYPES)}
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: (user hash * _MIX) xor session hash is the session key
_MIX2 = 0xC2B2AE3D27D4EB4F  # another odd constant spreads category codes over the 64 bits
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


def _eager(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Run one reduction now with the streaming engine; later steps read the small result."""
    return frame.collect(engine="streaming").lazy()


def _one_as_of(
    ev: pl.LazyFrame,
    as_of: datetime,
    config: FeatureConfig,
    exposures: pl.LazyFrame | None,
    cart_next: pl.LazyFrame,
    categories: Sequence[str],
) -> pl.LazyFrame:
    as_of_lit = pl.lit(as_of).cast(s.TS_DTYPE)
    a_us = _us(as_of)
    before = ev.filter(pl.col(s.TS) < as_of_lit).with_columns(
        (pl.lit(a_us, pl.Int64) - pl.col(s.TS).dt.epoch("us")).alias("__us")
    )
    before = before.with_columns((pl.col("__us") // DAY_US).cast(pl.Int32).alias("__d"))
    d, us, code = pl.col("__d"), pl.col("__us"), pl.col("__et")
    windows = tuple(config.windows)

    def is_type(*names: str) -> pl.Expr:
        codes = [_TYPE_CODE[n] for n in names]
        return code == codes[0] if len(codes) == 1 else code.is_in(codes)

    # amounts are summed as integer micro-units: an integer sum does not depend on the order the
    # threads merge partial sums in, so a re-run gives the same bits
    micros = (pl.col("amount") * AMOUNT_SCALE).round().cast(pl.Int64)
    aggs: list[pl.Expr] = []
    for w in windows:
        inside = d < w
        for t in s.KNOWN_EVENT_TYPES:
            aggs.append((inside & is_type(t)).sum().alias(f"{t}_count_{w}d"))
        buy = inside & is_type("purchase")
        aggs += [
            pl.when(inside & is_type("purchase", "refund")).then(micros).sum().alias(f"__amount_{w}"),
            pl.when(buy).then(micros).sum().alias(f"__spend_{w}"),
            pl.when(buy).then(micros).count().alias(f"__buys_{w}"),
        ]
    recent, prev = d < 7, (d >= 7) & (d < 35)
    aggs += [
        us.min().alias("__last"),
        pl.when(is_type("purchase")).then(us).min().alias("__last_purchase"),
        pl.when(is_type("session_start")).then(us).min().alias("__last_session"),
        pl.when(is_type("email_open")).then(us).min().alias("__last_email_open"),
        us.max().alias("__first"),
        pl.when(is_type("purchase")).then(us).max().alias("__first_purchase"),
        d.filter(is_type("purchase")).n_unique().alias("__purchase_days"),
        pl.when(is_type("purchase")).then(micros).sum().alias("__spend_all"),
        (recent & is_type("purchase")).sum().alias("__r_purchase"),
        (prev & is_type("purchase")).sum().alias("__p_purchase"),
        (recent & is_type("session_start")).sum().alias("__r_session"),
        (prev & is_type("session_start")).sum().alias("__p_session"),
        recent.sum().alias("__r_all"),
        prev.sum().alias("__p_all"),
    ]
    n_days = max(*windows, 56)
    words = (n_days + 63) // 64
    for j in range(words):
        lo = 64 * j
        bit = pl.lit(2, pl.UInt64).pow((d - lo).clip(0, 63).cast(pl.UInt32))
        aggs.append(
            pl.when((d >= lo) & (d < lo + 64))
            .then(bit)
            .otherwise(pl.lit(0, pl.UInt64))
            .bitwise_or()
            .alias(f"__days{j}")
        )
    base = before.group_by(s.USER_ID).agg(aggs)

    def days_between(lo: int, hi: int) -> pl.Expr:
        """Distinct age-days d with lo <= d < hi, from the bit words."""
        total: pl.Expr = pl.lit(0, pl.UInt32)
        for j in range(words):
            a, b = max(lo - 64 * j, 0), min(hi - 64 * j, 64)
            if a >= b:
                continue
            mask = ((1 << b) - 1) ^ ((1 << a) - 1)
            total = total + (pl.col(f"__days{j}") & pl.lit(mask, pl.UInt64)).bitwise_count_ones()
        return total.cast(pl.Float64)

    def days_ago(col: str) -> pl.Expr:
        return pl.col(col).cast(pl.Float64) / DAY_US

    def smooth(r: str, p: str) -> pl.Expr:
        return (pl.col(r) / 7 + 1 / 28) / (pl.col(p) / 28 + 1 / 28)

    base = base.select(
        s.USER_ID,
        pl.col(s.USER_ID).hash(seed=0).alias("__uh"),
        *[pl.col(f"{t}_count_{w}d").cast(pl.Float64) for w in windows for t in s.KNOWN_EVENT_TYPES],
        *[days_between(0, w).alias(f"active_days_{w}d") for w in windows],
        *[(pl.col(f"__amount_{w}") / AMOUNT_SCALE).alias(f"amount_sum_{w}d") for w in windows],
        *[
            pl.when(pl.col(f"__buys_{w}") > 0)
            .then(pl.col(f"__spend_{w}") / pl.col(f"__buys_{w}") / AMOUNT_SCALE)
            .otherwise(0.0)
            .alias(f"amount_mean_{w}d")
            for w in windows
        ],
        days_ago("__last").alias("days_since_last_event"),
        days_ago("__last_purchase").alias("days_since_last_purchase"),
        days_ago("__last_session").alias("days_since_last_session"),
        days_ago("__last_email_open").alias("days_since_last_email_open"),
        days_ago("__first").alias("__first_age"),
        pl.col("__purchase_days").cast(pl.Float64).alias("purchase_days_total"),
        days_ago("__first_purchase").alias("days_since_first_purchase"),
        pl.when(pl.col("__purchase_days") > 0)
        .then(pl.col("__spend_all") / pl.col("__purchase_days") / AMOUNT_SCALE)
        .otherwise(0.0)
        .alias("purchase_day_amount_mean"),
        smooth("__r_purchase", "__p_purchase").alias("purchase_rate_ratio_7d_28d"),
        smooth("__r_session", "__p_session").alias("session_rate_ratio_7d_28d"),
        smooth("__r_all", "__p_all").alias("event_rate_ratio_7d_28d"),
        (days_between(0, 28) - days_between(28, 56)).alias("active_days_change_28d"),
    )
    # sessions: one row per (user, session) with its newest age-day; engaged = longer than N s,
    # a purchase, or 2+ page/product views (over the session's events before as_of)
    long_us = (config.engaged_session_seconds + 1) * 1_000_000
    sess = (
        before.filter(pl.col("session_id").is_not_null())
        .group_by("__sk")
        .agg(
            pl.col("__uh").first(),
            d.min().alias("__sd"),
            (
                ((us.max() - us.min()) >= long_us)
                | is_type("purchase").any()
                | (is_type("page_view", "product_view").sum() >= 2)
            ).alias("__engaged"),
        )
        .group_by("__uh")
        .agg(
            *[(pl.col("__sd") < w).sum().alias(f"__sessions_{w}d") for w in windows],
            *[((pl.col("__sd") < w) & pl.col("__engaged")).sum().alias(f"__engaged_{w}d") for w in windows],
        )
        .select(
            "__uh",
            *[pl.col(f"__sessions_{w}d").cast(pl.Float64).alias(f"session_count_{w}d") for w in windows],
            *[
                pl.when(pl.col(f"__sessions_{w}d") > 0)
                .then(pl.col(f"__engaged_{w}d") / pl.col(f"__sessions_{w}d"))
                .otherwise(0.0)
                .alias(f"engaged_session_rate_{w}d")
                for w in windows
            ],
        )
    )
    # categories: one row per (user, category) with its newest age-day and its 90-day count; codes
    # follow the sorted names, so the smallest code among the most frequent is the first name
    n90, code_c = pl.col("__n90"), pl.col("__cc")
    cat = (
        before.filter(code_c.is_not_null())
        .group_by("__ck")
        .agg(pl.col("__uh").first(), code_c.first(), d.min().alias("__cd"), (d < 90).sum().alias("__n90"))
        .group_by("__uh")
        .agg(
            *[(pl.col("__cd") < w).sum().cast(pl.Float64).alias(f"category_distinct_{w}d") for w in windows],
            code_c.filter((n90 == n90.max()) & (n90 > 0)).min().alias("__top"),
            pl.when(n90.sum() > 0).then(n90.max() / n90.sum()).alias("top_category_share_90d"),
        )
        .with_columns(
            pl.col("__top")
            .replace_strict(
                list(range(len(categories))), list(categories), default=None, return_dtype=pl.String
            )
            .alias("top_category")
        )
        .drop("__top")
    )
    horizon_us = config.cart_abandon_hours * 3_600 * 1_000_000
    carts = (
        cart_next.filter(pl.col(s.TS) + pl.duration(microseconds=horizon_us) <= as_of_lit)
        .filter(
            pl.col("__next_purchase").is_null()
            | ((pl.col("__next_purchase") - pl.col(s.TS)).dt.total_microseconds() >= horizon_us)
        )
        .with_columns(((as_of_lit - pl.col(s.TS)).dt.total_microseconds() / DAY_US).alias("__cage"))
        .group_by(s.USER_ID)
        .agg(
            *[
                (pl.col("__cage") < w).sum().cast(pl.Float64).alias(f"cart_abandon_count_{w}d")
                for w in config.windows
            ],
            pl.col("__cage").min().alias("days_since_last_cart_abandon"),
        )
    )
    frame = (
        # each reduction streams the events on its own: one plan sharing the scan would buffer the
        # input for the slowest branch (12 GB at 100M events); the reduced tables are small
        _eager(base)
        .join(_eager(sess), on="__uh", how="left")
        .join(_eager(cat), on="__uh", how="left")
        .join(carts, on=s.USER_ID, how="left")
    )
    email_w = []
    if exposures is not None:
        oldest = as_of_lit - pl.duration(days=max(*config.windows, 28))  # the longest count's window
        exp = exposures.filter(
            (pl.col(s.TS) < as_of_lit) & (pl.col(s.TS) >= oldest) & (pl.col(s.MESSAGE_ID) != s.CONTROL_ARM)
        ).with_columns(((as_of_lit - pl.col(s.TS)).dt.total_microseconds() / DAY_US).alias("__eage"))
        fat = exp.group_by(s.USER_ID).agg(
            (pl.col("__eage") < 7).sum().cast(pl.Float64).alias("messages_received_7d"),
            (pl.col("__eage") < 28).sum().cast(pl.Float64).alias("messages_received_28d"),
            *[
                ((pl.col("__eage") < w) & (pl.col(s.CHANNEL) == "email"))
                .sum()
                .cast(pl.Float64)
                .alias(f"__emails_{w}d")
                for w in config.windows
            ],
        )
        frame = frame.join(fat, on=s.USER_ID, how="left")
        email_w = [f"__emails_{w}d" for w in config.windows]
    else:
        frame = frame.with_columns(
            pl.lit(0.0).alias("messages_received_7d"), pl.lit(0.0).alias("messages_received_28d")
        )
    rates = []
    for w in config.windows:
        opens, clicks = pl.col(f"email_open_count_{w}d"), pl.col(f"email_click_count_{w}d")
        received = pl.col(f"__emails_{w}d").fill_null(0.0) if email_w else opens
        rates += [
            pl.when(received > 0)
            .then(opens / received)
            .otherwise(0.0)
            .clip(0, 1)
            .alias(f"email_open_rate_{w}d"),
            pl.when(opens > 0).then(clicks / opens).otherwise(0.0).clip(0, 1).alias(f"email_click_rate_{w}d"),
        ]
    fill_zero = (
        [f"cart_abandon_count_{w}d" for w in config.windows]
        + [f"session_count_{w}d" for w in config.windows]
        + [f"category_distinct_{w}d" for w in config.windows]
        + [f"engaged_session_rate_{w}d" for w in config.windows]
        + ["messages_received_7d", "messages_received_28d", "top_category_share_90d"]
    )
    return (
        frame.with_columns(rates)
        .with_columns(
            *[pl.col(c).fill_null(0.0) for c in fill_zero],
            pl.col("top_category").fill_null("none"),
            pl.lit(as_of).cast(s.TS_DTYPE).alias(s.AS_OF),
        )
        .drop(*email_w, "__uh")
    )


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
    # integer stand-ins: event type codes, a user hash and one 64-bit (user, session) key
    uh = pl.col(s.USER_ID).hash(seed=0)
    categories = (
        _as_lazy(events)
        .select(pl.col("category").drop_nulls().unique().sort())
        .collect(engine="streaming")["category"]
        .to_list()
    )
    cat_code = pl.col("category").cast(pl.Enum(categories)).to_physical().cast(pl.UInt64)
    ev = _as_lazy(events).with_columns(
        cat_code.alias("__cc"),
        (uh * pl.lit(_MIX, pl.UInt64) ^ (cat_code + 1) * pl.lit(_MIX2, pl.UInt64)).alias("__ck"),
        pl.col(s.EVENT_TYPE)
        .cast(pl.Enum(list(_TYPE_CODE)), strict=False)
        .to_physical()
        .cast(pl.Int8)
        .fill_null(-1)
        .alias("__et"),
        uh.alias("__uh"),
        (uh * pl.lit(_MIX, pl.UInt64) ^ pl.col("session_id").hash(seed=1)).alias("__sk"),
    )
    exp = _as_lazy(exposures) if exposures is not None else None
    carts = ev.filter(pl.col(s.EVENT_TYPE) == "add_to_cart").select(s.USER_ID, s.TS).sort(s.TS)
    buys = (
        ev.filter(pl.col(s.EVENT_TYPE) == "purchase")
        .select(s.USER_ID, pl.col(s.TS).alias("__next_purchase"))
        .sort("__next_purchase")
    )
    cart_next = (
        carts.join_asof(
            buys,
            left_on=s.TS,
            right_on="__next_purchase",
            by=s.USER_ID,
            strategy="forward",
            check_sortedness=False,
        )
        .collect(engine="streaming")
        .lazy()
    )
    parts = []
    for i, d in enumerate(dates):
        parts.append(_one_as_of(ev, d, config, exp, cart_next, categories).collect(engine="streaming"))
        if progress:
            progress(i + 1, len(dates))
    frame = pl.concat(parts, how="diagonal_relaxed")
    frame = frame.with_columns(pl.col("__first_age").alias("tenure_days")).drop("__first_age")
    if users is not None:
        u = users if isinstance(users, pl.DataFrame) else pl.from_pandas(users)
        if s.SIGNUP_TS in u.columns:
            frame = (
                frame.join(u.select(s.USER_ID, s.SIGNUP_TS), on=s.USER_ID, how="left")
                .with_columns(
                    pl.max_horizontal(
                        pl.col("tenure_days"),
                        (pl.col(s.AS_OF) - pl.col(s.SIGNUP_TS)).dt.total_microseconds() / DAY_US,
                    ).alias("tenure_days")
                )
                .drop(s.SIGNUP_TS)
            )
        attrs = u.drop([c for c in (s.SIGNUP_TS,) if c in u.columns])
        attrs = attrs.with_columns(
            [pl.col(c).cast(pl.Float64) for c, dt in attrs.schema.items() if dt == pl.Boolean]
        )
        frame = frame.join(attrs, on=s.USER_ID, how="left")
    names = [f.name for f in feature_defs(config)]
    extra = [c for c in frame.columns if c not in names and c not in (s.USER_ID, s.AS_OF)]
    frame = frame.select(s.USER_ID, s.AS_OF, *[n for n in names if n in frame.columns], *sorted(extra)).sort(
        s.AS_OF, s.USER_ID
    )
    out = frame.to_pandas()
    return out
