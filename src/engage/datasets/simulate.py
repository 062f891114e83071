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

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

from engage import schemas
from engage.datasets import _sim_model as m
from engage.datasets._sim_days import (
    DayFlags,
    World,
    end_of_day,
    open_probabilities,
    oracle_states,
    organic_sessions,
    respond,
    session_seconds,
    world_frame,
    world_from,
    world_meta,
)
from engage.datasets._sim_tables import (
    CATEGORIES,
    PLANS,
    REGIONS,
    US_PER_S,
    Buffer,
    events_frame,
    exposure_frames,
    states_frame,
    users_frame,
)
from engage.datasets._sim_timing import (
    TIMING_STREAM,
    ZONES,
    Rhythm,
    draw_campaign,
    draw_rhythm,
    truth_columns,
    variants,
    zone_names,
)
from engage.datasets._sim_timing import session_seconds as timed_seconds

TIMEZONE = schemas.TIMEZONE
CONSENT_RATES = {"email": 0.70, "push": 0.45, "in_app": 0.60, "web_popup": 0.20}
GRID_EVERY_DAYS = 7


@dataclass(frozen=True)
class SimulatedData:
    """The simulated tables: raw logs (events, users, exposures) and ground truth (truth, states)."""

    events: pl.DataFrame
    users: pl.DataFrame
    exposures: pl.DataFrame
    truth: pl.DataFrame
    states: pl.DataFrame
    world: World | None = None
    """The latent state at the end (``resume`` carries the world on from it); not a table."""


def _start_us(start: str) -> tuple[int, int]:
    """Epoch microseconds of `start` at 00:00 UTC, and its weekday (Monday = 0)."""
    day = datetime.fromisoformat(start).date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return int(midnight.timestamp()) * US_PER_S, day.weekday()


def _new_world(
    rng: np.random.Generator, n: int, days: int, *, seed: int, start: str, arms: list[tuple[str, str]]
) -> World:
    """Draw every user's traits and starting state (the first draws of a seed's stream)."""
    k, n_cat = m.N_LEVELS, len(CATEGORIES)
    pre = rng.random(n) < 0.35
    signup_day = np.where(pre, -rng.integers(1, 366, n), rng.integers(0, days, n))
    signup_sec = session_seconds(rng, n)
    act_idx = rng.choice(len(m.ACTIVITY), n, p=m.ACTIVITY_P)
    drift = rng.choice(len(m.DRIFT_UP), n, p=m.DRIFT_P)
    level_p = np.linspace(0.5, 1.5, k)
    level = np.where(
        pre, rng.choice(k, n, p=level_p / level_p.sum()), rng.integers(int(0.4 * k), k, n)
    ).astype(np.int64)
    alive = ~(pre & (rng.random(n) < 0.25))
    consent_code = np.zeros(n, dtype=np.int64)
    for bit, ch in enumerate(schemas.CHANNELS):
        consent_code |= (rng.random(n) < CONSENT_RATES.get(ch, 0.3)).astype(np.int64) << bit
    region = rng.integers(0, len(REGIONS), n)
    plan = rng.choice(len(PLANS), n, p=[0.7, 0.2, 0.1])
    pref = rng.dirichlet(np.full(n_cat, 0.4), n)
    last_session = np.where(alive, -rng.integers(1, 15, n), -rng.integers(30, 200, n)).astype(np.int64)
    return World(
        seed=seed,
        start=start,
        day=0,
        arms=arms,
        campaign_every_days=7,
        horizon=30,
        signup_day=signup_day.astype(np.int64),
        signup_sec=signup_sec,
        act_idx=act_idx.astype(np.int64),
        drift=drift.astype(np.int64),
        consent_code=consent_code,
        region=region.astype(np.int64),
        plan=plan.astype(np.int64),
        pref=pref,
        level=level,
        alive=alive,
        last_session=np.where(pre, last_session, signup_day).astype(np.int64),
        last_abandon=np.full(n, -(10**6), dtype=np.int64),
        browse=np.zeros(n),
        fatigue=np.zeros(n),
    )


