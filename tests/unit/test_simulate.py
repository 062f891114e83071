"""Simulator: determinism, table contracts, learnable churn signal, balanced arms, true odds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from engage import schemas
from engage.datasets import _sim_model
from engage.datasets.simulate import SimulatedData, simulate, write_simulation

N_USERS, DAYS, SEED = 1_500, 120, 7
HORIZON = 30
ARMS = (schemas.CONTROL_ARM, *(mid for mid, _ in _sim_model.DEFAULT_MESSAGES))


@pytest.fixture(scope="module")
def sim() -> SimulatedData:
    return simulate(N_USERS, DAYS, seed=SEED, oracle_horizon_days=HORIZON)


@pytest.fixture(scope="module")
def snapshots(sim: SimulatedData) -> pl.DataFrame:
    """Oracle states at grid dates with full label windows, for users active in the prior 90 days,
    joined with realized labels and past-28-day session counts from the event log."""
    ev = sim.events.select(schemas.USER_ID, schemas.TS, schemas.EVENT_TYPE)
    start = sim.states[schemas.TS].min()
    end = start + dt.timedelta(days=DAYS)
    frames = []
    for g in sim.states[schemas.TS].unique().sort():
        if g < start + dt.timedelta(days=28) or g + dt.timedelta(days=HORIZON) > end:
            continue
        past = ev.filter(pl.col(schemas.TS) < g, pl.col(schemas.TS) >= g - dt.timedelta(days=90))
        history = past.group_by(schemas.USER_ID).agg(
            (pl.col(schemas.EVENT_TYPE) == "session_start")
            .filter(pl.col(schemas.TS) >= g - dt.timedelta(days=28))
            .sum()
            .alias("sessions_28d")
        )
        future = (
            ev.filter(pl.col(schemas.TS) >= g, pl.col(schemas.TS) < g + dt.timedelta(days=HORIZON))
            .select(schemas.USER_ID)
            .unique()
            .with_columns(pl.lit(False).alias("inactive"))
        )
        frames.append(
            sim.states.filter(pl.col(schemas.TS) == g)
            .join(history, on=schemas.USER_ID, how="inner")
            .join(future, on=schemas.USER_ID, how="left")
            .with_columns(pl.col("inactive").fill_null(True))
        )
    return pl.concat(frames)


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = write_simulation(simulate(300, 60, seed=11), tmp_path / "a")
    second = write_simulation(simulate(300, 60, seed=11), tmp_path / "b")
    assert set(first) == {"events", "users", "exposures", "truth", "states", "world"}
    assert (tmp_path / "a" / "world.json").read_bytes() == (tmp_path / "b" / "world.json").read_bytes()
    for name, path in first.items():
        assert path.read_bytes() == second[name].read_bytes(), name


def test_different_seed_gives_different_data() -> None:
    a, b = simulate(300, 60, seed=1), simulate(300, 60, seed=2)
    assert not a.events.equals(b.events)
    assert not a.exposures.equals(b.exposures)


def test_events_follow_the_contract(sim: SimulatedData) -> None:
    ev = sim.events
    assert dict(ev.schema) == schemas.EVENT_SCHEMA
    assert set(ev[schemas.EVENT_TYPE].unique()) == set(schemas.KNOWN_EVENT_TYPES)
    assert ev[schemas.USER_ID].null_count() == 0
    sorted_keys = ev.select(schemas.TS, schemas.USER_ID).sort(schemas.TS, schemas.USER_ID)
    assert ev.select(schemas.TS, schemas.USER_ID).equals(sorted_keys)
    amounts = ev.group_by(schemas.EVENT_TYPE).agg(
        pl.col("amount").min().alias("lo"), pl.col("amount").max().alias("hi")
    )
    by_type = {r[schemas.EVENT_TYPE]: r for r in amounts.iter_rows(named=True)}
    assert by_type["purchase"]["lo"] > 0 and by_type["refund"]["hi"] < 0
    assert by_type["page_view"]["lo"] is None
    products = ev.filter(pl.col(schemas.EVENT_TYPE).is_in(["product_view", "purchase"]))
    assert products["category"].null_count() == 0 and products["item_id"].null_count() == 0
    opens = ev.filter(pl.col(schemas.EVENT_TYPE).is_in(["email_open", "email_click", "push_open"]))
    assert opens["message_id"].null_count() == 0 and opens["channel"].null_count() == 0
    # every event falls inside the simulated period and after the user's signup
    start = sim.states[schemas.TS].min()
    assert ev[schemas.TS].min() >= start
    assert ev[schemas.TS].max() < start + dt.timedelta(days=DAYS)
    joined = ev.join(sim.users, on=schemas.USER_ID, how="left")
    assert joined[schemas.SIGNUP_TS].null_count() == 0
    assert (joined[schemas.TS] >= joined[schemas.SIGNUP_TS]).all()


def test_sessions_include_short_bounces_and_engaged_sessions(sim: SimulatedData) -> None:
    per_session = (
        sim.events.filter(pl.col("session_id").is_not_null())
        .group_by("session_id")
        .agg(
            (pl.col(schemas.TS).max() - pl.col(schemas.TS).min()).dt.total_seconds().alias("secs"),
            pl.len().alias("n"),
        )
    )
    short = (per_session["secs"] < 10).mean()
    assert 0.05 < short < 0.6
    assert (per_session["n"] >= 4).mean() > 0.2
    assert per_session["secs"].max() < 3 * 3600


def test_size_is_in_the_intended_range(sim: SimulatedData) -> None:
    per_user = sim.events.height / N_USERS
    assert 15 < per_user < 100, per_user


def test_users_table(sim: SimulatedData) -> None:
    users = sim.users
    assert users.height == N_USERS and users[schemas.USER_ID].is_unique().all()
    assert users.schema[schemas.SIGNUP_TS] == schemas.TS_DTYPE
    for ch in schemas.CHANNELS:
        assert users.schema[schemas.consent_column(ch)] == pl.Boolean
    assert users["plan"].n_unique() >= 2 and users["region"].n_unique() >= 3
    start = sim.states[schemas.TS].min()
    signed_later = (users[schemas.SIGNUP_TS] > start).mean()
    assert 0.2 < signed_later < 0.9  # users sign up over time


def test_behavior_before_churn_differs(snapshots: pl.DataFrame) -> None:
    churn_rate = snapshots["inactive"].mean()
    assert 0.08 < churn_rate < 0.5, churn_rate
    means = snapshots.group_by("inactive").agg(pl.col("sessions_28d").mean())
    by = dict(zip(means["inactive"], means["sessions_28d"], strict=True))
    assert by[True] < 0.5 * by[False], by


def test_some_churned_users_reactivate(sim: SimulatedData) -> None:
    st = sim.states.sort(schemas.USER_ID, schemas.TS)
    came_back = st.with_columns(pl.col("alive").shift(1).over(schemas.USER_ID).alias("was_alive")).filter(
        ~pl.col("was_alive").fill_null(True) & pl.col("alive")
    )
    assert came_back.height > 0


def test_oracle_inactivity_is_calibrated_and_informative(snapshots: pl.DataFrame) -> None:
    col = f"p_inactive_{HORIZON}d"
    predicted = snapshots[col].mean()
    realized = snapshots["inactive"].mean()
    assert abs(predicted - realized) < 0.02, (predicted, realized)
    auc = roc_auc_score(snapshots["inactive"].to_numpy(), snapshots[col].to_numpy())
    assert auc > 0.8, auc
    # calibrated by decile of the oracle score too, not only on average
    binned = (
        snapshots.with_columns((pl.col(col) * 5).floor().clip(0, 4).alias("bin"))
        .group_by("bin")
        .agg(pl.col(col).mean().alias("p"), pl.col("inactive").mean().alias("y"), pl.len())
        .filter(pl.col("len") >= 300)
    )
    assert binned.height >= 2
    assert (binned["p"] - binned["y"]).abs().max() < 0.06


def test_states_columns(sim: SimulatedData) -> None:
    st = sim.states
    assert st.columns == [
        schemas.USER_ID,
        schemas.TS,
        "engagement",
        "churn_hazard",
        "alive",
        f"p_inactive_{HORIZON}d",
    ]
    days = (st[schemas.TS] - st[schemas.TS].min()).dt.total_days().unique()
    assert (days % 7 == 0).all()
    p = st[f"p_inactive_{HORIZON}d"]
    assert p.is_between(0, 1).all() and p.null_count() == 0


def test_arms_are_balanced_given_consent(sim: SimulatedData) -> None:
    ex = sim.exposures.join(sim.users, on=schemas.USER_ID)
    channel_of = dict(_sim_model.DEFAULT_MESSAGES)
    for ch in ("email", "push", "in_app"):
        assert ex.filter(~pl.col(schemas.consent_column(ch)))[schemas.CHANNEL].eq(ch).sum() == 0, (
            f"message sent on {ch} without consent"
        )
    # within one consent profile, each allowed arm gets 1/k of the exposures (chi-square)
    profile = ex.filter(pl.col("consent_email") & pl.col("consent_push") & pl.col("consent_in_app"))
    counts = profile.group_by(schemas.MESSAGE_ID).len()
    assert set(counts[schemas.MESSAGE_ID]) == set(ARMS)
    expected = profile.height / len(ARMS)
    chi2 = float(((counts["len"] - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, chi2  # 99.9% quantile of chi-square with 5 degrees of freedom
    assert np.allclose(profile[schemas.PROPENSITY].to_numpy(), 1 / len(ARMS))
    # propensity is 1 / number of allowed arms for every exposure
    allowed = 1 + sum(pl.col(schemas.consent_column(channel_of[mid])).cast(pl.Int32) for mid in ARMS[1:])
    check = ex.select((pl.col(schemas.PROPENSITY) - 1 / allowed).abs().max()).item()
    assert check < 1e-12


def test_truth_has_a_probability_per_arm(sim: SimulatedData) -> None:
    truth, ex = sim.truth, sim.exposures
    assert truth.height == ex.height
    assert truth.select(schemas.USER_ID, schemas.TS).equals(ex.select(schemas.USER_ID, schemas.TS))
    for arm in ARMS:
        col = truth[f"p_{arm}"]
        assert col.null_count() == 0 and col.is_between(0, 1).all(), arm
    assert truth["churn_hazard"].is_between(0, 1).all()


def test_given_outcomes_match_true_probabilities(sim: SimulatedData) -> None:
    both = pl.concat([sim.exposures, sim.truth.drop(schemas.USER_ID, schemas.TS)], how="horizontal")
    for arm in ARMS:
        rows = both.filter(pl.col(schemas.MESSAGE_ID) == arm)
        rate = rows[schemas.CONVERTED].mean()
        expected = rows[f"p_{arm}"].mean()
        se = np.sqrt(expected * (1 - expected) / rows.height)
        assert abs(rate - expected) < 4 * se + 1e-3, (arm, rate, expected)
    revenue = both.filter(pl.col(schemas.CONVERTED))[schemas.REVENUE]
    assert (revenue > 0).all()
    assert (both.filter(~pl.col(schemas.CONVERTED))[schemas.REVENUE] == 0).all()


def test_converted_exposures_show_a_purchase_in_the_log(sim: SimulatedData) -> None:
    sent = sim.exposures.filter(pl.col(schemas.CONVERTED), pl.col(schemas.MESSAGE_ID) != schemas.CONTROL_ARM)
    buys = sim.events.filter(
        pl.col(schemas.EVENT_TYPE) == "purchase", pl.col(schemas.MESSAGE_ID).is_not_null()
    )
    assert buys.height == sent.height
    matched = sent.join(
        buys.select(schemas.USER_ID, schemas.MESSAGE_ID, pl.col(schemas.TS).alias("buy_ts")),
        on=[schemas.USER_ID, schemas.MESSAGE_ID],
    ).filter(
        (pl.col("buy_ts") > pl.col(schemas.TS))
        & (pl.col("buy_ts") < pl.col(schemas.TS) + dt.timedelta(days=7))
    )
    assert matched.select(schemas.USER_ID, schemas.TS).unique().height == sent.height


def test_effects_are_heterogeneous(sim: SimulatedData) -> None:
    """The best arm per exposure beats every single arm: personalization pays."""
    p = sim.truth.select([f"p_{a}" for a in ARMS]).to_numpy()
    alive = sim.truth["alive"].to_numpy()
    p = p[alive]
    best_single = p.mean(axis=0).max()
    assert p.max(axis=1).mean() > best_single + 0.01
    lift = p[:, 1:] - p[:, :1]
    assert (lift.max(axis=0) > 0.05).sum() >= 3  # targeted messages help their segment a lot
    assert (lift.max(axis=0) > 0.02).sum() >= 4
    assert (lift.min(axis=0) < 0).sum() >= 3  # some messages slightly hurt some users
    assert (lift.min(axis=0) < 0.001).all()  # and does little or harm for others


def test_cart_coupon_lifts_cart_abandoners(sim: SimulatedData) -> None:
    """The effect follows visible behavior: abandoned carts in the week before the exposure."""
    carts = sim.events.filter(pl.col(schemas.EVENT_TYPE) == "add_to_cart").select(
        schemas.USER_ID, pl.col(schemas.TS).alias("cart_ts")
    )
    lift = sim.truth.select(
        schemas.USER_ID,
        schemas.TS,
        (pl.col("p_cart_coupon") - pl.col("p_none")).alias("lift"),
    )
    recent = (
        lift.join(carts, on=schemas.USER_ID)
        .filter(
            (pl.col("cart_ts") < pl.col(schemas.TS))
            & (pl.col("cart_ts") >= pl.col(schemas.TS) - dt.timedelta(days=8))
        )
        .select(schemas.USER_ID, schemas.TS)
        .unique()
        .with_columns(pl.lit(True).alias("had_cart"))
    )
    tagged = lift.join(recent, on=[schemas.USER_ID, schemas.TS], how="left").with_columns(
        pl.col("had_cart").fill_null(False)
    )
    means = tagged.group_by("had_cart").agg(pl.col("lift").mean())
    by = dict(zip(means["had_cart"], means["lift"], strict=True))
    assert by[True] > by[False] + 0.03, by


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        simulate(0, 10, seed=1)
    with pytest.raises(ValueError, match="duplicate"):
        simulate(10, 10, seed=1, messages=[("a", "email"), ("a", "push")])
    with pytest.raises(ValueError, match="sms"):
        simulate(10, 10, seed=1, messages=[("a", "sms")])


def test_custom_catalog_gets_generic_effect() -> None:
    data = simulate(200, 30, seed=3, messages=[("mystery", "email")])
    assert set(data.exposures[schemas.MESSAGE_ID].unique()) == {"none", "mystery"}
    assert {"p_none", "p_mystery"} <= set(data.truth.columns)
