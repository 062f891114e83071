"""Simulator with timing: time zones, weekly rhythms, channel responsiveness, randomized send hour/channel."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from engage import schemas
from engage.datasets._sim_timing import ZONES
from engage.datasets.simulate import TIMEZONE, SimulatedData, simulate

N_USERS, DAYS, SEED = 1_500, 90, 5
GAINS = [f"gain_h{h:02d}" for h in range(24)]


@pytest.fixture(scope="module")
def sim() -> SimulatedData:
    return simulate(N_USERS, DAYS, seed=SEED, timing=True)


def test_users_carry_a_time_zone_some_unstated(sim: SimulatedData) -> None:
    zones = sim.users[TIMEZONE]
    assert set(zones.drop_nulls().unique()) <= set(ZONES)
    assert 0.03 < zones.null_count() / zones.len() < 0.2


def test_without_timing_the_users_have_no_zone_and_the_same_states() -> None:
    plain, timed = simulate(300, 30, seed=2), simulate(300, 30, seed=2, timing=True)
    assert TIMEZONE not in plain.users.columns
    # the main stream is untouched by the timing stream: signup days are the same
    assert plain.users[schemas.USER_ID].equals(timed.users[schemas.USER_ID])
    assert plain.users[schemas.SIGNUP_TS].dt.date().equals(timed.users[schemas.SIGNUP_TS].dt.date())


def test_sessions_follow_each_users_rhythm(sim: SimulatedData) -> None:
    """Users start sessions more often in the UTC hours where their true timing gain is high."""
    starts = sim.events.filter(pl.col(schemas.EVENT_TYPE) == "session_start").select(
        schemas.USER_ID, pl.col(schemas.TS).dt.hour().alias("hour")
    )
    gains = sim.truth.group_by(schemas.USER_ID).agg(pl.col(GAINS).mean())
    joined = starts.join(gains, on=schemas.USER_ID)
    g = joined.select(GAINS).to_numpy()
    at_session = g[np.arange(g.shape[0]), joined["hour"].to_numpy()]
    assert at_session.mean() > 1.3 * g.mean(), (at_session.mean(), g.mean())


def test_campaigns_randomize_hour_and_channel_within_consent(sim: SimulatedData) -> None:
    ex = sim.exposures.join(sim.users, on=schemas.USER_ID)
    sent = ex.filter(pl.col(schemas.MESSAGE_ID) != schemas.CONTROL_ARM)
    for ch in schemas.CHANNELS:
        assert sent.filter(pl.col(schemas.CHANNEL) == ch)[schemas.consent_column(ch)].all(), ch
    hours = ex[schemas.TS].dt.hour().value_counts()["count"].to_numpy()
    expected = ex.height / 24
    chi2 = float(((hours - expected) ** 2 / expected).sum())
    assert hours.size == 24 and chi2 < 49.7, chi2  # 99.9% quantile, 23 degrees of freedom
    k = sum(pl.col(schemas.consent_column(ch)).cast(pl.Int32) for ch in schemas.CHANNELS)
    n_arms = 1 + sim.truth.select(pl.selectors.starts_with("p_")).width - 1
    expected_p = (
        pl.when(k == 0)
        .then(1.0)
        .otherwise(
            pl.when(pl.col(schemas.MESSAGE_ID) == schemas.CONTROL_ARM).then(1.0).otherwise(1.0 / k) / n_arms
        )
        / 24
    )
    gap = ex.select((pl.col(schemas.PROPENSITY) - expected_p).abs().max()).item()
    assert gap < 1e-12


def test_given_outcomes_match_the_true_probability_of_the_logged_send(sim: SimulatedData) -> None:
    both = pl.concat([sim.exposures, sim.truth.drop(schemas.USER_ID, schemas.TS)], how="horizontal")
    for arm in both[schemas.MESSAGE_ID].unique().to_list():
        rows = both.filter(pl.col(schemas.MESSAGE_ID) == arm)
        rate, expected = rows[schemas.CONVERTED].mean(), rows[f"p_{arm}"].mean()
        se = np.sqrt(expected * (1 - expected) / rows.height)
        assert abs(rate - expected) < 4 * se + 1e-3, (arm, rate, expected)


def test_send_hour_and_channel_matter_and_differ_by_user(sim: SimulatedData) -> None:
    truth = sim.truth.filter(pl.col("alive"))
    g = truth.select(GAINS).to_numpy()
    assert g.max(axis=1).mean() > 1.3 * g.mean(axis=0).max()  # per-user hour beats any one hour
    assert np.allclose(g.mean(), 1.0, atol=0.1)
    assert truth["best_send_hour"].n_unique() >= 20
    assert truth["best_channel"].drop_nulls().n_unique() == len(schemas.CHANNELS)
    best = truth.select(pl.col("best_send_hour") == pl.concat_list(GAINS).list.arg_max()).to_series()
    assert best.all()
    # opens answer the channel's responsiveness: users who open email more are more responsive to it
    opens = (
        sim.events.filter(pl.col(schemas.EVENT_TYPE) == "email_open").group_by(schemas.USER_ID).len("opens")
    )
    sent = sim.exposures.filter(pl.col(schemas.CHANNEL) == "email").group_by(schemas.USER_ID).len("sent")
    rates = sent.join(opens, on=schemas.USER_ID, how="left").with_columns(
        (pl.col("opens").fill_null(0) / pl.col("sent")).alias("rate")
    )
    resp = truth.group_by(schemas.USER_ID).agg(pl.col("gain_email").first())
    joined = rates.filter(pl.col("sent") >= 3).join(resp, on=schemas.USER_ID)
    assert np.corrcoef(joined["rate"], joined["gain_email"])[0, 1] > 0.2


def test_a_timing_world_says_so_and_is_not_resumed_silently_without_it(tmp_path) -> None:
    import pandas as pd

    from engage.datasets.resume import resume
    from engage.datasets.simulate import read_simulation, write_simulation

    write_simulation(simulate(200, 20, seed=1, timing=True), tmp_path / "w")
    world = read_simulation(tmp_path / "w")
    assert world.world is not None and world.world.timing
    decisions = pd.DataFrame(
        {"user_id": ["u0000001"], "decided_at": ["2024-01-21T10:00:00Z"], "message_id": ["none"]}
    )
    with pytest.raises(ValueError, match=r"simulate\.timing"):
        resume(world, decisions, 5)
