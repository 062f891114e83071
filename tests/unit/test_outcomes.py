"""Outcomes after each exposure (point in time) and the features-as-of-exposure join."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.offers.outcomes import attach_outcomes, offer_training_table

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def _logs(seed: int = 0, n_users: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n_events = 600
    events = pd.DataFrame(
        {
            s.USER_ID: rng.choice([f"u{i}" for i in range(n_users)], n_events),
            s.TS: [T0 + timedelta(hours=float(h)) for h in rng.uniform(-240, 960, n_events)],
            s.EVENT_TYPE: rng.choice(
                ["purchase", "session_start", "email_open"], n_events, p=[0.3, 0.5, 0.2]
            ),
            "amount": rng.uniform(5, 50, n_events),
        }
    )
    exposures = pd.DataFrame(
        {
            s.USER_ID: [f"u{i}" for i in range(n_users)] * 2,
            s.TS: [T0] * n_users + [T0 + timedelta(days=14)] * n_users,
            s.MESSAGE_ID: rng.choice(["none", "cart_coupon"], 2 * n_users),
        }
    )
    return exposures, events


def _brute(exposures: pd.DataFrame, events: pd.DataFrame, start: int, days: int, kinds: set[str]):
    """Row-by-row reference: count and purchase amount of `kinds` events in [ts+start, ts+start+days)."""
    out = []
    for _, e in exposures.iterrows():
        lo, hi = e[s.TS] + timedelta(days=start), e[s.TS] + timedelta(days=start + days)
        rows = events[
            (events[s.USER_ID] == e[s.USER_ID])
            & (events[s.TS] >= lo)
            & (events[s.TS] < hi)
            & events[s.EVENT_TYPE].isin(kinds)
        ]
        out.append((len(rows) > 0, rows.loc[rows[s.EVENT_TYPE] == "purchase", "amount"].sum()))
    return out


def test_purchase_outcome_counts_only_the_attribution_window_after_the_exposure() -> None:
    exposures, events = _logs()
    got = attach_outcomes(exposures, events, attribution_days=7)
    expected = _brute(exposures, events, 0, 7, {"purchase"})
    assert got[s.CONVERTED].tolist() == [c for c, _ in expected]
    assert np.allclose(got[s.REVENUE], [r for _, r in expected])
    assert len(got) == len(exposures) and got[s.CONVERTED].any() and not got[s.CONVERTED].all()


def test_events_outside_the_window_do_not_change_the_outcome() -> None:
    exposures, events = _logs(seed=1)
    before = attach_outcomes(exposures, events, attribution_days=7)
    earlier = events.assign(**{s.TS: events[s.TS] - timedelta(days=400)})  # all before every exposure
    moved = attach_outcomes(exposures, pd.concat([events, earlier]), attribution_days=7)
    assert moved[s.CONVERTED].tolist() == before[s.CONVERTED].tolist()
    assert np.allclose(moved[s.REVENUE], before[s.REVENUE])


def test_retention_outcome_looks_at_the_horizon_and_ignores_message_opens() -> None:
    exposures, events = _logs(seed=2)
    got = attach_outcomes(exposures, events, attribution_days=7, outcome="retention", horizon_days=10)
    expected = _brute(exposures, events, 10, 7, {"purchase", "session_start"})
    assert got[s.CONVERTED].tolist() == [c for c, _ in expected]


def test_given_outcomes_are_kept() -> None:
    exposures, events = _logs()
    given = exposures.assign(**{s.CONVERTED: True})
    assert attach_outcomes(given, events)[s.CONVERTED].all()
    with pytest.raises(KeyError, match=r"event_type"):
        attach_outcomes(exposures, events.drop(columns=[s.EVENT_TYPE]))


def test_training_table_joins_features_as_of_each_exposure() -> None:
    exposures, events = _logs(seed=3)
    asked: list[list[pd.Timestamp]] = []

    def features_at(dates: list[pd.Timestamp]) -> pd.DataFrame:
        """Fake engine: purchases strictly before each date (the point-in-time contract)."""
        asked.append(dates)
        rows = []
        for d in dates:
            past = events[(events[s.TS] < d) & (events[s.EVENT_TYPE] == "purchase")]
            counts = past.groupby(s.USER_ID).size()
            rows += [{s.USER_ID: u, s.AS_OF: d, "purchases_before": float(c)} for u, c in counts.items()]
        return pd.DataFrame(rows)

    table = offer_training_table(exposures.iloc[::-1], features_at, events=events)
    assert len(table) == len(exposures)
    assert [pd.Timestamp(d) for d in asked[0]] == sorted(pd.to_datetime(exposures[s.TS], utc=True).unique())
    for _, row in table.sample(15, random_state=0).iterrows():
        past = events[
            (events[s.USER_ID] == row[s.USER_ID])
            & (events[s.TS] < row[s.AS_OF])
            & (events[s.EVENT_TYPE] == "purchase")
        ]
        assert (len(past) == 0 and np.isnan(row["purchases_before"])) or row["purchases_before"] == len(past)
    assert {s.CONVERTED, s.REVENUE, s.MESSAGE_ID} <= set(table.columns)
    with pytest.raises(ValueError, match="events"):
        offer_training_table(exposures, features_at)
