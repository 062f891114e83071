"""Simulated customer event logs with ground truth (churn hazard, per-arm conversion odds).

Users sign up over time; each has a latent engagement level (a Markov chain that drifts),
an activity trait, category preferences and channel consents. Alive users open sessions
(Poisson per day, weekly seasonality) that emit page/product views, carts, purchases and
refunds; a churn hazard that rises as engagement falls moves them to a silent churned state
(some reactivate). On campaign days every signed-up user is assigned uniformly among the
control and the messages they consented to; true effects depend on user state. The truth
tables give, per exposure, the conversion probability under every arm, and, per user on a
weekly grid, the exact probability of no event in the next H days (the oracle churn score).

Vectorized over users with numpy, looping over days; deterministic by seed. This module holds
the day loop and the container; the model's math is in ``_sim_model`` and the building of the
output tables in ``_sim_tables``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

from engage import schemas
from engage.datasets import _sim_model as m
from engage.datasets._sim_tables import (
    CATEGORIES,
    DAY_S,
    EVENT_CODE,
    PLANS,
    REGIONS,
    US_PER_S,
    Buffer,
    events_frame,
    exposure_frames,
    states_frame,
    users_frame,
)

CONSENT_RATES = {"email": 0.70, "push": 0.45, "in_app": 0.60, "web_popup": 0.20}
GRID_EVERY_DAYS = 7
ABANDON_RECENT_DAYS = 7


@dataclass(frozen=True)
class SimulatedData:
    """The simulated tables: raw logs (events, users, exposures) and ground truth (truth, states)."""

    events: pl.DataFrame
    users: pl.DataFrame
    exposures: pl.DataFrame
    truth: pl.DataFrame
    states: pl.DataFrame


def _start_us(start: str) -> tuple[int, int]:
    """Epoch microseconds of `start` at 00:00 UTC, and its weekday (Monday = 0)."""
    day = datetime.fromisoformat(start).date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return int(midnight.timestamp()) * US_PER_S, day.weekday()


def _session_seconds(rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    """Second of the day a session starts: 07:00-22:00, peaking mid-afternoon."""
    return (3600.0 * (7.0 + 15.0 * rng.beta(2.0, 2.0, n))).astype(np.int64)


def simulate(
    n_users: int,
    days: int,
    *,
    seed: int,
    start: str = "2024-01-01",
    campaign_every_days: int = 7,
    oracle_horizon_days: int = 30,
    messages: Sequence[tuple[str, str]] | None = None,
) -> SimulatedData:
    """Simulate `n_users` over `days` days from `start` (00:00 UTC); deterministic by `seed`.

    `messages` is the catalog as (message_id, channel) pairs (default: the five packaged
    messages); the control arm ``none`` is always added. Campaigns run every
    `campaign_every_days` days (while their 7-day attribution window fits in the run);
    `oracle_horizon_days` is H in the ``p_inactive_<H>d`` column of ``states``.
    """
    if n_users <= 0 or days <= 0:
        raise ValueError(f"n_users and days must be positive, got {n_users} and {days}")
    if campaign_every_days <= 0 or oracle_horizon_days <= 0:
        raise ValueError("campaign_every_days and oracle_horizon_days must be positive")
    catalog = list(messages) if messages is not None else list(m.DEFAULT_MESSAGES)
    arms: list[tuple[str, str]] = [(schemas.CONTROL_ARM, schemas.CONTROL_ARM), *catalog]
    if len({a for a, _ in arms}) != len(arms):
        raise ValueError(f"duplicate message ids in {[a for a, _ in arms]}")
    unknown = sorted({ch for _, ch in catalog} - set(schemas.CHANNELS))
    if unknown:
        raise ValueError(f"message channels {unknown} are not among {schemas.CHANNELS}")
    rng = np.random.default_rng(seed)
    start_us, start_dow = _start_us(start)
    n, k = n_users, m.N_LEVELS
    n_cat = len(CATEGORIES)

    # --- static user traits -------------------------------------------------------------
    pre = rng.random(n) < 0.35
    signup_day = np.where(pre, -rng.integers(1, 366, n), rng.integers(0, days, n))
    signup_sec = _session_seconds(rng, n)
    act_idx = rng.choice(len(m.ACTIVITY), n, p=m.ACTIVITY_P)
    activity = m.ACTIVITY[act_idx]
    drift = rng.choice(len(m.DRIFT_UP), n, p=m.DRIFT_P)
    level_p = np.linspace(0.5, 1.5, k)
    level = np.where(
        pre, rng.choice(k, n, p=level_p / level_p.sum()), rng.integers(int(0.4 * k), k, n)
    ).astype(np.int64)
    alive = ~(pre & (rng.random(n) < 0.25))
    consent = {ch: rng.random(n) < CONSENT_RATES.get(ch, 0.3) for ch in schemas.CHANNELS}
    consent_code = np.zeros(n, dtype=np.int64)
    for bit, ch in enumerate(schemas.CHANNELS):
        consent_code |= consent[ch].astype(np.int64) << bit
    region = rng.integers(0, len(REGIONS), n)
    plan = rng.choice(len(PLANS), n, p=[0.7, 0.2, 0.1])
    spend = np.array([1.0, 1.2, 1.5])[plan]
    pref = rng.dirichlet(np.full(n_cat, 0.4), n)
    pref_cum = np.cumsum(pref, axis=1)
    top_cat = pref.argmax(axis=1)

    # --- dynamic trackers ---------------------------------------------------------------
    last_session = np.where(alive, -rng.integers(1, 15, n), -rng.integers(30, 200, n)).astype(np.int64)
    last_session = np.where(pre, last_session, signup_day)
    last_abandon = np.full(n, -(10**6), dtype=np.int64)
    browse = np.zeros(n)
    fatigue = np.zeros(n)
    browse_decay, fatigue_decay = np.exp(-1.0 / 7.0), np.exp(-1.0 / 21.0)

    avail = np.ones((n, len(arms)), dtype=bool)
    for j, (_, ch) in enumerate(arms[1:], start=1):
        avail[:, j] = consent.get(ch, False)
    n_avail = avail.sum(axis=1)
    arm_channels = [ch for _, ch in arms]
    open_by_arm = [ch if ch in ("email", "push") else "" for ch in arm_channels]
    discount = np.array([m.DISCOUNT.get(a, 0.0) for a, _ in arms])
    max_delay_ok = min(7, campaign_every_days)
    campaign_days = [t for t in range(days) if t % campaign_every_days == 0 and t + max_delay_ok <= days]
    campaign_set = set(campaign_days)
    horizon = oracle_horizon_days
    n_consent_codes = 1 << len(schemas.CHANNELS)
    tables: dict[tuple[int, tuple[int, ...]], NDArray[np.float64]] = {}

    sessions, opens, expo, truth_p, states = Buffer(), Buffer(), Buffer(), [], Buffer()

    for t in range(days):
        dow = (start_dow + t) % 7
        signed = signup_day < t
        present = signup_day <= t
        eng_now = m.ENGAGEMENT[level]
        # new users get one session at signup today (below), organic ones from tomorrow
        rate = np.where(alive & signed, m.session_rate(level, activity, dow), 0.0)
        ne0 = np.exp(-rate)
        is_campaign = t in campaign_set

        # --- campaign ------------------------------------------------------------------
        conv_level_bump = np.zeros(n, dtype=bool)
        conv_reactivate = np.zeros(n, dtype=bool)
        if is_campaign:
            ex = np.flatnonzero(signed)
            st = m.UserState(
                alive=alive[ex],
                engagement=eng_now[ex],
                activity=activity[ex],
                days_since_session=(t - last_session[ex]).astype(np.float64),
                abandoned_recent=(t - last_abandon[ex]) <= ABANDON_RECENT_DAYS,
                browse=browse[ex],
                fatigue=fatigue[ex],
            )
            probs = m.arm_probabilities(arms, st)
            av = avail[ex]
            pick = np.floor(rng.random(ex.size) * n_avail[ex]).astype(np.int64)
            choice = np.argmax(np.cumsum(av, axis=1) > pick[:, None], axis=1)
            p_assigned = probs[np.arange(ex.size), choice]
            converted = rng.random(ex.size) < p_assigned
            amount = np.round(rng.lognormal(3.4, 0.6, ex.size) * spend[ex], 2)
            revenue = np.where(converted, np.round(amount * (1.0 - discount[choice]), 2), 0.0)
            ex_alive = alive[ex]
            # opens / clicks (alive users, email and push arms)
            u_open = rng.random(ex.size)
            open_hours = np.minimum(rng.exponential(2.0, ex.size), 13.0)
            click_delay = rng.uniform(10.0, 600.0, ex.size)
            u_click = rng.random(ex.size)
            p_open = np.zeros(ex.size)
            for j, ch in enumerate(open_by_arm):
                if ch:
                    sel = choice == j
                    p_open[sel] = m.open_probability(ch, eng_now[ex][sel])
            opened = ex_alive & (u_open < p_open)
            open_ts = (t * DAY_S + (m.CAMPAIGN_HOUR + open_hours) * 3600.0) * US_PER_S
            is_email = np.array([ch == "email" for ch in arm_channels])[choice]
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
                    arm=choice[idx].astype(np.int16),
                )
            fatigue[ex[is_email]] += 1.0
            # conversions: a small session with a purchase within the attribution window
            ci = np.flatnonzero(converted)
            delay_h = m.conversion_delay_hours(rng.random(ci.size), campaign_every_days)
            conv_t0 = (t * DAY_S + m.CAMPAIGN_HOUR * 3600.0 + delay_h * 3600.0) * US_PER_S
            sessions.add(
                user=ex[ci],
                t0=conv_t0.astype(np.int64),
                bounce=np.zeros(ci.size, dtype=bool),
                n_pv=np.zeros(ci.size, dtype=np.int64),
                n_prod=np.ones(ci.size, dtype=np.int64),
                cart=np.ones(ci.size, dtype=bool),
                purchase=np.ones(ci.size, dtype=bool),
                refund=np.zeros(ci.size, dtype=bool),
                arm=choice[ci].astype(np.int16),
                amount=amount[ci],
                category=top_cat[ex[ci]],
            )
            conv_level_bump[ex[ci[ex_alive[ci]]]] = True
            conv_reactivate[ex[ci[~ex_alive[ci]]]] = True
            expo.add(
                user=ex,
                day=np.full(ex.size, t, dtype=np.int64),
                arm=choice.astype(np.int16),
                propensity=1.0 / n_avail[ex],
                converted=converted,
                revenue=revenue,
                hazard=np.where(ex_alive, m.HAZARD[level[ex]], 1.0),
                engagement=np.where(ex_alive, eng_now[ex], 0.0),
                alive=ex_alive,
            )
            truth_p.append(probs)
            # exact day-0 factor for the oracle: average over the uniform arm draw
            f0 = m.conversion_in_window(horizon * 24.0 - m.CAMPAIGN_HOUR, campaign_every_days)
            p_open_all = np.zeros((ex.size, len(arms)))
            for j, ch in enumerate(open_by_arm):
                if ch:
                    p_open_all[:, j] = np.where(ex_alive, m.open_probability(ch, eng_now[ex]), 0.0)
            no_ev = (1.0 - p_open_all) * (1.0 - probs * f0)
            ne0[ex] *= (no_ev * av).sum(axis=1) / n_avail[ex]

        # --- oracle state grid ---------------------------------------------------------
        if t % GRID_EVERY_DAYS == 0:
            gi = np.flatnonzero(signed)
            offsets = tuple(o for o in range(1, horizon) if (t + o) in campaign_set)
            key = (dow, offsets)
            if key not in tables:
                tables[key] = m.no_event_tables(
                    horizon_days=horizon,
                    first_dow=dow,
                    campaign_offsets=offsets,
                    arms=arms,
                    consent_codes=n_consent_codes,
                    campaign_every_days=campaign_every_days,
                )
            state_idx = np.where(alive[gi], level[gi], k)
            rest = tables[key][act_idx[gi], drift[gi], consent_code[gi], state_idx]
            states.add(
                user=gi,
                day=np.full(gi.size, t, dtype=np.int64),
                engagement=np.where(alive[gi], eng_now[gi], 0.0),
                hazard=np.where(alive[gi], m.HAZARD[level[gi]], 1.0),
                alive=alive[gi],
                p_inactive=ne0[gi] * rest,
            )

        # --- organic sessions ----------------------------------------------------------
        counts = rng.poisson(rate)
        new_users = np.flatnonzero(signup_day == t)
        users_s = np.repeat(np.arange(n), counts)
        secs = _session_seconds(rng, users_s.size)
        users_s = np.concatenate([new_users, users_s])
        secs = np.concatenate([signup_sec[new_users], secs])
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
        last_session[users_s] = t
        last_abandon[users_s[cart & ~purchase]] = t
        browse = browse * browse_decay + np.bincount(users_s, weights=n_prod, minlength=n)
        fatigue *= fatigue_decay

        # --- end-of-day transitions ----------------------------------------------------
        u = rng.random(n)
        v = rng.random(n)
        churn = present & alive & (u < m.HAZARD[level])
        survive = present & alive & ~churn
        up = survive & (v < m.DRIFT_UP[drift])
        down = survive & ~up & (v < m.DRIFT_UP[drift] + m.DRIFT_DOWN[drift])
        react = present & ~alive & (u < m.REACTIVATION_RATE)
        level = np.where(up, np.minimum(level + 1, k - 1), level)
        level = np.where(down, np.maximum(level - 1, 0), level)
        level = np.where(react, m.REACTIVATION_LEVEL, level)
        alive = (alive & ~churn) | react
        level = np.where(conv_level_bump & alive, np.minimum(level + 1, k - 1), level)
        level = np.where(conv_reactivate, m.CONVERSION_REACTIVATION_LEVEL, level)
        alive = alive | conv_reactivate

    user_ids = pl.Series(schemas.USER_ID, [f"u{i + 1:07d}" for i in range(n)], dtype=pl.String)
    users = users_frame(user_ids, start_us, signup_day, signup_sec, region, plan, consent)
    events = events_frame(rng, user_ids, start_us, sessions, opens, arms, pref_cum, spend)
    exposures, truth = exposure_frames(user_ids, start_us, expo, truth_p, arms)
    states_df = states_frame(user_ids, start_us, states, horizon)
    return SimulatedData(events=events, users=users, exposures=exposures, truth=truth, states=states_df)


def write_simulation(data: SimulatedData, out_dir: Path) -> dict[str, Path]:
    """Write one parquet file per table into `out_dir` (created if needed); returns the paths.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in ("events", "users", "exposures", "truth", "states"):
        frame: pl.DataFrame = getattr(data, name)
        path = out_dir / f"{name}.parquet"
        tmp = out_dir / f".{name}.parquet.tmp"
        frame.write_parquet(tmp, statistics=False)
        tmp.replace(path)
        paths[name] = path
    return paths
