"""The embedded feature engine (polars, lazy): one query per snapshot date, point in time.

A feature for (user, as_of) reads only events with ``ts < as_of``. Cart abandonment looks for the
next purchase within N hours, and only carts at least N hours older than as_of are judged, so the
purchase search never reaches as_of either. Users are those with an event before as_of.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import FeatureConfig
from engage.features.spec import feature_defs

DAY_US = 86_400 * 1_000_000
Progress = Callable[[int, int], None]


def _as_lazy(events: pl.DataFrame | pl.LazyFrame | pd.DataFrame) -> pl.LazyFrame:
    if isinstance(events, pd.DataFrame):
        events = pl.from_pandas(events)
    return events.lazy() if isinstance(events, pl.DataFrame) else events


def _one_as_of(
    ev: pl.LazyFrame,
    as_of: datetime,
    config: FeatureConfig,
    exposures: pl.LazyFrame | None,
    cart_next: pl.LazyFrame,
) -> pl.LazyFrame:
    as_of_lit = pl.lit(as_of).cast(s.TS_DTYPE)
    before = ev.filter(pl.col(s.TS) < as_of_lit).with_columns(
        ((as_of_lit - pl.col(s.TS)).dt.total_microseconds() / DAY_US).alias("__age")
    )
    age = pl.col("__age")
    et = pl.col(s.EVENT_TYPE)
    aggs: list[pl.Expr] = []
    for w in config.windows:
        inside = age < w
        for t in s.KNOWN_EVENT_TYPES:
            aggs.append((inside & (et == t)).sum().cast(pl.Float64).alias(f"{t}_count_{w}d"))
        aggs += [
            pl.col("__sid")
            .filter(inside & pl.col("__sid").is_not_null())
            .n_unique()
            .cast(pl.Float64)
            .alias(f"session_count_{w}d"),
            pl.col("__day").filter(inside).n_unique().cast(pl.Float64).alias(f"active_days_{w}d"),
            pl.col("amount")
            .filter(inside & et.is_in(["purchase", "refund"]))
            .sum()
            .alias(f"amount_sum_{w}d"),
            pl.col("amount")
            .filter(inside & (et == "purchase"))
            .mean()
            .fill_null(0.0)
            .alias(f"amount_mean_{w}d"),
            pl.col("__cat")
            .filter(inside & pl.col("__cat").is_not_null())
            .n_unique()
            .cast(pl.Float64)
            .alias(f"category_distinct_{w}d"),
        ]
    recent = age < 7
    prev = (age >= 7) & (age < 35)
    aggs += [
        age.min().alias("days_since_last_event"),
        age.filter(et == "purchase").min().alias("days_since_last_purchase"),
        age.filter(et == "session_start").min().alias("days_since_last_session"),
        age.filter(et == "email_open").min().alias("days_since_last_email_open"),
        age.max().alias("__first_age"),
        (
            ((recent & (et == "purchase")).sum() / 7 + 1 / 28)
            / ((prev & (et == "purchase")).sum() / 28 + 1 / 28)
        ).alias("purchase_rate_ratio_7d_28d"),
        (
            ((recent & (et == "session_start")).sum() / 7 + 1 / 28)
            / ((prev & (et == "session_start")).sum() / 28 + 1 / 28)
        ).alias("session_rate_ratio_7d_28d"),
        ((recent.sum() / 7 + 1 / 28) / (prev.sum() / 28 + 1 / 28)).alias("event_rate_ratio_7d_28d"),
        (
            pl.col("__day").filter(age < 28).n_unique().cast(pl.Float64)
            - pl.col("__day").filter((age >= 28) & (age < 56)).n_unique().cast(pl.Float64)
        ).alias("active_days_change_28d"),
    ]
    base = before.group_by(s.USER_ID).agg(aggs)
    # sessions: engaged = longer than N s, a purchase, or 2+ page/product views
    sess = (
        before.filter(pl.col("__sid").is_not_null())
        .group_by(s.USER_ID, "__sid")
        .agg(
            age.min().alias("__sage"),
            (
                (pl.col(s.TS).max() - pl.col(s.TS).min()).dt.total_seconds() > config.engaged_session_seconds
            ).alias("__long"),
            (et == "purchase").any().alias("__buy"),
            et.is_in(["page_view", "product_view"]).sum().alias("__views"),
        )
        .with_columns((pl.col("__long") | pl.col("__buy") | (pl.col("__views") >= 2)).alias("__engaged"))
        .group_by(s.USER_ID)
        .agg(
            [
                pl.col("__engaged")
                .filter(pl.col("__sage") < w)
                .mean()
                .fill_null(0.0)
                .alias(f"engaged_session_rate_{w}d")
                for w in config.windows
            ]
        )
    )
    cat = (
        before.filter(pl.col("category").is_not_null() & (age < 90))
        .group_by(s.USER_ID, "category")
        .agg(pl.len().alias("__n"))
        .sort([s.USER_ID, "__n", "category"], descending=[False, True, False])
        .group_by(s.USER_ID, maintain_order=True)
        .agg(
            pl.col("category").first().alias("top_category"),
            (pl.col("__n").first() / pl.col("__n").sum()).alias("top_category_share_90d"),
        )
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
        base.join(sess, on=s.USER_ID, how="left")
        .join(cat, on=s.USER_ID, how="left")
        .join(carts, on=s.USER_ID, how="left")
    )
    email_w = []
    if exposures is not None:
        exp = exposures.filter(
            (pl.col(s.TS) < as_of_lit) & (pl.col(s.MESSAGE_ID) != s.CONTROL_ARM)
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
        .drop(email_w)
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
    # integer stand-ins make the distinct counts and session grouping cheap (strings are slow keys)
    ev = _as_lazy(events).with_columns(
        (pl.col(s.TS).dt.epoch("us") // DAY_US).cast(pl.Int32).alias("__day"),
        pl.when(pl.col("session_id").is_not_null()).then(pl.col("session_id").hash(seed=0)).alias("__sid"),
        pl.when(pl.col("category").is_not_null()).then(pl.col("category").hash(seed=0)).alias("__cat"),
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
        parts.append(_one_as_of(ev, d, config, exp, cart_next).collect(engine="streaming"))
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