def simulate(
    n_users: int,
    days: int,
    *,
    seed: int,
    start: str = "2024-01-01",
    campaign_every_days: int = 7,
    oracle_horizon_days: int = 30,
    messages: Sequence[tuple[str, str]] | None = None,
    timing: bool = False,
) -> SimulatedData:
    """Simulate `n_users` over `days` days from `start` (00:00 UTC); deterministic by `seed`.

    `messages` is the catalog as (message_id, channel) pairs (default: the five packaged
    messages); the control arm ``none`` is always added. Campaigns run every
    `campaign_every_days` days (while their 7-day attribution window fits in the run);
    `oracle_horizon_days` is H in the ``p_inactive_<H>d`` column of ``states``.

    With `timing` (``_sim_timing``) users get a time zone (``users.timezone``, sometimes unstated),
    a weekly rhythm their sessions follow and a responsiveness per channel; campaigns send each
    message on a channel drawn among the user's consented ones at a uniformly drawn UTC hour (the
    propensity is the product), effects scale with the channel and the send hour's timing gain,
    and the truth carries every user's gains by hour and channel. The states' ``p_inactive`` is
    then approximate (timed opens are not in its tables). Without, the output is as before.
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
    w = _new_world(rng, n_users, days, seed=seed, start=start, arms=arms)
    w.campaign_every_days, w.horizon, w.timing = campaign_every_days, oracle_horizon_days, timing
    n = n_users
    consent = {ch: w.consent(ch) for ch in schemas.CHANNELS}
    rhythm = draw_rhythm(seed, n, start=start, days=days, start_dow=start_dow) if timing else None
    trng = np.random.default_rng([seed, TIMING_STREAM, 1])
    reach = np.stack([consent[ch] for ch in schemas.CHANNELS], axis=1)
    if rhythm is not None:
        first = np.clip(w.signup_day, 0, days - 1)
        for day in np.unique(first):
            sel = np.flatnonzero(first == day)
            w.signup_sec[sel] = timed_seconds(trng, rhythm, sel, int(day))
    timed: dict[str, list[NDArray[np.generic]]] = {}
    avail = np.ones((n, len(arms)), dtype=bool)
    for j, (_, ch) in enumerate(arms[1:], start=1):
        avail[:, j] = consent.get(ch, False)
    n_avail = avail.sum(axis=1)
    max_delay_ok = min(7, campaign_every_days)
    campaign_days = [t for t in range(days) if t % campaign_every_days == 0 and t + max_delay_ok <= days]
    campaign_set = set(campaign_days)
    horizon = oracle_horizon_days
    tables: dict[tuple[int, tuple[int, ...]], NDArray[np.float64]] = {}

    sessions, opens, expo, states = Buffer(), Buffer(), Buffer(), Buffer()
    truth_p: list[NDArray[np.float64]] = []

    for t in range(days):
        dow = (start_dow + t) % 7
        signed = w.signup_day < t
        # new users get one session at signup today (organic_sessions), organic ones from tomorrow
        rate = np.where(w.alive & signed, m.session_rate(w.level, w.activity, dow), 0.0)
        ne0: NDArray[np.float64] = np.exp(-rate)
        flags = DayFlags.empty(n)

        # --- campaign: every signed-up user gets an arm drawn uniformly among those allowed ---
        if t in campaign_set and rhythm is not None:
            ex = np.flatnonzero(signed)
            ne0[ex] *= _timed_campaign(
                rng, trng, w, rhythm, t, ex, reach, flags, opens, sessions, expo, truth_p, timed
            )
        elif t in campaign_set:
            ex = np.flatnonzero(signed)
            probs = m.arm_probabilities(arms, w.state_of(t, ex))
            av = avail[ex]
            pick = np.floor(rng.random(ex.size) * n_avail[ex]).astype(np.int64)
            choice = np.argmax(np.cumsum(av, axis=1) > pick[:, None], axis=1)
            ex_alive = w.alive[ex]
            eng_ex = m.ENGAGEMENT[w.level[ex]]
            converted, revenue = respond(
                rng,
                w,
                t,
                ex,
                choice,
                probs,
                arms,
                send_hour=m.CAMPAIGN_HOUR,
                delay_days=campaign_every_days,
                opens=opens,
                sessions=sessions,
                flags=flags,
            )
            expo.add(
                user=ex,
                day=np.full(ex.size, t, dtype=np.int64),
                arm=choice.astype(np.int16),
                propensity=1.0 / n_avail[ex],
                converted=converted,
                revenue=revenue,
                hazard=np.where(ex_alive, m.HAZARD[w.level[ex]], 1.0),
                engagement=np.where(ex_alive, eng_ex, 0.0),
                alive=ex_alive,
            )
            truth_p.append(probs)
            # exact day-0 factor for the oracle: average over the uniform arm draw
            f0 = m.conversion_in_window(horizon * 24.0 - m.CAMPAIGN_HOUR, campaign_every_days)
            no_ev = (1.0 - open_probabilities(w, ex, arms)) * (1.0 - probs * f0)
            ne0[ex] *= (no_ev * av).sum(axis=1) / n_avail[ex]

        if t % GRID_EVERY_DAYS == 0:
            offsets = tuple(o for o in range(1, horizon) if (t + o) in campaign_set)
            oracle_states(w, t, dow, ne0, offsets, tables, states)
        start_seconds = None
        if rhythm is not None:
            start_seconds = partial(timed_seconds, trng, rhythm, t=t)
        organic_sessions(rng, w, t, rate, sessions, start_seconds)
        end_of_day(rng, w, t, flags)

    user_ids = user_id_series(n)
    users = users_frame(user_ids, start_us, w.signup_day, w.signup_sec, w.region, w.plan, consent)
    sent_as = variants(arms) if rhythm is not None else None
    events = events_frame(rng, user_ids, start_us, sessions, opens, sent_as or arms, w.pref_cum, w.spend)
    exposures, truth = exposure_frames(
        user_ids,
        start_us,
        expo,
        truth_p,
        arms,
        sent_as=sent_as,
        timing={k: np.concatenate(v) for k, v in timed.items()} if rhythm is not None else None,
        zones=ZONES,
    )
    if rhythm is not None:
        users = users.with_columns(pl.Series(TIMEZONE, zone_names(rhythm), dtype=pl.String))
    states_df = states_frame(user_ids, start_us, states, horizon)
    return SimulatedData(
        events=events, users=users, exposures=exposures, truth=truth, states=states_df, world=w
    )


def _timed_campaign(
    rng: np.random.Generator,
    trng: np.random.Generator,
    w: World,
    rhythm: Rhythm,
    t: int,
    ex: NDArray[np.int64],
    reach: NDArray[np.bool_],
    flags: DayFlags,
    opens: Buffer,
    sessions: Buffer,
    expo: Buffer,
    truth_p: list[NDArray[np.float64]],
    timed: dict[str, list[NDArray[np.generic]]],
) -> NDArray[np.float64]:
    """A timed campaign day: draw, respond, log; returns each exposed user's P(no campaign event)."""
    arms = w.arms
    c = draw_campaign(rng, trng, rhythm, t, ex, len(arms), reach)
    probs = m.arm_probabilities(arms, w.state_of(t, ex), effect_scale=c.effect_scale, channels=c.channel)
    ex_alive = w.alive[ex]
    eng_ex = m.ENGAGEMENT[w.level[ex]]
    channels = np.where(c.choice > 0, c.channel, -1)
    converted, revenue = respond(
        rng,
        w,
        t,
        ex,
        c.choice,
        probs,
        arms,
        send_hour=c.hour.astype(np.float64),
        delay_days=w.campaign_every_days,
        opens=opens,
        sessions=sessions,
        flags=flags,
        channels=channels,
        open_scale=c.open_scale,
        codes=c.code,
    )
    expo.add(
        user=ex,
        day=np.full(ex.size, t, dtype=np.int64),
        arm=c.code.astype(np.int16),
        propensity=c.propensity,
        converted=converted,
        revenue=revenue,
        hazard=np.where(ex_alive, m.HAZARD[w.level[ex]], 1.0),
        engagement=np.where(ex_alive, eng_ex, 0.0),
        alive=ex_alive,
        hour=c.hour,
    )
    truth_p.append(probs)
    for name, values in truth_columns(rhythm, ex, c, reach).items():
        timed.setdefault(name, []).append(values)
    # approximate day-0 factor for the oracle: the drawn send, not an average over the draw
    f0 = m.conversion_in_window(w.horizon * 24.0 - float(c.hour.mean()), w.campaign_every_days)
    p_conv = probs[np.arange(ex.size), c.choice]
    p_open = np.zeros(ex.size)
    for ch in ("email", "push"):
        sel = channels == schemas.CHANNELS.index(ch)
        p_open[sel] = np.where(ex_alive[sel], m.open_probability(ch, eng_ex[sel]), 0.0)
    p_open = np.clip(p_open * c.open_scale, 0.0, 0.95)
    return np.asarray((1.0 - p_open) * (1.0 - p_conv * f0))


