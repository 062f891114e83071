"""Timing features (point in time), time zones, the send-time choice and its propensity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage import schemas
from engage.config import ConfigError, TimingConfig, load_config
from engage.timing.features import HOW, timing_features
from engage.timing.sendtime import send_times
from engage.timing.zones import fixed_zone, resolve_zones

AS_OF = datetime(2024, 3, 6, 0, 0, tzinfo=UTC)  # a Wednesday
TYPES = ["session_start", "purchase", "email_open", "push_open", "email_click"]


def _events(rows: list[tuple[str, datetime, str]]) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            schemas.USER_ID: [r[0] for r in rows],
            schemas.TS: pl.Series([r[1] for r in rows], dtype=schemas.TS_DTYPE),
            schemas.EVENT_TYPE: [r[2] for r in rows],
        },
        schema={schemas.USER_ID: pl.String, schemas.TS: schemas.TS_DTYPE, schemas.EVENT_TYPE: pl.String},
    )
    return frame.with_columns(
        pl.when(pl.col(schemas.EVENT_TYPE).str.starts_with("push"))
        .then(pl.lit("push"))
        .when(pl.col(schemas.EVENT_TYPE).str.starts_with("email"))
        .then(pl.lit("email"))
        .alias(schemas.CHANNEL)
    )


USERS = pl.DataFrame(
    {schemas.USER_ID: ["u1", "u2", "u3"], "timezone": ["Europe/Berlin", None, "Mars/Olympus"]}
)
_event = st.tuples(
    st.sampled_from(["u1", "u2", "u3"]),
    st.floats(min_value=0.0, max_value=60.0, allow_nan=False),
    st.sampled_from(TYPES),
)


_send = st.tuples(
    st.sampled_from(["u1", "u2", "u3"]),
    st.floats(min_value=0.0, max_value=60.0, allow_nan=False),
    st.sampled_from(["email", "push"]),
)


def _sends(items: list[tuple[str, datetime, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            schemas.USER_ID: [i[0] for i in items],
            schemas.TS: pl.Series([i[1] for i in items], dtype=schemas.TS_DTYPE),
            schemas.MESSAGE_ID: ["m"] * len(items),
            schemas.CHANNEL: [i[2] for i in items],
        },
        schema={
            schemas.USER_ID: pl.String,
            schemas.TS: schemas.TS_DTYPE,
            schemas.MESSAGE_ID: pl.String,
            schemas.CHANNEL: pl.String,
        },
    )


def _features(
    rows: list[tuple[str, datetime, str]], sends: list[tuple[str, datetime, str]]
) -> tuple[pl.DataFrame, np.ndarray]:
    f = timing_features(_events(rows), AS_OF, users=USERS, exposures=_sends(sends), seed=1)
    return f.table, f.profile


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    past=st.lists(_event, min_size=1, max_size=25),
    future=st.lists(_event, max_size=10),
    drop=st.booleans(),
    sent=st.lists(_send, max_size=12),
    sent_later=st.lists(_send, max_size=6),
)
def test_events_at_or_after_as_of_never_change_a_timing_feature(past, future, drop, sent, sent_later) -> None:
    before = [(u, AS_OF - timedelta(days=d + 1e-3), t) for u, d, t in past]
    after = [(u, AS_OF + timedelta(days=d), t) for u, d, t in future]
    sends = [(u, AS_OF - timedelta(days=d + 1e-3), c) for u, d, c in sent]
    later = [(u, AS_OF + timedelta(days=d), c) for u, d, c in sent_later]  # sends at or after as_of
    base_table, base_profile = _features(before, sends)
    mutated = before + (after[1:] if drop and after else after)
    if after and not drop:  # move one at-or-after event and change its type
        user, ts, _ = after[0]
        mutated = [*before, (user, ts + timedelta(hours=5), "purchase"), *after[1:]]
    table, profile = _features(mutated, sends + later)
    assert table.equals(base_table)
    np.testing.assert_array_equal(profile, base_profile)


def _routine(
    user: str, hour: int, days: int, etype: str = "session_start"
) -> list[tuple[str, datetime, str]]:
    return [
        (user, AS_OF - timedelta(days=d) + timedelta(hours=hour, minutes=7), etype)
        for d in range(1, days + 1)
    ]


def test_profile_is_shrunk_toward_the_population_and_peaks_at_the_users_hours() -> None:
    spread = [("u3", AS_OF - timedelta(days=h + 1) + timedelta(hours=h), "session_start") for h in range(24)]
    rows = [
        *_routine("u1", 18, 40),
        *_routine("u2", 7, 40),
        *spread,
        ("u4", AS_OF - timedelta(hours=3), "purchase"),
    ]
    users = pl.DataFrame({schemas.USER_ID: ["u1", "u2", "u3", "u4", "u5"], "timezone": ["UTC"] * 5})
    f = timing_features(_events(rows), AS_OF, users=users, seed=1)
    assert np.allclose(f.profile.sum(axis=1), 1.0)
    hour_of_day = f.profile.reshape(5, 7, 24).sum(axis=1)
    assert hour_of_day[0].argmax() == 18 and hour_of_day[1].argmax() == 7
    peak = f.table["peakedness"].to_numpy()
    assert peak[0] > 2 * peak[2] and peak[1] > 2 * peak[2]
    # no history: the population's profile itself; one visit at 21:00: pulled toward the evening routine
    np.testing.assert_allclose(f.profile[4], f.prior.population, atol=1e-12)
    assert hour_of_day[3][18] > hour_of_day[3][7]
    assert f.table["activity_hours"].to_list() == [40, 40, 24, 1, 0]


def test_channel_rates_are_shrunk_and_the_last_engaged_channel_is_kept() -> None:
    sends = pl.DataFrame(
        {
            schemas.USER_ID: ["u1"] * 10 + ["u2"] * 10,
            schemas.TS: pl.Series(
                [AS_OF - timedelta(days=d + 1) for d in range(10)] * 2, dtype=schemas.TS_DTYPE
            ),
            schemas.MESSAGE_ID: ["m"] * 20,
            schemas.CHANNEL: ["email"] * 20,
        }
    )
    rows = [
        *_routine("u1", 9, 10, "email_open"),
        ("u2", AS_OF - timedelta(days=2), "push_open"),
        ("u2", AS_OF - timedelta(days=3), "email_open"),
    ]
    f = timing_features(
        _events(rows), AS_OF, users=USERS, exposures=sends, channel_prior_strength=5.0, seed=1
    )
    t = {r[schemas.USER_ID]: r for r in f.table.iter_rows(named=True)}
    assert f.prior.open_rate["email"] == pytest.approx(11 / 20)
    assert t["u1"]["open_rate_email"] == pytest.approx((10 + 5 * 11 / 20) / (10 + 5))
    assert t["u1"]["open_rate_email"] > t["u2"]["open_rate_email"] > 0
    assert t["u2"]["last_engaged_channel"] == "push" and t["u3"]["last_engaged_channel"] is None


def test_zones_stated_inferred_or_utc_with_the_reason() -> None:
    users = pl.DataFrame(
        {schemas.USER_ID: ["a", "b", "c", "d"], "timezone": ["Asia/Tokyo", "Nowhere/Land", None, None]}
    )
    local = np.zeros(24)
    local[19:22] = 1.0  # the population is active 19:00-22:00 local
    utc = np.zeros((4, 24))
    utc[1, 10:13] = 5.0  # active 10-13 UTC: an evening person at UTC+9
    utc[2, 17:20] = 5.0  # at UTC+2
    utc[3, 18] = 1.0  # too little to infer
    z = resolve_zones(users, utc, local, min_events=5)
    assert z["zone"].to_list() == ["Asia/Tokyo", fixed_zone(9), fixed_zone(2), "UTC"]
    assert z["zone_source"].to_list() == ["stated", "inferred", "inferred", "utc"]
    assert "Nowhere/Land" in z["zone_note"][1] and z["zone_note"][0] is None
    assert fixed_zone(9) == "Etc/GMT-9"


def _send_features() -> tuple[object, pl.DataFrame]:
    rows = _routine("u1", 23, 30) + _routine("u2", 12, 30)
    users = pl.DataFrame({schemas.USER_ID: ["u1", "u2"], "timezone": ["UTC", "America/New_York"]})
    return timing_features(_events(rows), AS_OF, users=users, seed=1), users


def test_send_time_is_the_users_best_hour_in_their_zone_outside_quiet_hours() -> None:
    f, _ = _send_features()
    cfg = TimingConfig(epsilon=0.0)
    email = send_times(f, AS_OF, cfg, channels=np.array([0, 0]))
    # u2 is active at 12:07 UTC, 07:07 in New York (EST): the best hour is 07:00 local, 12:00 UTC
    assert email["local_send_hour"].to_list() == [23, 7]
    assert email["send_at"][1] == datetime(2024, 3, 6, 12, 0, tzinfo=UTC)
    push = send_times(f, AS_OF, cfg, channels=np.array([1, 1]))  # push is quiet 22:00-08:00 local
    quiet = {22, 23, 0, 1, 2, 3, 4, 5, 6, 7}
    assert push["local_send_hour"][0] not in quiet and push["local_send_hour"][1] == 8  # nearest allowed
    assert (push["send_propensity"] == 1.0).all()
    assert set(push["send_basis"]) == {"user"}


def test_quiet_hours_covering_the_window_fall_back_after_it_and_say_so() -> None:
    f, _ = _send_features()
    cfg = TimingConfig(epsilon=0.5, window_hours=3, quiet_hours={"push": (22, 8)})
    late = AS_OF.replace(hour=23)  # 23:00-02:00 UTC: all quiet for the UTC user
    out = send_times(f, late, cfg, channels=np.array([1, 1]))
    row = out.row(0, named=True)
    assert (
        row["send_basis"] == "after_window" and row["local_send_hour"] == 8 and row["send_propensity"] == 1.0
    )


def test_exploration_draws_allowed_hours_with_their_propensity() -> None:
    rows = [(f"u{i}", AS_OF - timedelta(hours=5 + i % 30), "session_start") for i in range(400)]
    f = timing_features(_events(rows), AS_OF, seed=1)
    cfg = TimingConfig(epsilon=0.3, window_hours=24)
    out = send_times(f, AS_OF, cfg, channels=np.zeros(f.table.height, dtype=np.int64))
    greedy = send_times(f, AS_OF, cfg, channels=np.zeros(f.table.height, dtype=np.int64), explore=False)
    explored = out["send_at"] != greedy["send_at"]
    assert 0.15 < explored.mean() < 0.45
    p = out["send_propensity"].to_numpy()
    assert np.allclose(p[explored.to_numpy()], 0.3 / 24)
    assert np.allclose(p[~explored.to_numpy()], 0.7 + 0.3 / 24)
    again = send_times(f, AS_OF, cfg, channels=np.zeros(f.table.height, dtype=np.int64))
    assert again.equals(out)  # a stable draw per user and window
    other = send_times(f, AS_OF, cfg, channels=np.zeros(f.table.height, dtype=np.int64), seed=1)
    assert not other["send_at"].equals(out["send_at"])  # the draw takes a seed


def test_window_covers_up_to_a_week() -> None:
    f, _ = _send_features()
    out = send_times(f, AS_OF, TimingConfig(epsilon=0.0, window_hours=168), channels=np.array([0, 0]))
    assert ((out["send_at"] - AS_OF).dt.total_hours() < 168).all()
    with pytest.raises(ConfigError, match="window_hours"):
        load_config(overrides={"timing.window_hours": 169})


def test_bad_quiet_hours_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"quiet_hours\.sms: unknown channel"):
        load_config(overrides={"timing.quiet_hours": {"sms": [22, 8]}})
    with pytest.raises(ConfigError, match=r"quiet_hours\.push: 5-5 leaves no allowed hour"):
        load_config(overrides={"timing.quiet_hours": {"push": [5, 5]}})


def test_profile_width() -> None:
    f, _ = _send_features()
    assert f.profile.shape == (2, HOW) and f.counts.shape == (2, HOW)


def test_a_few_rows_reasons_read_like_many() -> None:
    """A request's few rows get their reasons joined in Python, many rows by a frame expression:
    the same texts, edge rows included (a null zone said to be inferred gives null, as the frame)."""
    from engage.timing import sendtime

    rng = np.random.default_rng(3)
    basis = np.array(["user", "population", "after_window", "user", "user", "population", "user"])
    local = np.array([7, 0, 23, 30, 12, 5, 9], dtype=np.int64)  # 30: taken modulo a day, as always
    zone = pl.Series(["Europe/Berlin", None, "Etc/GMT-5", None, "UTC", "Etc/GMT+3", "Asia/Tokyo"])
    source = pl.Series(["stated", "utc", "inferred", "inferred", None, "inferred", "weird"])
    profile = rng.dirichlet(np.ones(HOW), len(basis))
    few = sendtime._reason_texts(basis, local, zone, source, profile)
    reps = sendtime._FEW_ROWS // len(basis) + 1
    many = sendtime._reason_texts(
        np.tile(basis, reps),
        np.tile(local, reps),
        pl.concat([zone] * reps),
        pl.concat([source] * reps),
        np.tile(profile, (reps, 1)),
    )[: len(basis)]
    assert few == many
    assert few[3] is None and few[2].endswith("(time zone Etc/GMT-5 inferred from activity)")
    assert few[1].endswith("(time zone unknown: UTC)") and few[4] == few[4].split(" (")[0]


def test_decision_times_are_the_send_times_of_the_rows_sent() -> None:
    """The score columns (what /score and batch runs carry) are :func:`send_times`' choice, nulls where
    nothing is sent."""
    from engage.timing.sendtime import SEND_AT, SEND_PROPENSITY, SEND_REASON, _reason_texts, decision_times

    f, _ = _send_features()
    cfg = TimingConfig(epsilon=0.5)
    channels = np.array([1, -1])
    out = decision_times(f, AS_OF, cfg, channels, seed=3)
    times = send_times(f, AS_OF, cfg, channels=channels, seed=3)
    assert str(out[SEND_AT].dtype) == "datetime64[us, UTC]"
    assert out[SEND_AT][0] == times[SEND_AT].to_pandas()[0] and out[SEND_AT].isna().tolist() == [False, True]
    assert out[SEND_PROPENSITY][0] == times[SEND_PROPENSITY][0] and np.isnan(out[SEND_PROPENSITY][1])
    reasons = _reason_texts(
        times["send_basis"].to_numpy(),
        times["local_send_hour"].to_numpy().astype(np.int64),
        times["zone"],
        times["zone_source"],
        f.profile,
    )
    assert out[SEND_REASON].tolist() == [reasons[0], None]
