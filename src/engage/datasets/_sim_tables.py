"""The simulator's output tables: the day loop's numpy buffers become the events, users, exposures,
truth and states frames.

The loop lives in ``simulate`` and the model's math in ``_sim_model``. The events builder draws
page gaps, categories, items, amounts and refund times from the loop's generator after the loop.
"""

from __future__ import annotations

from typing import TypeVar, overload

import numpy as np
import polars as pl
from numpy.typing import NDArray

from engage import schemas
from engage.datasets import _sim_model as m

_G = TypeVar("_G", bound=np.generic)

CATEGORIES: tuple[str, ...] = (
    "electronics",
    "fashion",
    "home",
    "beauty",
    "sports",
    "books",
    "toys",
    "grocery",
)
ITEMS_PER_CATEGORY = 200
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
PLANS: tuple[str, ...] = ("free", "plus", "premium")
US_PER_S = 1_000_000
DAY_S = 86_400

EVENT_TYPES: tuple[str, ...] = schemas.KNOWN_EVENT_TYPES
EVENT_CODE = {name: i for i, name in enumerate(EVENT_TYPES)}


class Buffer:
    """Column-wise accumulator of numpy chunks (one chunk per simulated day)."""

    def __init__(self) -> None:
        self._cols: dict[str, list[NDArray[np.generic]]] = {}

    def add(self, **cols: NDArray[np.generic]) -> None:
        for name, values in cols.items():
            self._cols.setdefault(name, []).append(np.asarray(values))

    @overload
    def get(self, name: str) -> NDArray[np.float64]: ...
    @overload
    def get(self, name: str, dtype: type[_G]) -> NDArray[_G]: ...
    def get(self, name: str, dtype: type[np.generic] = np.float64) -> NDArray[np.generic]:
        """The column's chunks joined; ``dtype`` is the type they were added with (and of an empty column)."""
        chunks = self._cols.get(name)
        if not chunks:
            return np.zeros(0, dtype=dtype)
        return np.concatenate(chunks)


def _arm_name(message_id: str) -> str:
    return f"p_{message_id}"


def ts_column(start_us: int, offset_us: NDArray[np.int64]) -> pl.Series:
    """``start_us + offset_us`` (epoch microseconds) as the canonical UTC ``ts`` column."""
    return pl.Series(schemas.TS, start_us + offset_us, dtype=pl.Int64).cast(schemas.TS_DTYPE)


def users_frame(
    user_ids: pl.Series,
    start_us: int,
    signup_day: NDArray[np.int64],
    signup_sec: NDArray[np.int64],
    region: NDArray[np.int64],
    plan: NDArray[np.int64],
    consent: dict[str, NDArray[np.bool_]],
) -> pl.DataFrame:
    """One row per user: id, signup time, region, plan and one consent column per channel."""
    offset = (signup_day * DAY_S + signup_sec) * US_PER_S
    return pl.DataFrame(
        [
            user_ids,
            ts_column(start_us, offset).alias(schemas.SIGNUP_TS),
            pl.Series("region", REGIONS).gather(region),
            pl.Series("plan", PLANS).gather(plan),
            *[pl.Series(schemas.consent_column(ch), consent[ch]) for ch in schemas.CHANNELS],
        ]
    )


