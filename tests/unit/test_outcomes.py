"""Outcomes after each exposure (point in time) and the offer table that joins features as of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest

from engage import schemas as s
from engage.config import load_config
from engage.offers.outcomes import attach_outcomes
from engage.offers.training import ARM, offer_table

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def _logs(seed: int = 0, n_users: int = 40) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    n_events = 600
    events = pl.DataFrame(
        {
            s.USER_ID: rng.choice([f"u{i}" for i in range(n_users)], n_events).tolist(),
            s.TS: [T0 + timedelta(hours=float(h)) for h in rng.uniform(-240, 960, n_events)],
            s.EVENT_TYPE: rng.choice(
                ["purchase", "session_start", "email_open"], n_events, p=[0.3, 0.5, 0.2]
            ).tolist(),
            "amount": rng.uniform(5, 50, n_events).tolist(),
            "session_id": [f"s{i}" for i in range(n_events)],
            "category": rng.choice(["shoes", "books"], n_events).tolist(),
        }
    )
    exposures = pl.DataFrame(
        {
            s.USER_ID: [f"u{i}" for i in range(n_users)] * 2,
            s.TS: [T0] * n_users + [T0 + timedelta(days=14)] * n_users,
            s.MESSAGE_ID: rng.choice(["none", "cart_coupon"], 2 * n_users).tolist(),
            s.CHANNEL: ["email"] * (2 * n_users),
            s.PROPENSITY: [0.5] * (2 * n_users),
        }
    )
    return exposures, events


def _brute(exposures: pl.DataFrame, events: pl.DataFrame, days: int) -> list[tuple[bool, float]]:
    """Row-by-row reference: any purchase in [ts, ts + days), and the purchases' summed amount."""
    ev = events.to_pandas()
    out = []
    for e in exposures.iter_rows(named=True):
        lo, hi = e[s.TS], e[s.TS] + timedelta(days=days)
        rows = ev[
            (ev[s.USER_ID] == e[s.USER_ID])
            & (ev[s.TS] >= lo)
            & (ev[s.TS] < hi)
            & (ev[s.EVENT_TYPE] == "purchase")
        ]
        out.append((len(rows) > 0, float(rows["amount"].sum())))
    return out


def test_purchase_outcome_counts_only_the_attribution_window_after_the_exposure() -> None:
    exposures, events = _logs()
    got = attach_outcomes(exposures, events, attribution_days=7)
    expected = _brute(exposures, events, 7)
    assert got[s.CONVERTED].to_list() == [c for c, _ in expected]
    assert np.allclose(got[s.REVENUE].to_numpy(), [r for _, r in expected])
    assert got.drop(s.CONVERTED, s.REVENUE).equals(exposures)  # rows and order kept
    assert got[s.CONVERTED].any() and not got[s.CONVERTED].all()
    shorter = attach_outcomes(exposures, events, attribution_days=2)
    assert shorter[s.CONVERTED].to_list() == [c for c, _ in _brute(exposures, events, 2)]
    assert shorter[s.CONVERTED].sum() < got[s.CONVERTED].sum()


def test_events_outside_the_window_do_not_change_the_outcome() -> None:
    exposures, events = _logs(seed=1)
    before = attach_outcomes(exposures, events, attribution_days=7)
    earlier = events.with_columns(pl.col(s.TS) - timedelta(days=400))  # all before every exposure
    moved = attach_outcomes(exposures, pl.concat([events, earlier]), attribution_days=7)
    assert moved[s.CONVERTED].to_list() == before[s.CONVERTED].to_list()
    assert np.allclose(moved[s.REVENUE].to_numpy(), before[s.REVENUE].to_numpy())


def test_given_outcomes_are_kept_and_missing_columns_are_named() -> None:
    exposures, events = _logs()
    given = exposures.with_columns(pl.lit(True).alias(s.CONVERTED))
    assert attach_outcomes(given, events, attribution_days=7).equals(given)
    with pytest.raises(KeyError, match=r"event_type"):
        attach_outcomes(exposures, events.drop(s.EVENT_TYPE), attribution_days=7)
    with pytest.raises(ValueError, match="attribution_days"):
        attach_outcomes(exposures, events, attribution_days=0)


def test_offer_table_joins_features_as_of_each_exposure() -> None:
    exposures, events = _logs(seed=3)
    config = load_config()
    reversed_ = exposures.reverse()
    table = offer_table(events, reversed_, config)
    assert len(table) == len(exposures)
    assert table[s.USER_ID].tolist() == reversed_[s.USER_ID].to_list()
    assert table[ARM].tolist() == reversed_[s.MESSAGE_ID].to_list()
    assert {s.AS_OF, s.CONVERTED, s.REVENUE, s.PROPENSITY} <= set(table.columns)
    expected = _brute(reversed_, events, config.offers.attribution_days)
    assert table[s.CONVERTED].tolist() == [c for c, _ in expected]
    ev = events.to_pandas()
    for _, row in table.sample(25, random_state=0).iterrows():
        mine = ev[(ev[s.USER_ID] == row[s.USER_ID]) & (ev[s.TS] < row[s.AS_OF])]
        window = mine[(mine[s.TS] >= row[s.AS_OF] - timedelta(days=90)) & (mine[s.EVENT_TYPE] == "purchase")]
        if mine.empty:  # no history before the exposure: no feature row, the exposure is kept
            assert np.isnan(row["purchase_count_90d"])
        else:
            assert row["purchase_count_90d"] == len(window)
    # events long after every exposure do not reach back into its features
    later = events.with_columns(pl.col(s.TS) + timedelta(days=400))
    moved = offer_table(pl.concat([events, later]), reversed_, config)
    features = [c for c in table.columns if c.endswith(("_count_90d", "_sum_28d")) or c.startswith("days_")]
    assert features
    pd.testing.assert_frame_equal(moved[features], table[features])
