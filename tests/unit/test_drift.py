"""Drift (PSI) and calibration by week: the definitions, the edge cases, and no partial labels."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest

from engage.config import LabelConfig, MonitorConfig
from engage.evaluation.classification import expected_calibration_error
from engage.evaluation.drift import (
    MISSING_BIN,
    calibration_by_week,
    feature_drift,
    monitor,
    psi,
    psi_bins,
    score_periods,
    status_of,
)

CFG = MonitorConfig()


def _by_definition(ref_share: dict[str, float], cur_share: dict[str, float], eps: float = 1e-4) -> float:
    """PSI written out from the shares: sum (c - r) ln(c / r), empty shares as eps."""
    total = 0.0
    for key in set(ref_share) | set(cur_share):
        r, c = max(ref_share.get(key, 0.0), eps), max(cur_share.get(key, 0.0), eps)
        total += (c - r) * math.log(c / r)
    return total


def test_identical_and_same_distribution_samples_are_near_zero() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=20_000)
    assert psi(a, a) == pytest.approx(0.0, abs=1e-12)
    # two samples of one distribution: only sampling noise, far under the warn line
    assert psi(a, rng.normal(size=20_000)) < CFG.psi_warn / 10


@pytest.mark.parametrize("shift", [0.4, 0.7, 1.0])
def test_a_mean_shift_matches_the_closed_form_and_crosses_the_thresholds(shift: float) -> None:
    """For N(0,1) vs N(d,1) the PSI without binning is the symmetric KL divergence, d**2; decile bins
    keep most of it (binning can only lose information)."""
    rng = np.random.default_rng(1)
    value = psi(rng.normal(size=40_000), rng.normal(shift, 1.0, size=40_000))
    assert 0.8 * shift**2 < value < 1.02 * shift**2
    expected = "alert" if shift**2 >= CFG.psi_alert / 0.8 else "warn"
    assert status_of(value, CFG.psi_warn, CFG.psi_alert) == expected


def test_categorical_psi_is_the_definition_over_category_shares() -> None:
    ref = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    cur = ["a"] * 20 + ["b"] * 30 + ["c"] * 40 + ["d"] * 10  # d is new
    bins = psi_bins(ref, cur)
    assert list(bins["bin"]) == ["a", "b", "c", "d"]
    expected = _by_definition({"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 0.2, "b": 0.3, "c": 0.4, "d": 0.1})
    assert psi(ref, cur) == pytest.approx(expected)
    new = bins.set_index("bin").loc["d"]
    assert new["reference"] == 0 and math.isfinite(new["psi"]) and new["psi"] > 0


def test_missing_values_are_a_bin_of_their_own() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=10_000)
    ref = np.where(rng.random(10_000) < 0.1, np.nan, values)
    cur = np.where(rng.random(10_000) < 0.5, np.nan, rng.normal(size=10_000))
    bins = psi_bins(ref, cur).set_index("bin")
    assert bins.loc[MISSING_BIN, "reference"] == pytest.approx(np.isnan(ref).mean())
    assert bins.loc[MISSING_BIN, "current"] == pytest.approx(np.isnan(cur).mean())
    assert psi(ref, cur) > CFG.psi_alert  # the same values, five times as many missing
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    # categorical: None and NaN count as missing, not as a category named "None"
    cat = psi_bins(["x", None, "y", np.nan], ["x", "y", "y", "x"]).set_index("bin")
    assert cat.loc[MISSING_BIN, "reference"] == 0.5 and "None" not in cat.index


def test_constant_columns_compare_and_a_moved_constant_is_seen() -> None:
    same = [5.0] * 200
    assert psi(same, same) == pytest.approx(0.0, abs=1e-12)
    for moved in (6.0, 4.0, 5.0 + 1e-9):
        value = psi(same, [moved] * 200)
        assert math.isfinite(value) and value > CFG.psi_alert, moved
    # an all-missing reference: current values go to one bin, finite
    assert math.isfinite(psi([np.nan] * 10, [1.0, 2.0, np.nan]))


def test_values_beyond_the_reference_range_fall_in_the_open_outer_bins() -> None:
    """A whole shift beyond the range alerts; a population that ages a little does not (before, a bin
    of its own above the reference's maximum, with share epsilon there, made every week's ageing of
    ``days_since_first_purchase`` an alert: PSI 0.47)."""
    ref = np.arange(1_000, dtype=float)
    bins = psi_bins(ref, ref + 5_000).set_index("bin")
    top = bins[bins.index.str.startswith(">=")]
    assert len(top) == 1 and top["current"].iloc[0] == 1.0
    assert top["reference"].iloc[0] == pytest.approx(0.1, abs=0.002)
    assert psi(ref, ref + 5_000) > CFG.psi_alert
    ages = np.random.default_rng(3).uniform(0, 120, 5_000)
    assert psi(ages, ages + 7) < CFG.psi_alert < psi(ages, ages + 30)  # a week: at most a warning


def test_booleans_and_text_are_per_category_numbers_are_binned() -> None:
    ref = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "as_of": pd.Timestamp("2024-01-01", tz="UTC"),
            "churned": [0, 1, 0, 1],
            "flag": [True, False, True, True],
            "plan": ["free", "pro", "free", "free"],
            "n": [1.0, 2.0, 3.0, 4.0],
        }
    )
    drift = feature_drift(ref, ref, CFG)
    kinds = dict(zip(drift.table["feature"], drift.table["kind"], strict=True))
    assert kinds == {"flag": "categorical", "plan": "categorical", "n": "numeric"}  # no keys, no label
    assert set(drift.bins["flag"]["bin"]) == {"True", "False"}
    assert (drift.table["psi"] == 0).all() and (drift.table["status"] == "ok").all()


def test_feature_drift_ranks_alerts_first_and_flags_a_missing_feature() -> None:
    rng = np.random.default_rng(3)
    n = 5_000
    ref = pd.DataFrame({"user_id": map(str, range(n)), "as_of": pd.Timestamp("2024-01-01", tz="UTC")})
    ref = ref.assign(a=rng.normal(size=n), b=rng.normal(size=n), gone=rng.normal(size=n))
    cur = ref.drop(columns="gone").assign(
        a=rng.normal(size=n), b=rng.normal(1.0, 1.0, size=n), extra=rng.normal(size=n)
    )
    table = feature_drift(ref, cur, CFG).table.set_index("feature")
    assert table.loc["gone", "status"] == "alert" and "missing" in table.loc["gone", "note"]
    assert table.loc["b", "status"] == "alert" and table.loc["a", "status"] == "ok"
    assert table.loc["extra", "status"] == "n/a"
    order = list(table.index)
    assert order.index("b") < order.index("a") and set(order[:2]) == {"gone", "b"}
    # thresholds come from the config
    loose = MonitorConfig(psi_warn=2.0, psi_alert=5.0)
    assert feature_drift(ref, cur, loose).table.set_index("feature").loc["b", "status"] == "ok"


def test_score_periods_match_the_snapshot_dates_else_the_first_and_last() -> None:
    day = [pd.Timestamp(f"2024-01-{d:02d}", tz="UTC") for d in (1, 8, 15)]
    scores = pd.DataFrame({"as_of": [day[0]] * 2 + [day[1]] * 3 + [day[2]] * 4, "churn_probability": 0.1})
    ref, cur = score_periods(scores, [day[1]], [day[2]]) or (None, None)
    assert ref is not None and cur is not None and len(ref) == 3 and len(cur) == 4
    ref, cur = score_periods(scores, [pd.Timestamp("2023-06-01", tz="UTC")], [day[1]]) or (None, None)
    assert ref is not None and cur is not None and len(ref) == 2 and len(cur) == 3  # earliest scored date
    assert score_periods(scores[scores["as_of"] == day[0]], [day[0]], [day[0]]) is None


# --- calibration by week ------------------------------------------------------------------------

LABELS = LabelConfig(horizon_days=10, lookback_days=30)
WEEK1, WEEK2 = datetime(2024, 1, 8, tzinfo=UTC), datetime(2024, 1, 15, tzinfo=UTC)  # Mondays


def _world() -> tuple[pd.DataFrame, list[tuple[str, datetime]], dict[tuple[str, datetime], int]]:
    """Ten users active on Jan 1; who returns inside each label window is set by hand.

    Returns events (without the filler that sets the last event), the scored (user, as_of), and the
    true label of each from the construction: churned (1) when no event in [as_of, as_of + 10 d).
    """
    users = [f"u{i}" for i in range(10)]
    rows = [(u, datetime(2024, 1, 1, 12, tzinfo=UTC)) for u in users]
    rows += [(u, datetime(2024, 1, 10, tzinfo=UTC)) for u in users[:4]]  # inside week 1's window
    rows += [(u, datetime(2024, 1, 22, tzinfo=UTC)) for u in users[:7]]  # late in week 2's window
    truth = {(u, WEEK1): 0 if i < 4 else 1 for i, u in enumerate(users)}
    truth |= {(u, WEEK2): 0 if i < 7 else 1 for i, u in enumerate(users)}
    events = pd.DataFrame(rows, columns=["user_id", "ts"]).assign(event_type="page_view")
    scored = [(u, d) for d in (WEEK1, WEEK2) for u in users]
    return events, scored, truth


def _with_last_event(events: pd.DataFrame, last: datetime) -> pl.DataFrame:
    filler = pd.DataFrame({"user_id": ["zz"], "ts": [last], "event_type": ["page_view"]})
    return pl.from_pandas(pd.concat([events, filler], ignore_index=True))


def _scores(scored: list[tuple[str, datetime]]) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(scored, columns=["user_id", "as_of"])
    return frame.assign(churn_probability=rng.uniform(0, 1, len(frame)))


def test_calibration_by_week_is_realized_churn_from_the_label_code() -> None:
    events, scored, truth = _world()
    scores = _scores(scored)
    # a user scored but never active in the lookback window: scored, not labelled
    scores = pd.concat(
        [scores, pd.DataFrame({"user_id": ["ghost"], "as_of": [WEEK1], "churn_probability": [0.9]})]
    )
    weeks = calibration_by_week(
        scores, _with_last_event(events, datetime(2024, 2, 1, tzinfo=UTC)), labels=LABELS, config=CFG
    )
    assert list(weeks["week"]) == ["2024-01-08", "2024-01-15"] and weeks["complete"].all()
    for row, day in zip(weeks.itertuples(), (WEEK1, WEEK2), strict=True):
        mine = scores[(scores["as_of"] == day) & (scores["user_id"] != "ghost")]
        y = np.array([truth[(u, day)] for u in mine["user_id"]], dtype=float)
        p = mine["churn_probability"].to_numpy()
        assert row.labelled == len(y) and row.scored == len(mine) + (day == WEEK1)
        assert row.realized_rate == pytest.approx(y.mean())
        assert row.mean_predicted == pytest.approx(p.mean())
        assert row.ece == pytest.approx(expected_calibration_error(y, p))
        assert row.status == "n/a"  # 10 labelled rows < monitor.min_week_rows
    small = MonitorConfig(min_week_rows=5, ece_warn=0.0, ece_alert=0.0)
    judged = calibration_by_week(
        scores, _with_last_event(events, datetime(2024, 2, 1, tzinfo=UTC)), labels=LABELS, config=small
    )
    assert (judged["status"] == "alert").all()


def test_a_week_whose_horizon_has_not_closed_gets_no_labels() -> None:
    """Point in time: week 2's window [Jan 15, Jan 25) is still open when the log ends on Jan 24, and
    seven of its users come back on Jan 22; judged then, week 2 would read churned users that are not."""
    events, scored, truth = _world()
    scores = _scores(scored)
    early = calibration_by_week(
        scores, _with_last_event(events, datetime(2024, 1, 24, tzinfo=UTC)), labels=LABELS, config=CFG
    )
    week1, week2 = early.iloc[0], early.iloc[1]
    assert week1["complete"] and week1["labelled"] == 10
    assert not week2["complete"] and week2["labelled"] == 0
    assert math.isnan(week2["realized_rate"]) and math.isnan(week2["ece"]) and week2["status"] == "n/a"
    closed = calibration_by_week(
        scores, _with_last_event(events, datetime(2024, 1, 25, tzinfo=UTC)), labels=LABELS, config=CFG
    )
    assert closed.iloc[1]["complete"]
    assert closed.iloc[1]["realized_rate"] == pytest.approx(
        np.mean([truth[(f"u{i}", WEEK2)] for i in range(10)])
    )
    assert closed.iloc[0].drop("status").equals(early.iloc[0].drop("status"))  # week 1 did not move


def test_a_week_counts_only_when_every_scoring_date_in_it_has_closed() -> None:
    events, _, _ = _world()
    thursday = WEEK1 + timedelta(days=3)
    scores = _scores([("u0", WEEK1), ("u1", thursday)])
    last = WEEK1 + timedelta(days=11)  # Monday's window closed, Thursday's not
    events = events[events["ts"] < last]
    weeks = calibration_by_week(scores, _with_last_event(events, last), labels=LABELS, config=CFG)
    assert len(weeks) == 1 and not weeks.iloc[0]["complete"] and weeks.iloc[0]["scored"] == 2
    assert weeks.iloc[0]["labelled"] == 0


def test_monitor_alerts_on_the_latest_judged_week_only_and_summarizes_as_json() -> None:
    events, scored, truth = _world()
    scores = _scores(scored)
    frame = _with_last_event(events, datetime(2024, 2, 1, tzinfo=UTC))
    snapshot = pd.DataFrame({"user_id": ["u1", "u2"], "as_of": [WEEK1, WEEK1], "x": [1.0, 2.0]})
    later = snapshot.assign(as_of=WEEK2)
    cfg = MonitorConfig(min_week_rows=5)
    # week 1 served the opposite of what happened, week 2 exactly what happened
    week1, week2 = scores["as_of"] == WEEK1, scores["as_of"] == WEEK2
    truth = {(u, d): float(y) for (u, d), y in truth.items()}
    scores["churn_probability"] = [
        truth[(u, d)] for u, d in zip(scores["user_id"], scores["as_of"], strict=True)
    ]
    scores.loc[week1, "churn_probability"] = 1.0 - scores.loc[week1, "churn_probability"]
    result = monitor(snapshot, later, config=cfg, labels=LABELS, scores=scores, events=frame)
    weeks = result.calibration
    assert weeks is not None and list(weeks["status"]) == ["alert", "ok"]
    assert result.status == "ok" and not result.alerts
    summary = result.summary(cfg)
    json.dumps(summary, allow_nan=False)
    assert summary["features"][0]["feature"] == "x" and summary["calibration"][0]["ece"] > cfg.ece_alert
    # the scores hold two dates: their drift is measured between the snapshot's date and the other
    assert summary["score"]["reference_dates"][0].startswith("2024-01-08")
    assert summary["score"]["current_dates"][0].startswith("2024-01-15")
    scores.loc[week2, "churn_probability"] = 1.0 - scores.loc[week2, "churn_probability"]
    worse = monitor(snapshot, later, config=cfg, labels=LABELS, scores=scores, events=frame)
    assert worse.status == "alert" and any("week of 2024-01-15" in a for a in worse.alerts)
