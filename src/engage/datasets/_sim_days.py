"""The simulator's day: a world's latent state and the steps that move it through one day.

Shared by ``simulate`` (randomized campaigns) and ``resume`` (the decisions an engage policy
served), so both move users through the same dynamics and answer a message through the same
response model. The model's numbers are in ``_sim_model``; nothing here reads a file or a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from engage import schemas
from engage.datasets import _sim_model as m
from engage.datasets._sim_tables import DAY_S, EVENT_CODE, US_PER_S, Buffer

BROWSE_DECAY = float(np.exp(-1.0 / 7.0))
FATIGUE_DECAY = float(np.exp(-1.0 / 21.0))
SPEND_BY_PLAN = np.array([1.0, 1.2, 1.5])
ABANDON_RECENT_DAYS = 7


@dataclass
class World:
    """A simulated world between two days: its settings and every user's traits and latent state.

    ``day`` is the next day to simulate (days since ``start``). Arrays are aligned by user index;
    the dynamic ones (``level`` .. ``fatigue``) are replaced or updated in place by the day steps.
    """

    seed: int
    start: str
    day: int
    arms: list[tuple[str, str]]
    campaign_every_days: int
    horizon: int
    signup_day: NDArray[np.int64]
    signup_sec: NDArray[np.int64]
    act_idx: NDArray[np.int64]
    drift: NDArray[np.int64]
    consent_code: NDArray[np.int64]
    region: NDArray[np.int64]
    plan: NDArray[np.int64]
    pref: NDArray[np.float64]
    level: NDArray[np.int64]
    alive: NDArray[np.bool_]
    last_session: NDArray[np.int64]
    last_abandon: NDArray[np.int64]
    browse: NDArray[np.float64]
    fatigue: NDArray[np.float64]
    timing: bool = False
    """Simulated with time zones, rhythms and timed campaigns (``_sim_timing``)."""
    activity: NDArray[np.float64] = field(init=False, repr=False)
    spend: NDArray[np.float64] = field(init=False, repr=False)
    pref_cum: NDArray[np.float64] = field(init=False, repr=False)
    top_cat: NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.activity = m.ACTIVITY[self.act_idx]
        self.spend = SPEND_BY_PLAN[self.plan]
        self.pref_cum = np.cumsum(self.pref, axis=1)
        self.top_cat = self.pref.argmax(axis=1)

    @property
    def n(self) -> int:
        return int(self.level.size)

    def consent(self, channel: str) -> NDArray[np.bool_]:
        """Whether each user consented to `channel` (bits in ``schemas.CHANNELS`` order)."""
        if channel not in schemas.CHANNELS:
            return np.zeros(self.n, dtype=bool)
        return (self.consent_code >> schemas.CHANNELS.index(channel) & 1).astype(bool)

    def state_of(self, t: int, idx: NDArray[np.int64]) -> m.UserState:
        """What message effects depend on, for users `idx` at the start of day `t`."""
        return m.UserState(
            alive=self.alive[idx],
            engagement=m.ENGAGEMENT[self.level][idx],
            activity=self.activity[idx],
            days_since_session=(t - self.last_session[idx]).astype(np.float64),
            abandoned_recent=(t - self.last_abandon[idx]) <= ABANDON_RECENT_DAYS,
            browse=self.browse[idx],
            fatigue=self.fatigue[idx],
        )


@dataclass
class DayFlags:
    """Conversions of the day that move a user's level at the end of it."""

    level_bump: NDArray[np.bool_]
    reactivate: NDArray[np.bool_]

    @classmethod
    def empty(cls, n: int) -> DayFlags:
        return cls(np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))


