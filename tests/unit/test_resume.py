"""The simulator as an environment: a world carried on answers served decisions through its truth."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from engage import schemas
from engage.datasets.resume import resume
from engage.datasets.simulate import SimulatedData, read_simulation, simulate, write_simulation

DAYS = 56
MESSAGES = ("none", "cart_coupon", "winback_offer", "newsletter", "category_news", "retained_content")


@pytest.fixture(scope="module")
def world() -> SimulatedData:
    return simulate(1_200, DAYS, seed=5)


def _end(data: SimulatedData) -> pd.Timestamp:
    return pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=DAYS)


def _log(data: SimulatedData, *, at: pd.Timestamp, seed: int = 0, holdout: float = 0.1) -> pd.DataFrame:
    """One random decision per user at `at`, shaped like read_decisions' frame."""
    rng = np.random.default_rng(seed)
    users = data.users[schemas.USER_ID].to_list()
    return pd.DataFrame(
        {
            "decision_id": [f"{seed}-{i}" for i in range(len(users))],
            "decided_at": at.isoformat(),
            "user_id": users,
            "message_id": rng.choice(MESSAGES, len(users)),
            "channel": None,
            "propensity": 1 / len(MESSAGES),
            "holdout": rng.random(len(users)) < holdout,
        }
    )


def test_resume_is_deterministic_and_keeps_the_past(world: SimulatedData, tmp_path: Path) -> None:
    log = _log(world, at=_end(world))
    first, counts = resume(world, log, 14)
    second, _ = resume(world, log, 14)
    a, b = write_simulation(first, tmp_path / "a"), write_simulation(second, tmp_path / "b")
    for name, path in a.items():
        assert path.read_bytes() == b[name].read_bytes(), name
    assert counts.answered == len(log) and counts.treated + counts.control == len(log)
    old = first.events.filter(pl.col(schemas.TS) < _end(world))
    assert old.equals(world.events)  # the past is the past
    assert first.users.equals(world.users) and first.exposures.equals(world.exposures)
    assert first.truth.head(world.truth.height).select(world.truth.columns).equals(world.truth)
    assert first.world is not None and first.world.day == DAYS + 14
    assert world.world is not None and world.world.day == DAYS  # the input is not modified
    new = first.events.filter(pl.col(schemas.TS) >= _end(world))
    assert new[schemas.TS].max() < _end(world) + timedelta(days=14 + 7)
    assert new["session_id"].drop_nulls().is_in(world.events["session_id"].drop_nulls()).sum() == 0


def test_resuming_in_steps_equals_resuming_at_once(world: SimulatedData) -> None:
    """The equality that holds: per-day seeded streams make a resume split-invariant.

    (``simulate(D1 + D2)`` is not ``simulate(D1)`` resumed: signups spread over the whole run and
    ``simulate`` runs randomized campaigns; see the resume module.)
    """
    log = pd.concat(
        [_log(world, at=_end(world), seed=1), _log(world, at=_end(world) + timedelta(days=9), seed=2)]
    )
    at_once, _ = resume(world, log, 16)
    part, c1 = resume(world, log, 6)
    steps, c2 = resume(part, log, 10)
    for name in ("events", "truth", "states"):
        assert getattr(steps, name).equals(getattr(at_once, name)), name
    assert c1.after_end == len(log) // 2 and c2.before_start == len(log) // 2
    empty = log.iloc[:0]
    one, _ = resume(world, empty, 9)
    two, _ = resume(resume(world, empty, 4)[0], empty, 5)
    assert one.events.equals(two.events) and one.states.equals(two.states)


def test_a_written_world_resumes_like_the_one_in_memory(world: SimulatedData, tmp_path: Path) -> None:
    write_simulation(world, tmp_path / "w")
    read = read_simulation(tmp_path / "w")
    log = _log(world, at=_end(world) + timedelta(hours=13))
    assert resume(read, log, 8)[0].events.equals(resume(world, log, 8)[0].events)
    (tmp_path / "w" / "world.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"world\.json"):
        read_simulation(tmp_path / "w")


def test_users_answer_the_served_arm_with_its_true_probability() -> None:
    """Realized conversions per served arm match the truth's probability of that arm."""
    data = simulate(6_000, 35, seed=9)
    at = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=35)
    log = _log(data, at=at, seed=3, holdout=0.2)
    resumed, _ = resume(data, log, 8)
    truth = resumed.truth.filter(pl.col("decision_id").is_not_null()).to_pandas()
    served = truth["served_arm"]
    p = np.array([truth.at[i, f"p_{a}"] for i, a in zip(truth.index, served, strict=True)])
    purchases = resumed.events.filter(
        (pl.col(schemas.EVENT_TYPE) == "purchase") & (pl.col(schemas.TS) >= at)
    ).select(schemas.USER_ID, schemas.TS, schemas.MESSAGE_ID)
    # a treated conversion is a purchase carrying the served message; control ones carry none,
    # so compare treated users only, per arm
    for arm in MESSAGES[1:]:
        rows = (served == arm).to_numpy()
        users = truth.loc[rows, schemas.USER_ID]
        hits = (
            purchases.filter(pl.col(schemas.MESSAGE_ID) == arm)[schemas.USER_ID].is_in(users.tolist()).sum()
        )
        expected, sd = p[rows].sum(), np.sqrt((p[rows] * (1 - p[rows])).sum())
        assert abs(hits - expected) < 4 * sd + 1, (arm, hits, expected)
    # holdout rows deliver nothing: their served arm is none, and no open carries their message
    hold = log[log["holdout"]]
    assert set(truth.loc[truth["decision_id"].isin(hold["decision_id"]), "served_arm"]) == {"none"}
    opens = resumed.events.filter(pl.col(schemas.EVENT_TYPE).is_in(["email_open", "push_open"]))
    assert opens.filter(pl.col(schemas.TS) >= at)[schemas.USER_ID].is_in(hold["user_id"].tolist()).sum() == 0


def test_decisions_outside_the_period_or_world_are_counted(world: SimulatedData) -> None:
    end = _end(world)
    log = pd.DataFrame(
        {
            "decision_id": ["a", "a", "b", "c", "d", "e", "f"],
            "decided_at": [
                end.isoformat(),
                end.isoformat(),
                (end - timedelta(days=1)).isoformat(),
                (end + timedelta(days=5)).isoformat(),
                end.isoformat(),
                "not a time",
                (end + timedelta(hours=20)).isoformat(),
            ],
            "user_id": ["u0000001", "u0000001", "u0000002", "u0000003", "nobody", "u0000004", "u0000005"],
            "message_id": [
                "cart_coupon",
                "cart_coupon",
                "none",
                "newsletter",
                "none",
                "none",
                "winback_offer",
            ],
        }
    )
    _, counts = resume(world, log, 5)
    assert (counts.rows, counts.answered, counts.duplicate_id) == (7, 2, 1)
    assert (counts.before_start, counts.after_end, counts.unknown_user, counts.bad_time) == (1, 1, 1, 1)
    with pytest.raises(KeyError, match="message_id"):
        resume(world, log.drop(columns="message_id"), 5)
    with pytest.raises(ValueError, match="channel"):
        resume(world, log.assign(channel="fax"), 5)
