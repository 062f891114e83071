"""The snapshot's timing columns: the same timing features back; bad or missing values: no history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from engage import schemas as s
from engage.config import TimingConfig
from engage.timing.features import timing_features
from engage.timing.sendtime import TimingModel, send_times
from engage.timing.snapshot import (
    HOURS_COLUMN,
    TIMING_COLUMNS,
    from_columns,
    scoring_counts,
    to_columns,
)

NOW = datetime(2024, 6, 5, 9, 30, tzinfo=UTC)
ZONES = ("Europe/Berlin", "America/New_York", None, "Not/AZone")


def _world(n: int = 120) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(n):
        hours = rng.choice(24, 2, replace=False)
        for d in range(1, int(rng.integers(0, 30))):
            rows.append((f"u{i}", NOW - timedelta(days=d) + timedelta(hours=int(hours[d % 2])), "page_view"))
    events = pl.DataFrame(
        {
            s.USER_ID: [r[0] for r in rows],
            s.TS: pl.Series([r[1] for r in rows], dtype=s.TS_DTYPE),
            s.EVENT_TYPE: [r[2] for r in rows],
        }
    )
    users = pl.DataFrame(
        {s.USER_ID: [f"u{i}" for i in range(n)], s.TIMEZONE: [ZONES[i % 4] for i in range(n)]}
    )
    return events, users


def test_the_columns_give_back_the_features_and_the_send_times() -> None:
    events, users = _world()
    fitted = timing_features(events, NOW, users=users, seed=1)
    model = TimingModel(prior=fitted.prior, prior_strength=10.0, smoothing_kappa=3.0)
    ids = [*users[s.USER_ID].reverse().to_list(), "new-user"]
    direct = scoring_counts(model, events, NOW, TimingConfig(), user_ids=ids, users=users).features(model)
    assert direct.table[s.USER_ID].to_list() == ids
    columns = to_columns(direct)
    assert columns.columns == [s.USER_ID, *TIMING_COLUMNS]
    back = from_columns(columns.to_pandas(), model)
    assert np.array_equal(back.counts, direct.counts)
    assert np.allclose(back.profile, direct.profile)
    assert back.table["zone"].to_list() == direct.table["zone"].to_list()
    assert back.table["zone_source"].to_list() == direct.table["zone_source"].to_list()
    assert back.table["zone_note"].to_list() == direct.table["zone_note"].to_list()
    config = TimingConfig()
    channels = np.arange(len(ids)) % 2
    assert send_times(back, NOW, config, channels=channels).equals(
        send_times(direct, NOW, config, channels=channels)
    )


def test_bad_or_missing_hours_read_as_no_history() -> None:
    events, users = _world(8)
    fitted = timing_features(events, NOW, users=users, seed=1)
    model = TimingModel(prior=fitted.prior)
    columns = to_columns(
        scoring_counts(model, events, NOW, TimingConfig(), user_ids=["u0", "u1", "u2"]).features(model)
    )
    columns = columns.with_columns(
        pl.Series(HOURS_COLUMN, ["x:1,200:3,5:2,7:", None, ""]),
        pl.Series("timing_zone", [None, "Europe/Berlin", None], dtype=pl.String),
    )
    back = from_columns(columns, model)
    assert back.counts.sum(axis=1).tolist() == [2.0, 0.0, 0.0]  # only "5:2" is an hour of the week
    assert back.counts[0, 5] == 2.0
    assert back.table["zone"].to_list() == [s.UTC, "Europe/Berlin", s.UTC]
    assert back.table["zone_source"][0] == "utc"
    assert np.allclose(back.profile.sum(axis=1), 1.0)


def test_batch_counts_are_compact_and_give_the_features_of_the_events() -> None:
    """Batch scoring keeps each chunk's counts (uint16) and shrinks the profile once, when it scores:
    the same features as computed from the events in one go, and the same snapshot columns."""
    events, users = _world()
    model = TimingModel(prior=timing_features(events, NOW, users=users, seed=1).prior, prior_strength=7.0)
    ids = users[s.USER_ID]
    counted = scoring_counts(model, events, NOW, TimingConfig(), user_ids=ids, users=users)
    assert counted.counts.dtype == np.uint16
    assert counted.table.columns == [s.USER_ID, *TIMING_COLUMNS[1:]]
    whole = timing_features(events, NOW, users=users, prior=model.prior, prior_strength=7.0)
    assert whole.counts.sum() > 0
    features = counted.features(model)
    assert np.array_equal(features.counts, whole.counts)
    assert np.allclose(features.profile, whole.profile)
    assert np.allclose(features.table["peakedness"].to_numpy(), whole.table["peakedness"].to_numpy())
    assert features.table["zone"].to_list() == whole.table["zone"].to_list()
    assert counted.columns().equals(to_columns(whole))


def test_a_few_rows_read_like_many() -> None:
    """A request's few well-formed rows are parsed in Python, a snapshot's many (or malformed ones) by
    the frame pipeline: the same counts."""
    from engage.timing import snapshot
    from engage.timing.snapshot import _FEW_ROWS, _counts

    texts = ["3:2,3:1,05:4,167:1", "", None, "200:3,7:0", "1:" + "9" * 400, "12:7"]
    assert all(not t or snapshot._WELL_FORMED.fullmatch(t) for t in texts)  # the Python path
    few = _counts(pl.Series(texts, dtype=pl.String))
    many = _counts(pl.Series(texts * (_FEW_ROWS // len(texts) + 1), dtype=pl.String))[: len(texts)]
    assert np.array_equal(few, many)
    assert few[0, 3] == 3.0 and few[0, 5] == 4.0 and few[0, 167] == 1.0 and few[5, 12] == 7.0
    assert few[3].sum() == 0.0 and few[4].sum() == 0.0  # slot 200 and an infinite count: dropped
    assert _counts(pl.Series(["x:1,5:2"]))[0, 5] == 2.0  # malformed: the frame pipeline, good pairs kept