def session_seconds(rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    """Second of the day a session starts: 07:00-22:00, peaking mid-afternoon."""
    return (3600.0 * (7.0 + 15.0 * rng.beta(2.0, 2.0, n))).astype(np.int64)


def _at(value: float | NDArray[np.float64], idx: NDArray[np.int64]) -> float | NDArray[np.float64]:
    return value[idx] if isinstance(value, np.ndarray) else value


def respond(
    rng: np.random.Generator,
    w: World,
    t: int,
    ex: NDArray[np.int64],
    choice: NDArray[np.int64],
    probs: NDArray[np.float64],
    arms: list[tuple[str, str]],
    *,
    send_hour: float | NDArray[np.float64],
    delay_days: int,
    opens: Buffer,
    sessions: Buffer,
    flags: DayFlags,
    channels: NDArray[np.int64] | None = None,
    open_scale: NDArray[np.float64] | None = None,
    codes: NDArray[np.int64] | None = None,
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Users `ex` receive arm `choice` (index into `arms`) on day `t` at `send_hour` (hours after 00:00).

    The one response model: a conversion with the arm's true probability (a purchase session within
    `delay_days`), opens and clicks on email/push for alive users, email fatigue, and a level bump
    (or a reactivation) after a conversion. Returns converted and net revenue per exposure.

    With timing, `channels` (index into ``schemas.CHANNELS``, -1 none) is the channel each message
    went on instead of its arm's, `open_scale` multiplies the chance to open it, and `codes` is what
    the events' arm code records (a (message, channel) variant) instead of `choice`.
    """
    eng_now = m.ENGAGEMENT[w.level]
    if channels is None:
        by_arm = np.array([schemas.CHANNELS.index(ch) if ch in schemas.CHANNELS else -1 for _, ch in arms])
        channels = by_arm[choice]
    recorded = choice if codes is None else codes
    discount = np.array([m.DISCOUNT.get(a, 0.0) for a, _ in arms])
    p_assigned = probs[np.arange(ex.size), choice]
    converted = rng.random(ex.size) < p_assigned
    amount = np.round(rng.lognormal(3.4, 0.6, ex.size) * w.spend[ex], 2)
    revenue = np.where(converted, np.round(amount * (1.0 - discount[choice]), 2), 0.0)
    ex_alive = w.alive[ex]
    u_open = rng.random(ex.size)
    open_hours = np.minimum(rng.exponential(2.0, ex.size), 13.0)
    click_delay = rng.uniform(10.0, 600.0, ex.size)
    u_click = rng.random(ex.size)
    p_open = np.zeros(ex.size)
    for ch in ("email", "push"):
        sel = channels == schemas.CHANNELS.index(ch)
        p_open[sel] = m.open_probability(ch, eng_now[ex][sel])
    if open_scale is not None:
        p_open = np.clip(p_open * open_scale, 0.0, 0.95)
    opened = ex_alive & (u_open < p_open)
    open_ts = (t * DAY_S + (send_hour + open_hours) * 3600.0) * US_PER_S
    is_email = channels == schemas.CHANNELS.index("email")
    clicked = opened & is_email & (u_click < m.EMAIL_CLICK_GIVEN_OPEN)
    for mask, etype, extra in (
        (opened & is_email, "email_open", 0.0),
        (opened & ~is_email, "push_open", 0.0),
        (clicked, "email_click", 1.0),
    ):
        idx = np.flatnonzero(mask)
        opens.add(
            user=ex[idx],
            ts=(open_ts[idx] + extra * click_delay[idx] * US_PER_S).astype(np.int64),
            etype=np.full(idx.size, EVENT_CODE[etype], dtype=np.int8),
            arm=recorded[idx].astype(np.int16),
        )
    np.add.at(w.fatigue, ex[is_email], 1.0)
    # conversions: a small session with a purchase within the attribution window
    ci = np.flatnonzero(converted)
    delay_h = m.conversion_delay_hours(rng.random(ci.size), delay_days)
    conv_t0 = (t * DAY_S + _at(send_hour, ci) * 3600.0 + delay_h * 3600.0) * US_PER_S
    sessions.add(
        user=ex[ci],
        t0=conv_t0.astype(np.int64),
        bounce=np.zeros(ci.size, dtype=bool),
        n_pv=np.zeros(ci.size, dtype=np.int64),
        n_prod=np.ones(ci.size, dtype=np.int64),
        cart=np.ones(ci.size, dtype=bool),
        purchase=np.ones(ci.size, dtype=bool),
        refund=np.zeros(ci.size, dtype=bool),
        arm=recorded[ci].astype(np.int16),
        amount=amount[ci],
        category=w.top_cat[ex[ci]],
    )
    flags.level_bump[ex[ci[ex_alive[ci]]]] = True
    flags.reactivate[ex[ci[~ex_alive[ci]]]] = True
    return converted, revenue


def organic_sessions(
    rng: np.random.Generator,
    w: World,
    t: int,
    rate: NDArray[np.float64],
    sessions: Buffer,
    start_seconds: Callable[[NDArray[np.int64]], NDArray[np.int64]] | None = None,
) -> None:
    """Day `t`'s organic sessions (Poisson `rate`, plus one at signup), and the trackers they move.

    `start_seconds` (users -> second of the day), when given, places the sessions in each user's
    rhythm (``_sim_timing``); the main stream draws the same numbers either way.
    """
    n = w.n
    eng_now = m.ENGAGEMENT[w.level]
    counts = rng.poisson(rate)
    new_users = np.flatnonzero(w.signup_day == t)
    users_s = np.repeat(np.arange(n), counts)
    secs = session_seconds(rng, users_s.size)
    if start_seconds is not None:
        secs = start_seconds(users_s)
    users_s = np.concatenate([new_users, users_s])
    secs = np.concatenate([w.signup_sec[new_users], secs])
    ns = users_s.size
    e = eng_now[users_s]
    bounce = rng.random(ns) < 0.4 - 0.3 * e
    n_pv = np.where(bounce, 1, 1 + rng.poisson(0.2 + 0.5 * e))
    n_prod = np.where(bounce, 0, rng.poisson(0.3 + 0.9 * e))
    cart = (n_prod > 0) & (rng.random(ns) < 0.15 + 0.35 * e)
    purchase = cart & (rng.random(ns) < 0.15 + 0.6 * e)
    refund = purchase & (rng.random(ns) < 0.05)
    sessions.add(
        user=users_s,
        t0=((t * DAY_S + secs) * US_PER_S).astype(np.int64),
        bounce=bounce,
        n_pv=n_pv.astype(np.int64),
        n_prod=n_prod.astype(np.int64),
        cart=cart,
        purchase=purchase,
        refund=refund,
        arm=np.full(ns, -1, dtype=np.int16),
        amount=np.full(ns, np.nan),
        category=np.full(ns, -1, dtype=np.int64),
    )
    w.last_session[users_s] = t
    w.last_abandon[users_s[cart & ~purchase]] = t
    w.browse = w.browse * BROWSE_DECAY + np.bincount(users_s, weights=n_prod, minlength=n)
    w.fatigue *= FATIGUE_DECAY


def end_of_day(rng: np.random.Generator, w: World, t: int, flags: DayFlags) -> None:
    """Churn, drift, reactivation, then the day's conversions' level bumps; advances ``w.day``."""
    n, k = w.n, m.N_LEVELS
    present = w.signup_day <= t
    level, alive = w.level, w.alive
    u = rng.random(n)
    v = rng.random(n)
    churn = present & alive & (u < m.HAZARD[level])
    survive = present & alive & ~churn
    up = survive & (v < m.DRIFT_UP[w.drift])
    down = survive & ~up & (v < m.DRIFT_UP[w.drift] + m.DRIFT_DOWN[w.drift])
    react = present & ~alive & (u < m.REACTIVATION_RATE)
    level = np.where(up, np.minimum(level + 1, k - 1), level)
    level = np.where(down, np.maximum(level - 1, 0), level)
    level = np.where(react, m.REACTIVATION_LEVEL, level)
    alive = (alive & ~churn) | react
    level = np.where(flags.level_bump & alive, np.minimum(level + 1, k - 1), level)
    level = np.where(flags.reactivate, m.CONVERSION_REACTIVATION_LEVEL, level)
    w.level, w.alive = level, alive | flags.reactivate
    w.day = t + 1


def oracle_states(
    w: World,
    t: int,
    dow: int,
    ne0: NDArray[np.float64],
    offsets: tuple[int, ...],
    tables: dict[tuple[int, tuple[int, ...]], NDArray[np.float64]],
    states: Buffer,
) -> None:
    """The weekly grid row of every signed-up user: latent state and the exact ``p_inactive``.

    `ne0` is P(no event on day `t`) per user; `offsets` the later campaign days inside the horizon.
    """
    gi = np.flatnonzero(w.signup_day < t)
    key = (dow, offsets)
    if key not in tables:
        tables[key] = m.no_event_tables(
            horizon_days=w.horizon,
            first_dow=dow,
            campaign_offsets=offsets,
            arms=w.arms,
            consent_codes=1 << len(schemas.CHANNELS),
            campaign_every_days=w.campaign_every_days,
        )
    alive, level = w.alive[gi], w.level[gi]
    state_idx = np.where(alive, level, m.N_LEVELS)
    rest = tables[key][w.act_idx[gi], w.drift[gi], w.consent_code[gi], state_idx]
    states.add(
        user=gi,
        day=np.full(gi.size, t, dtype=np.int64),
        engagement=np.where(alive, m.ENGAGEMENT[level], 0.0),
        hazard=np.where(alive, m.HAZARD[level], 1.0),
        alive=alive,
        p_inactive=ne0[gi] * rest,
    )


def open_probabilities(w: World, idx: NDArray[np.int64], arms: list[tuple[str, str]]) -> NDArray[np.float64]:
    """P(open) of users `idx` under every arm (alive users, email and push only): (len(idx), arms)."""
    eng = m.ENGAGEMENT[w.level[idx]]
    out = np.zeros((idx.size, len(arms)))
    for j, (_, ch) in enumerate(arms):
        if ch in ("email", "push"):
            out[:, j] = np.where(w.alive[idx], m.open_probability(ch, eng), 0.0)
    return out


_STATE_INT = ("signup_day", "signup_sec", "act_idx", "drift", "consent_code", "region", "plan")
_STATE_DYNAMIC = ("level", "last_session", "last_abandon")
WORLD_FORMAT = 1


def world_frame(w: World, user_ids: pl.Series) -> pl.DataFrame:
    """One row per user: every trait and latent state ``resume`` needs (exact values, no rounding)."""
    cols: list[pl.Series] = [user_ids]
    cols += [pl.Series(name, getattr(w, name), dtype=pl.Int64) for name in (*_STATE_INT, *_STATE_DYNAMIC)]
    cols += [
        pl.Series("alive", w.alive, dtype=pl.Boolean),
        pl.Series("browse", w.browse, dtype=pl.Float64),
        pl.Series("fatigue", w.fatigue, dtype=pl.Float64),
    ]
    cols += [pl.Series(f"pref_{j}", w.pref[:, j], dtype=pl.Float64) for j in range(w.pref.shape[1])]
    return pl.DataFrame(cols)


def world_meta(w: World) -> dict[str, Any]:
    """The world's settings and clock (JSON): with ``world_frame``, all a resume starts from."""
    return {
        "format": WORLD_FORMAT,
        "seed": w.seed,
        "start": w.start,
        "day": w.day,
        "arms": [list(a) for a in w.arms],
        "campaign_every_days": w.campaign_every_days,
        "oracle_horizon_days": w.horizon,
        "timing": w.timing,
    }


def world_from(frame: pl.DataFrame, meta: dict[str, Any]) -> World:
    """The world ``world_frame`` and ``world_meta`` wrote (rows in user order)."""
    if meta.get("format") != WORLD_FORMAT:
        raise ValueError(f"world format {meta.get('format')!r} is not {WORLD_FORMAT}")
    prefs = sorted((c for c in frame.columns if c.startswith("pref_")), key=lambda c: int(c[5:]))

    def ints(name: str) -> NDArray[np.int64]:
        return frame[name].to_numpy().astype(np.int64)

    return World(
        seed=int(meta["seed"]),
        start=str(meta["start"]),
        day=int(meta["day"]),
        arms=[(str(a), str(c)) for a, c in meta["arms"]],
        campaign_every_days=int(meta["campaign_every_days"]),
        horizon=int(meta["oracle_horizon_days"]),
        **{name: ints(name) for name in (*_STATE_INT, *_STATE_DYNAMIC)},
        pref=frame.select(prefs).to_numpy().astype(np.float64),
        alive=frame["alive"].to_numpy().astype(bool),
        browse=frame["browse"].to_numpy().astype(np.float64),
        fatigue=frame["fatigue"].to_numpy().astype(np.float64),
        timing=bool(meta.get("timing", False)),
    )
