"""The simulator as an environment: carry a simulated world on, answering the decisions served to it.

``resume(world, decisions, days)`` simulates ``days`` more days from where the world stopped. Each
logged decision dated inside those days is delivered on its own channel at its ``decided_at``
(holdout rows and ``none`` deliver nothing) and the user answers through the same response model as
the randomized campaigns (``_sim_days.respond``): a conversion with the arm's true probability, opens
and clicks, fatigue, a level bump. Holdout and ``none`` users draw the control arm's conversion, as
a randomized campaign's control group does, so a lift against the holdout is the true lift. Users
without a decision get no campaign. Organic sessions, churn and drift go on as in ``simulate``.

The truth grows by one row per answered decision: the true 7-day conversion probability under every
arm of the world's catalog at the decision (``p_<arm>``), the latent state, ``decision_id`` and the
arm delivered (``served_arm``), so realized, oracle and ``none`` values can be computed on the same
users. ``p_inactive`` on the resumed weekly grid assumes no later message (the future policy is
unknown to the oracle).

Determinism: each resumed day draws from generators seeded by (world seed, stream, day), one stream
for the answers to decisions, one for organic life, one for expanding the day's events. So resuming
twice gives identical tables, and resuming ``a`` then ``b`` days equals resuming ``a + b`` days
(given the same decisions; tests/unit/test_resume.py checks both). ``simulate(D1 +
D2)`` is *not* ``simulate(D1)`` resumed for ``D2``: signups spread over the run's length, randomized
campaigns run only in ``simulate``, and the streams differ; the tables of the first ``D1`` days
are kept as they were.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
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
)
from engage.datasets._sim_tables import DAY_S, US_PER_S, Buffer, events_frame, states_frame, ts_column
from engage.datasets.simulate import GRID_EVERY_DAYS, SimulatedData, _start_us, user_id_series

__all__ = ["ResumeCounts", "resume"]

ATTRIBUTION_DAYS = 7
"""A decision's purchase falls within this many days of it (what ``p_<arm>`` is the probability of)."""
_ANSWER, _ORGANIC, _EVENTS = 1, 2, 3
_DAY_US = DAY_S * US_PER_S


@dataclass(frozen=True)
class ResumeCounts:
    """What became of the decision log's rows: rows in = answered + every kind left out."""

    rows: int
    answered: int
    treated: int
    control: int
    duplicate_id: int
    before_start: int
    after_end: int
    unknown_user: int
    bad_time: int


def _rng(seed: int, stream: int, day: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, day])


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        raise KeyError(f"decisions: missing column {name!r} (has {', '.join(map(str, frame.columns))})")
    return frame[name]


