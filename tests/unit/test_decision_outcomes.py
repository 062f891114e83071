"""Outcomes of logged decisions: only what followed strictly after ``decided_at`` inside the window."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage import schemas as s
from engage.offers.outcomes import ACTIVE, OUTCOME_COLUMNS, UNSUBSCRIBED, decision_outcomes
from engage.scoring.decision_log import DecisionWriter, read_decisions

T0 = datetime(2024, 3, 1, tzinfo=UTC)
USERS = [f"u{i}" for i in range(6)]


def _log(tmp_path: Path, seed: int = 0, n: int = 30) -> pd.DataFrame:
    """A decision log written and read back by the one writer/reader, at three decision times."""
    rng = np.random.default_rng(seed)
    with DecisionWriter(tmp_path / "log", clock=lambda: T0) as writer:
        for k, decided_at in enumerate((T0, T0 + timedelta(days=3, hours=5), T0 + timedelta(days=9))):
            records = [
                {
                    "decision_id": f"d{k}-{i}",
                    "user_id": str(rng.choice(USERS)),
                    "as_of": decided_at,
                    "message_id": str(rng.choice(["none", "cart_coupon", "winback"])),
                    "channel": "email",
                    "propensity": 0.5,
                    "holdout": bool(rng.random() < 0.2),
                    "churn_probability": float(rng.random()),
                    "model_versions": {"churn": "1", "offers": "2"},
                }
                for i in range(n // 3)
            ]
            writer.write(records, decided_at)
    decisions, skipped = read_decisions(tmp_path / "log")
    assert skipped == 0
    return decisions


def _events(rows: list[tuple[str, datetime, str, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            s.USER_ID: [r[0] for r in rows],
            s.TS: [r[1] for r in rows],
            s.EVENT_TYPE: [r[2] for r in rows],
            "amount": [r[3] for r in rows],
        },
        schema={s.USER_ID: pl.String, s.TS: s.TS_DTYPE, s.EVENT_TYPE: pl.String, "amount": pl.Float64},
    )


def _random_events(seed: int, n: int = 150) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    types = ["purchase", "session_start", "page_view", "unsubscribe"]
    return _events(
        [
            (
                str(rng.choice(USERS)),
                T0 + timedelta(hours=float(h)),
                str(rng.choice(types, p=[0.3, 0.4, 0.28, 0.02])),
                float(rng.uniform(5, 50)),
            )
            for h in rng.uniform(-100, 500, n)
        ]
    )


def _brute(decisions: pd.DataFrame, events: pl.DataFrame, window: int, active: int) -> pd.DataFrame:
    """Row-by-row reference over the raw lists."""
    ev = events.to_pandas()
    rows = []
    for d in decisions.itertuples():
        start = pd.Timestamp(datetime.fromisoformat(d.decided_at))
        end = start + timedelta(days=window)
        mine = ev[(ev[s.USER_ID] == d.user_id) & (ev[s.TS] > start) & (ev[s.TS] < end)]
        buys = mine[mine[s.EVENT_TYPE] == "purchase"]
        later = mine[mine[s.TS] >= start + timedelta(days=active)] if active else mine
        rows.append(
            (
                len(buys) > 0,
                float(buys["amount"].sum()),
                len(later) > 0,
                (mine[s.EVENT_TYPE] == "unsubscribe").any(),
            )
        )
    return pd.DataFrame(rows, columns=list(OUTCOME_COLUMNS))


def test_outcomes_match_a_row_by_row_reference_one_row_per_decision(tmp_path: Path) -> None:
    decisions = _log(tmp_path)
    events = _random_events(1)
    for window, active in ((7, 3), (2, 0), (14, 10)):
        got = decision_outcomes(decisions, events, window_days=window, active_days=active)
        want = _brute(decisions, events, window, active)
        assert got.height == len(decisions)
        assert got["decision_id"].to_list() == decisions["decision_id"].tolist()  # rows and order kept
        for col in (s.CONVERTED, ACTIVE, UNSUBSCRIBED):
            assert got[col].to_list() == want[col].tolist(), (window, col)
        assert np.allclose(got[s.REVENUE].to_numpy(), want[s.REVENUE].to_numpy())
        if window == 2:  # the reference is not trivially all or nothing
            assert got[s.CONVERTED].any() and not got[s.CONVERTED].all()
            assert got[ACTIVE].any() and not got[ACTIVE].all()
    assert json.loads(got["model_versions"][0]) == {"churn": "1", "offers": "2"}
    assert got["decided_at"].dtype == s.TS_DTYPE


def test_an_event_at_the_decision_time_or_at_the_window_end_does_not_count(tmp_path: Path) -> None:
    decisions = _log(tmp_path, n=3).head(1)
    user, start = decisions["user_id"][0], datetime.fromisoformat(decisions["decided_at"][0])
    edge = _events([(user, start, "purchase", 10.0), (user, start + timedelta(days=7), "purchase", 5.0)])
    got = decision_outcomes(decisions, edge, window_days=7, active_days=0)
    assert not got[s.CONVERTED][0] and not got[ACTIVE][0] and got[s.REVENUE][0] == 0.0
    inside = _events([(user, start + timedelta(microseconds=1), "purchase", 10.0)])
    assert decision_outcomes(decisions, inside, window_days=7, active_days=0)[s.CONVERTED][0]


_event = st.tuples(
    st.sampled_from(USERS[:3]),
    st.floats(min_value=0.001, max_value=40, allow_nan=False),
    st.sampled_from(["purchase", "session_start", "unsubscribe", "x"]),
    st.one_of(st.none(), st.floats(min_value=-50, max_value=200, allow_nan=False)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inside=st.lists(_event, max_size=20),
    outside=st.lists(_event, min_size=1, max_size=10),
    before=st.booleans(),
    drop=st.booleans(),
)
def test_events_before_the_decision_or_past_the_window_never_change_an_outcome(
    inside, outside, before, drop
) -> None:
    window = 7
    decided = [T0 + timedelta(days=d) for d in (0, 2.5, 6)]
    decisions = pl.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(9)],
            s.USER_ID: USERS[:3] * 3,
            "decided_at": [t.isoformat() for t in decided for _ in range(3)],
        }
    )
    first, last = decided[0], decided[-1]

    def at(items, where):
        rows = []
        for user, offset, etype, amount in items:
            if where == "inside":  # strictly after the last decision and before the first one's window end
                ts = last + (first + timedelta(days=window) - last) * (offset / 40.0)
            elif where == "before":  # at or before the first decision
                ts = first - timedelta(days=offset - 0.001)
            else:  # at or past the last decision's window end
                ts = last + timedelta(days=window + offset - 0.001)
            rows.append((user, ts, etype, amount))
        return rows

    base_rows = at(inside, "inside")
    base = decision_outcomes(decisions, _events(base_rows), window_days=window, active_days=0)
    extra = at(outside, "before" if before else "after")
    if drop and extra:
        extra = extra[1:]
    elif extra:  # change one outside event in every field
        user, ts, _, _ = extra[0]
        extra = [(user, ts, "purchase", 1e6), *extra[1:]]
    changed = decision_outcomes(decisions, _events(base_rows + extra), window_days=window, active_days=0)
    assert changed.equals(base)


def test_feedback_counts_in_the_window_and_its_revenue_is_the_reported_one(tmp_path: Path) -> None:
    decisions = _log(tmp_path)
    events = _random_events(2)
    ids, stamps = decisions["decision_id"], decisions["decided_at"].map(datetime.fromisoformat)
    feedback = pd.DataFrame(
        {
            "decision_id": [ids[0], ids[1], ids[2], ids[3], "unknown"],
            "event": ["converted", "unsubscribed", "converted", "opened", "converted"],
            s.REVENUE: [42.0, None, 7.0, None, 1.0],
            s.TS: [
                stamps[0] + timedelta(days=1),
                stamps[1] + timedelta(days=2),
                stamps[2] - timedelta(hours=1),  # before the decision: ignored
                stamps[3] + timedelta(days=5),
                stamps[0] + timedelta(days=1),
            ],
        }
    )
    plain = decision_outcomes(decisions, events, window_days=7, active_days=3)
    got = decision_outcomes(decisions, events, window_days=7, active_days=3, feedback=feedback)
    assert got[s.CONVERTED][0] and got[s.REVENUE][0] == 42.0
    assert got[UNSUBSCRIBED][1]
    assert got.row(2) == plain.row(2)
    assert got[ACTIVE][3]
    assert got.slice(4).equals(plain.slice(4))
    only = decision_outcomes(decisions, None, window_days=7, feedback=feedback)
    assert only[s.CONVERTED].sum() == 1 and only[s.REVENUE].sum() == 42.0


def test_bad_arguments_and_bad_timestamps_are_named(tmp_path: Path) -> None:
    decisions = _log(tmp_path)
    events = _random_events(3)
    with pytest.raises(ValueError, match="window_days"):
        decision_outcomes(decisions, events, window_days=0)
    with pytest.raises(ValueError, match="active_days"):
        decision_outcomes(decisions, events, window_days=7, active_days=7)
    with pytest.raises(ValueError, match="events, feedback"):
        decision_outcomes(decisions, None, window_days=7)
    broken = decisions.copy()
    broken.loc[4, "decided_at"] = "yesterday"
    with pytest.raises(ValueError, match=r"row 5 has decided_at 'yesterday'"):
        decision_outcomes(broken, events, window_days=7)
    with pytest.raises(KeyError, match="event_type"):
        decision_outcomes(decisions, events.drop(s.EVENT_TYPE), window_days=7)