def user_id_series(n: int) -> pl.Series:
    """The simulated users' ids, ``u0000001`` onwards (sorted as their indices)."""
    return pl.Series(schemas.USER_ID, [f"u{i + 1:07d}" for i in range(n)], dtype=pl.String)


TABLES = ("events", "users", "exposures", "truth", "states")


def write_simulation(data: SimulatedData, out_dir: Path) -> dict[str, Path]:
    """Write one parquet file per table into `out_dir` (created if needed); returns the paths.

    With the world's latent state, ``world.parquet`` (per user) and ``world.json`` (settings,
    clock) too, so ``resume`` can carry the world on. Each file is written to a temporary name and
    renamed, so a reader never sees half a file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    frames: dict[str, pl.DataFrame] = {name: getattr(data, name) for name in TABLES}
    if data.world is not None:
        frames["world"] = world_frame(data.world, user_id_series(data.world.n))
    for name, frame in frames.items():
        path = out_dir / f"{name}.parquet"
        tmp = out_dir / f".{name}.parquet.tmp"
        frame.write_parquet(tmp, statistics=False)
        tmp.replace(path)
        paths[name] = path
    if data.world is not None:
        tmp = out_dir / ".world.json.tmp"
        tmp.write_text(json.dumps(world_meta(data.world), indent=1) + "\n")
        tmp.replace(out_dir / "world.json")
    return paths


def read_simulation(world_dir: Path) -> SimulatedData:
    """The tables and the latent state ``write_simulation`` wrote into `world_dir`.

    A folder without ``world.parquet`` and ``world.json`` (written before worlds could be resumed,
    or not by the simulator) is a ``FileNotFoundError`` naming what is missing.
    """
    world_dir = Path(world_dir)
    needed = [world_dir / f"{name}.parquet" for name in (*TABLES, "world")] + [world_dir / "world.json"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{world_dir}: not a simulated world, missing {', '.join(missing)}")
    tables = {name: pl.read_parquet(world_dir / f"{name}.parquet") for name in TABLES}
    meta = json.loads((world_dir / "world.json").read_text())
    state = pl.read_parquet(world_dir / "world.parquet")
    if not state[schemas.USER_ID].equals(user_id_series(state.height)):
        raise ValueError(f"{world_dir / 'world.parquet'}: user_id is not u0000001.. in order")
    return SimulatedData(**tables, world=world_from(state, meta))