def _prepare(
    decisions: pd.DataFrame, data: SimulatedData, days: int
) -> tuple[pd.DataFrame, list[tuple[str, str]], ResumeCounts]:
    """The decisions this resume answers (sorted, with user index, day, arm index, send hour)."""
    assert data.world is not None
    w = data.world
    frame = decisions.reset_index(drop=True).copy()
    rows = len(frame)
    user = _column(frame, schemas.USER_ID).astype(str)
    message = _column(frame, schemas.MESSAGE_ID).astype(str)
    at = pd.to_datetime(_column(frame, "decided_at"), utc=True, errors="coerce", format="ISO8601")
    ids = frame["decision_id"] if "decision_id" in frame.columns else pd.Series([None] * rows)
    holdout = frame["holdout"] if "holdout" in frame.columns else pd.Series([False] * rows)
    channel = frame[schemas.CHANNEL] if schemas.CHANNEL in frame.columns else pd.Series([None] * rows)
    start_us, _ = _start_us(w.start)
    index = {uid: i for i, uid in enumerate(user_id_series(w.n).to_list())}
    user_idx = user.map(index)
    bad_time = at.isna().to_numpy()
    micros = (at - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(microseconds=1)
    at_us = micros.fillna(0).to_numpy(dtype=np.int64)
    day = np.floor_divide(at_us - start_us, _DAY_US)
    unknown = (user_idx.isna().to_numpy() | (w.signup_day[user_idx.fillna(0).astype(int)] >= day)) & ~bad_time
    dup = ids.notna().to_numpy() & ids.astype(str).duplicated().to_numpy()
    before = ~bad_time & ~dup & (day < w.day)
    after = ~bad_time & ~dup & (day >= w.day + days)
    keep = ~bad_time & ~dup & ~before & ~after & ~unknown
    is_control = (message == schemas.CONTROL_ARM).to_numpy() | (holdout.fillna(False).astype(bool)).to_numpy()
    catalog = {a: c for a, c in w.arms}
    served_ch = [
        str(ch) if isinstance(ch, str) and ch else catalog.get(mid, "")
        for mid, ch in zip(message, channel, strict=True)
    ]
    arms = list(w.arms)
    extra = sorted(
        {(mid, ch) for mid, ch, k, c in zip(message, served_ch, keep, is_control, strict=True) if k and not c}
        - set(arms)
    )
    for mid, ch in extra:
        if ch not in schemas.CHANNELS:
            raise ValueError(f"decisions: message {mid!r} has channel {ch!r}, not one of {schemas.CHANNELS}")
    arms += extra
    arm_index = {a: j for j, a in enumerate(arms)}
    choice = [
        0 if c else arm_index.get((mid, ch), -1)
        for mid, ch, c in zip(message, served_ch, is_control, strict=True)
    ]
    out = pd.DataFrame(
        {
            "decision_id": ids.where(ids.notna(), None),
            "user": user_idx.fillna(-1).astype(np.int64),
            "at_us": at_us,
            "day": day,
            "choice": np.asarray(choice, dtype=np.int64),
        }
    )[keep]
    out["send_hour"] = (out["at_us"] - start_us - out["day"] * _DAY_US) / (3600.0 * US_PER_S)
    out = out.sort_values(["at_us", "user", "choice"], kind="stable").reset_index(drop=True)
    counts = ResumeCounts(
        rows=rows,
        answered=int(keep.sum()),
        treated=int((keep & ~is_control).sum()),
        control=int((keep & is_control).sum()),
        duplicate_id=int((dup & ~bad_time).sum()),
        before_start=int(before.sum()),
        after_end=int(after.sum()),
        unknown_user=int((unknown & ~dup & ~before & ~after).sum()),
        bad_time=int(bad_time.sum()),
    )
    return out, arms, counts


def resume(
    data: SimulatedData, decisions: pd.DataFrame | pl.DataFrame, days: int
) -> tuple[SimulatedData, ResumeCounts]:
    """Carry `data`'s world on for `days` days, its users answering `decisions` (a decision log).

    `decisions` needs ``user_id``, ``decided_at`` (ISO 8601 or timestamps) and ``message_id``;
    ``channel``, ``holdout`` and ``decision_id`` are read when present (a repeated id counts once).
    Decisions dated before the world's end or after the new end, of unknown (or not yet signed up)
    users, or with an unreadable time are left out and counted. Returns the whole world (old rows
    unchanged, new rows after them) and the counts. `data` is not modified.
    """
    if data.world is None:
        raise ValueError("this simulation carries no world state to resume (simulate it again)")
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    if data.world.timing:
        raise ValueError(
            "this world was simulated with simulate.timing: resuming it (rhythms, channel responses, "
            "send times) is not supported yet; simulate it again with the days you need"
        )
    frame = decisions.to_pandas() if isinstance(decisions, pl.DataFrame) else decisions
    todo, arms, counts = _prepare(frame, data, days)
    w = copy.deepcopy(data.world)
    n, n_world_arms = w.n, len(w.arms)
    start_us, start_dow = _start_us(w.start)
    user_ids = user_id_series(n)
    by_day = {int(d): g for d, g in todo.groupby("day", sort=True)}
    tables: dict[tuple[int, tuple[int, ...]], NDArray[np.float64]] = {}
    events, truth, states = [], [], Buffer()
    first = w.day
    for t in range(first, first + days):
        dow = (start_dow + t) % 7
        rate = np.where(w.alive & (w.signup_day < t), m.session_rate(w.level, w.activity, dow), 0.0)
        ne0 = np.exp(-rate)
        flags = DayFlags.empty(n)
        sessions, opens = Buffer(), Buffer()
        today = by_day.get(t)
        if today is not None:
            ex = today["user"].to_numpy(np.int64)
            choice = today["choice"].to_numpy(np.int64)
            send_hour = today["send_hour"].to_numpy(np.float64)
            state = w.state_of(t, ex)
            probs = m.arm_probabilities(arms, state)
            ex_alive = state.alive.copy()
            hazard = np.where(ex_alive, m.HAZARD[w.level[ex]], 1.0)
            respond(
                _rng(w.seed, _ANSWER, t),
                w,
                t,
                ex,
                choice,
                probs,
                arms,
                send_hour=send_hour,
                delay_days=ATTRIBUTION_DAYS,
                opens=opens,
                sessions=sessions,
                flags=flags,
            )
            truth.append(_truth_rows(today, probs[:, :n_world_arms], w.arms, arms, user_ids, state, hazard))
            p_served = probs[np.arange(ex.size), choice]
            p_open = _served_open(w, ex, choice, arms)
            f0 = np.array([m.conversion_in_window(w.horizon * 24.0 - h, ATTRIBUTION_DAYS) for h in send_hour])
            np.multiply.at(ne0, ex, (1.0 - p_open) * (1.0 - p_served * f0))
        if t % GRID_EVERY_DAYS == 0:
            oracle_states(w, t, dow, ne0, (), tables, states)
        organic = _rng(w.seed, _ORGANIC, t)
        organic_sessions(organic, w, t, rate, sessions)
        end_of_day(organic, w, t, flags)
        events.append(
            events_frame(
                _rng(w.seed, _EVENTS, t),
                user_ids,
                start_us,
                sessions,
                opens,
                arms,
                w.pref_cum,
                w.spend,
                session_prefix=f"s{t:05d}-",
            )
        )
    all_events = pl.concat([data.events, *events]).sort([schemas.TS, schemas.USER_ID], maintain_order=True)
    new_truth = pl.concat([data.truth, *truth], how="diagonal_relaxed") if truth else data.truth
    new_states = pl.concat([data.states, states_frame(user_ids, start_us, states, w.horizon)])
    return (
        SimulatedData(
            events=all_events,
            users=data.users,
            exposures=data.exposures,
            truth=new_truth,
            states=new_states,
            world=w,
        ),
        counts,
    )


def _served_open(
    w: World, ex: NDArray[np.int64], choice: NDArray[np.int64], arms: list[tuple[str, str]]
) -> NDArray[np.float64]:
    """P(open) of each decision's delivered arm."""
    return open_probabilities(w, ex, arms)[np.arange(ex.size), choice]


def _truth_rows(
    today: pd.DataFrame,
    probs: NDArray[np.float64],
    world_arms: list[tuple[str, str]],
    arms: list[tuple[str, str]],
    user_ids: pl.Series,
    state: m.UserState,
    hazard: NDArray[np.float64],
) -> pl.DataFrame:
    """The truth of one day's decisions: ``truth``'s columns plus ``decision_id`` and ``served_arm``."""
    ex = today["user"].to_numpy(np.int64)
    at_us = today["at_us"].to_numpy(np.int64)
    choice = today["choice"].to_numpy(np.int64)
    alive = state.alive
    return pl.DataFrame(
        [
            user_ids.gather(ex),
            ts_column(0, at_us),
            *[pl.Series(f"p_{a}", probs[:, j]) for j, (a, _) in enumerate(world_arms)],
            pl.Series("churn_hazard", hazard),
            pl.Series("engagement", np.where(alive, state.engagement, 0.0)),
            pl.Series("alive", alive),
            pl.Series("decision_id", today["decision_id"].to_list(), dtype=pl.String),
            pl.Series("served_arm", [arms[c][0] for c in choice], dtype=pl.String),
        ]
    )