def events_frame(
    rng: np.random.Generator,
    user_ids: pl.Series,
    start_us: int,
    sessions: Buffer,
    opens: Buffer,
    arms: list[tuple[str, str]],
    pref_cum: NDArray[np.float64],
    spend: NDArray[np.float64],
    *,
    session_prefix: str = "s",
) -> pl.DataFrame:
    """Expand session summaries into ordered events, add campaign opens, sort by (ts, user).

    Session ids are `session_prefix` and the session's number in `sessions` (a resumed day gives
    its own prefix, so ids stay unique across a world's days).
    """
    s_user = sessions.get("user", np.int64)
    t0 = sessions.get("t0", np.int64)
    bounce = sessions.get("bounce", np.bool_)
    n_pv = sessions.get("n_pv", np.int64)
    n_prod = sessions.get("n_prod", np.int64)
    cart = sessions.get("cart", np.bool_).astype(np.int64)
    purchase = sessions.get("purchase", np.bool_).astype(np.int64)
    refund = sessions.get("refund", np.bool_)
    s_arm = sessions.get("arm", np.int16)
    s_amount = sessions.get("amount")
    s_cat = sessions.get("category", np.int64)
    n_s = s_user.size

    n_ev = 1 + n_pv + n_prod + cart + purchase
    first = np.cumsum(n_ev) - n_ev
    sess = np.repeat(np.arange(n_s), n_ev)
    pos = np.arange(sess.size) - first[sess]
    pv_end = n_pv[sess]
    prod_end = pv_end + n_prod[sess]
    etype = np.full(sess.size, EVENT_CODE["purchase"], dtype=np.int8)
    etype[pos == 0] = EVENT_CODE["session_start"]
    etype[(pos >= 1) & (pos <= pv_end)] = EVENT_CODE["page_view"]
    etype[(pos > pv_end) & (pos <= prod_end)] = EVENT_CODE["product_view"]
    etype[(pos == prod_end + 1) & (cart[sess] == 1)] = EVENT_CODE["add_to_cart"]

    gap = np.where(bounce[sess], rng.uniform(1.0, 8.0, sess.size), 2.0 + rng.exponential(40.0, sess.size))
    gap[pos == 0] = 0.0
    gap_us = (gap * US_PER_S).astype(np.int64)
    csum = np.cumsum(gap_us)
    ts = t0[sess] + csum - csum[first][sess]

    # categories and items: product views draw from the user's preferences (or the forced one)
    is_prod = etype == EVENT_CODE["product_view"]
    prod_idx = np.flatnonzero(is_prod)
    prod_user = s_user[sess[prod_idx]]
    u = rng.random(prod_idx.size)
    drawn = np.zeros(prod_idx.size, dtype=np.int64)
    for c in range(len(CATEGORIES) - 1):
        drawn += u > pref_cum[prod_user, c]
    forced = s_cat[sess[prod_idx]]
    cat = np.full(sess.size, -1, dtype=np.int64)
    cat[prod_idx] = np.where(forced >= 0, forced, drawn)
    item = np.full(sess.size, -1, dtype=np.int64)
    item[prod_idx] = cat[prod_idx] * ITEMS_PER_CATEGORY + rng.integers(0, ITEMS_PER_CATEGORY, prod_idx.size)
    last_prod = first + n_pv + n_prod  # index of the session's last product view
    is_cart_or_buy = (etype == EVENT_CODE["add_to_cart"]) | (etype == EVENT_CODE["purchase"])
    src = np.where(is_cart_or_buy, last_prod[sess], np.arange(sess.size))
    cat = np.where(is_prod | is_cart_or_buy, cat[src], -1)
    item = np.where(is_prod | is_cart_or_buy, item[src], -1)

    is_buy = etype == EVENT_CODE["purchase"]
    organic_amount = np.round(rng.lognormal(3.4, 0.6, sess.size) * spend[s_user[sess]], 2)
    amount = np.where(is_buy, np.where(np.isnan(s_amount[sess]), organic_amount, s_amount[sess]), np.nan)
    ev_arm = np.where(is_buy, s_arm[sess], -1).astype(np.int16)
    ev_arm = np.where(ev_arm == 0, -1, ev_arm)  # control conversions carry no message

    # refunds: later the same day, no session
    buy_idx = np.flatnonzero(is_buy & refund[sess])
    day_end = (ts[buy_idx] // (DAY_S * US_PER_S) + 1) * DAY_S * US_PER_S
    room = np.maximum(day_end - ts[buy_idx] - 60 * US_PER_S, US_PER_S)
    r_ts = ts[buy_idx] + (rng.random(buy_idx.size) * room).astype(np.int64) + 1

    o_user = opens.get("user", np.int64)
    o_arm = opens.get("arm", np.int16)
    all_user = np.concatenate([s_user[sess], s_user[sess[buy_idx]], o_user])
    all_ts = np.concatenate([ts, r_ts, opens.get("ts", np.int64)])
    all_type = np.concatenate(
        [etype, np.full(buy_idx.size, EVENT_CODE["refund"], dtype=np.int8), opens.get("etype", np.int8)]
    )
    all_sess = np.concatenate([sess, np.full(buy_idx.size + o_user.size, -1)])
    all_cat = np.concatenate([cat, cat[buy_idx], np.full(o_user.size, -1)])
    all_item = np.concatenate([item, item[buy_idx], np.full(o_user.size, -1)])
    all_amount = np.concatenate([amount, -amount[buy_idx], np.full(o_user.size, np.nan)])
    all_arm = np.concatenate([ev_arm, np.full(buy_idx.size, -1, dtype=np.int16), o_arm])

    order = np.lexsort((all_user, all_ts))
    arm_ids = pl.Series([a for a, _ in arms])
    arm_channels = pl.Series([c for _, c in arms])
    cat_names = pl.Series(CATEGORIES)
    item_names = pl.Series([f"{c[:3]}-{i:04d}" for c in CATEGORIES for i in range(ITEMS_PER_CATEGORY)])

    def gather(table: pl.Series, codes: NDArray[np.integer], name: str) -> pl.Series:
        idx = pl.Series(codes[order], dtype=pl.Int64)
        idx = idx.set(idx < 0, None)
        return table.gather(idx).alias(name)

    sess_sorted = pl.Series(all_sess[order], dtype=pl.Int64)
    session_id = (session_prefix + sess_sorted.cast(pl.String).str.zfill(9)).set(sess_sorted < 0, None)
    amount_s = pl.Series("amount", all_amount[order], dtype=pl.Float64, nan_to_null=True)
    frame = pl.DataFrame(
        [
            user_ids.gather(all_user[order]),
            ts_column(start_us, all_ts[order]),
            pl.Series(EVENT_TYPES).gather(all_type[order].astype(np.int64)).alias(schemas.EVENT_TYPE),
            session_id.alias("session_id"),
            gather(item_names, all_item, "item_id"),
            gather(cat_names, all_cat, "category"),
            amount_s,
            gather(arm_channels, all_arm, "channel"),
            gather(arm_ids, all_arm, "message_id"),
            pl.Series("properties", [None] * order.size, dtype=pl.String),
        ]
    )
    return frame.select([pl.col(c).cast(dt) for c, dt in schemas.EVENT_SCHEMA.items()])


def exposure_frames(
    user_ids: pl.Series,
    start_us: int,
    expo: Buffer,
    truth_p: list[NDArray[np.float64]],
    arms: list[tuple[str, str]],
    *,
    sent_as: list[tuple[str, str]] | None = None,
    timing: dict[str, NDArray[np.generic]] | None = None,
    zones: tuple[str, ...] = (),
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The campaign log (given outcomes) and its per-exposure truth, same rows and order.

    Timed campaigns (``_sim_timing``): the ``arm`` codes index `sent_as` (the (message, channel)
    variants), the buffer's ``hour`` is each send's UTC hour, and `timing` adds the true timing
    and channel gains to the truth (``zone`` indexes `zones`, ``best_channel`` the channels).
    """
    user = expo.get("user", np.int64)
    day = expo.get("day", np.int64)
    arm = expo.get("arm", np.int16).astype(np.int64)
    uid = user_ids.gather(user)
    hour = expo.get("hour", np.int64) if timing is not None else m.CAMPAIGN_HOUR
    ts = ts_column(start_us, (day * DAY_S + hour * 3600) * US_PER_S)
    logged = sent_as if sent_as is not None else arms
    exposures = pl.DataFrame(
        [
            uid,
            ts,
            pl.Series([a for a, _ in logged]).gather(arm).alias(schemas.MESSAGE_ID),
            pl.Series([c for _, c in logged]).gather(arm).alias(schemas.CHANNEL),
            pl.Series(schemas.PROPENSITY, expo.get("propensity")),
            pl.Series(schemas.CONVERTED, expo.get("converted", np.bool_)),
            pl.Series(schemas.REVENUE, expo.get("revenue")),
        ]
    )
    probs = np.concatenate(truth_p) if truth_p else np.zeros((0, len(arms)))
    truth = pl.DataFrame(
        [
            uid,
            ts,
            *[pl.Series(_arm_name(a), probs[:, j]) for j, (a, _) in enumerate(arms)],
            pl.Series("churn_hazard", expo.get("hazard")),
            pl.Series("engagement", expo.get("engagement")),
            pl.Series("alive", expo.get("alive", np.bool_)),
        ]
    )
    if timing is not None:
        truth = truth.with_columns(_timing_truth(timing, zones))
    return exposures, truth


def _timing_truth(cols: dict[str, NDArray[np.generic]], zones: tuple[str, ...]) -> list[pl.Series]:
    """The truth's timing columns: names for the zone and best channel, the gains as they are."""
    best = pl.Series(cols["best_channel"].astype(np.int64))
    out = [
        pl.Series("timezone", zones).gather(pl.Series(cols["zone"].astype(np.int64))),
        pl.Series("best_channel", schemas.CHANNELS).gather(best.set(best < 0, None)),
    ]
    return out + [
        pl.Series(name, values) for name, values in cols.items() if name not in ("zone", "best_channel")
    ]


def states_frame(user_ids: pl.Series, start_us: int, states: Buffer, horizon: int) -> pl.DataFrame:
    """Per user per weekly grid date: latent state and the oracle inactivity probability."""
    day = states.get("day", np.int64)
    return pl.DataFrame(
        [
            user_ids.gather(states.get("user", np.int64)),
            ts_column(start_us, day * DAY_S * US_PER_S),
            pl.Series("engagement", states.get("engagement")),
            pl.Series("churn_hazard", states.get("hazard")),
            pl.Series("alive", states.get("alive", np.bool_)),
            pl.Series(f"p_inactive_{horizon}d", np.clip(states.get("p_inactive"), 0.0, 1.0)),
        ]
    )
