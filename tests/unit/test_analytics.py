"""Tests for engage.analytics and engage.plots.analytics on small hand-checkable event logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest
from matplotlib.figure import Figure

from engage import analytics as an
from engage import schemas as s
from engage.plots import analytics as plots

AS_OF = datetime(2024, 4, 15, tzinfo=UTC)


def _events(rows: list[tuple]) -> pl.DataFrame:
    """Events from (user, ts, event_type, amount, category) tuples."""
    return pl.DataFrame(
        rows,
        schema={
            s.USER_ID: pl.String,
            s.TS: s.TS_DTYPE,
            s.EVENT_TYPE: pl.String,
            "amount": pl.Float64,
            "category": pl.String,
        },
        orient="row",
    )


def _d(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2024, month, day, hour, tzinfo=UTC)


def _random_log(seed: int = 7, users: int = 120) -> pl.DataFrame:
    """A seeded synthetic log: users start at random days and act until a random lifetime ends."""
    rng = np.random.default_rng(seed)
    types = ["session_start", "product_view", "add_to_cart", "purchase", "email_open"]
    rows = []
    for u in range(users):
        start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=int(rng.integers(0, 90)))
        life = float(rng.uniform(1, 120))
        for _ in range(int(rng.integers(1, 40))):
            t = start + timedelta(days=float(rng.uniform(0, life)))
            et = types[int(rng.integers(0, len(types)))]
            rows.append((f"u{u:03d}", t, et, float(rng.uniform(5, 60)), "abc"[int(rng.integers(0, 3))]))
    return _events(rows)


# --- cohort retention -------------------------------------------------------------------------


def test_cohort_counts_match_hand_built_log() -> None:
    rows = [
        # January cohort: a (active Jan, Feb, Apr), b (Jan, Mar), c (Jan only)
        ("a", _d(1, 5), "session_start", None, None),
        ("a", _d(2, 3), "session_start", None, None),
        ("a", _d(4, 1), "purchase", 10.0, None),
        ("b", _d(1, 20), "page_view", None, None),
        ("b", _d(3, 9), "page_view", None, None),
        ("c", _d(1, 31), "page_view", None, None),
        # February cohort: d (Feb, Mar)
        ("d", _d(2, 14), "page_view", None, None),
        ("d", _d(3, 2), "page_view", None, None),
        # at/after as_of: must not count
        ("c", AS_OF, "page_view", None, None),
        ("e", _d(4, 20), "page_view", None, None),
    ]
    table = an.cohort_retention(_events(rows), as_of=AS_OF)
    assert list(table.counts.index) == ["2024-01", "2024-02"]
    assert table.counts.loc["2024-01"].tolist() == [3, 1, 1, 1]
    assert table.counts.loc["2024-02"].iloc[:3].tolist() == [1, 1, 0]
    assert pd.isna(table.counts.at["2024-02", 3])  # April is not yet 3 months after February
    assert table.sizes.tolist() == [3, 1]
    assert table.rates.at["2024-01", 1] == pytest.approx(1 / 3)
    assert np.isnan(table.rates.at["2024-02", 3])
    curves = table.curves()
    pooled = curves[curves["cohort"] == an.ALL_SEGMENT].set_index("periods_since")
    assert pooled.at[1, "rate"] == pytest.approx(2 / 4)  # a and d active one month later
    assert pooled.at[3, "rate"] == pytest.approx(1 / 3)  # only January is observed that far


def test_cohort_activity_types_and_weeks() -> None:
    rows = [
        ("a", _d(1, 1), "page_view", None, None),  # Monday
        ("a", _d(1, 10), "purchase", 5.0, None),
        ("a", _d(1, 16), "purchase", 5.0, None),
    ]
    buyers = an.cohort_retention(_events(rows), as_of=_d(1, 23), activity_types=["purchase"], period="W")
    assert list(buyers.counts.index) == ["2024-01-08"]
    assert buyers.counts.loc["2024-01-08"].tolist() == [1, 1, 0]


def test_cohort_empty_and_pandas_input() -> None:
    empty = an.cohort_retention(_events([]), as_of=AS_OF)
    assert empty.counts.empty and empty.curves().empty
    log = _random_log()
    from_pandas = an.cohort_retention(log.to_pandas(), as_of=AS_OF)
    from_polars = an.cohort_retention(log, as_of=AS_OF)
    pd.testing.assert_frame_equal(from_pandas.counts, from_polars.counts)


# --- funnel -----------------------------------------------------------------------------------


def test_funnel_counts_order_and_window() -> None:
    steps = ["session_start", "product_view", "add_to_cart", "purchase"]
    rows = [
        # a: full funnel in order within a day
        ("a", _d(3, 1, 10), "session_start", None, None),
        ("a", _d(3, 1, 11), "product_view", None, None),
        ("a", _d(3, 1, 12), "add_to_cart", None, None),
        ("a", _d(3, 1, 13), "purchase", 20.0, None),
        # b: cart before view does not count as ordered; reaches product_view only
        ("b", _d(3, 2, 10), "session_start", None, None),
        ("b", _d(3, 2, 11), "add_to_cart", None, None),
        ("b", _d(3, 2, 12), "product_view", None, None),
        # c: purchase after the 7-day window: reaches add_to_cart
        ("c", _d(3, 3), "session_start", None, None),
        ("c", _d(3, 4), "product_view", None, None),
        ("c", _d(3, 5), "add_to_cart", None, None),
        ("c", _d(3, 20), "purchase", 5.0, None),
        # d: starts only
        ("d", _d(3, 6), "session_start", None, None),
        # e: a second start reaches further than the first
        ("e", _d(3, 1), "session_start", None, None),
        ("e", _d(3, 25), "session_start", None, None),
        ("e", _d(3, 26), "product_view", None, None),
        ("e", _d(3, 27), "add_to_cart", None, None),
        # f: completes only at as_of, which is excluded
        ("f", _d(4, 14), "session_start", None, None),
        ("f", _d(4, 14, 13), "product_view", None, None),
        ("f", AS_OF, "add_to_cart", None, None),
    ]
    table = an.funnel(_events(rows), steps, as_of=AS_OF, window_days=7)
    assert table["segment"].unique().tolist() == [an.ALL_SEGMENT]
    assert table["users"].tolist() == [6, 5, 3, 1]
    assert table["conversion"].tolist() == pytest.approx([1.0, 5 / 6, 3 / 6, 1 / 6])
    assert table["drop_off"].tolist() == pytest.approx([0.0, 1 / 6, 2 / 5, 2 / 3])


def test_funnel_monotone_with_segments_and_absent_types() -> None:
    log = _random_log(seed=3)
    segment = pd.Series({f"u{u:03d}": ("even" if u % 2 == 0 else "odd") for u in range(100)}, name="parity")
    steps = ["session_start", "product_view", "add_to_cart", "purchase", "subscribe"]  # last never occurs
    table = an.funnel(log, steps, as_of=AS_OF, window_days=14, segment=segment)
    assert set(table["segment"]) == {an.ALL_SEGMENT, "even", "odd", an.UNKNOWN_SEGMENT}
    for _seg, block in table.groupby("segment"):
        users = block.sort_values("step_index")["users"].to_numpy()
        assert (np.diff(users) <= 0).all()
        valid = block["step_conversion"].notna()
        assert np.allclose(block.loc[valid, "drop_off"], 1 - block.loc[valid, "step_conversion"])
        assert block["users"].iloc[-1] == 0
    all_users = table[table["segment"] == an.ALL_SEGMENT]["users"].to_numpy()
    by_seg = table[table["segment"] != an.ALL_SEGMENT].groupby("step_index")["users"].sum().to_numpy()
    assert (all_users == by_seg).all()


def test_funnel_segment_column_and_purchase_only_log() -> None:
    rows = [("a", _d(2, 1), "purchase", 3.0, "x"), ("b", _d(2, 2), "purchase", 4.0, "y")]
    table = an.funnel(_events(rows), as_of=AS_OF, segment="category")
    assert (table["users"] == 0).all()
    assert table["conversion"].isna().all()
    assert set(table["segment"]) == {an.ALL_SEGMENT}  # nobody started, no segment blocks


# --- RFM and loyalty --------------------------------------------------------------------------


def test_rfm_scores_and_best_customer_is_champion() -> None:
    log = _random_log(seed=11)
    best = [("best", AS_OF - timedelta(days=k, hours=1), "purchase", 500.0, "a") for k in range(40)]
    table = an.rfm(pl.concat([log, _events(best)]), as_of=AS_OF)
    for col in ("R", "F", "M"):
        assert table[col].between(1, 5).all()
    row = table.set_index(s.USER_ID).loc["best"]
    assert (row["R"], row["F"], row["M"]) == (5, 5, 5)
    assert row["segment"] == "Champions"
    assert row["frequency"] == 40
    assert set(table["segment"]) <= set(an.SEGMENT_ORDER)
    summary = an.rfm_segment_summary(table)
    assert summary["segment"].tolist() == list(an.SEGMENT_ORDER)
    assert summary["users"].sum() == len(table)


def test_rfm_hand_values_refunds_and_invoice_lines() -> None:
    t = _d(4, 5)
    rows = [
        ("a", t, "purchase", 10.0, None),
        ("a", t, "purchase", 5.0, None),  # second line of the same invoice: one occasion
        ("a", _d(3, 1), "purchase", 20.0, None),
        ("a", _d(4, 6), "refund", -5.0, None),
        ("b", _d(1, 10), "page_view", None, None),  # never bought: not a customer
    ]
    table = an.rfm(_events(rows), as_of=AS_OF).set_index(s.USER_ID)
    assert list(table.index) == ["a"]
    assert table.at["a", "frequency"] == 2
    assert table.at["a", "monetary"] == pytest.approx(30.0)
    assert table.at["a", "recency_days"] == pytest.approx(9.5)  # noon 5 April to midnight 15 April


@pytest.mark.parametrize(
    ("r", "f", "m", "expected"),
    [
        (5, 5, 1, "Champions"),
        (4, 2, 3, "Potential loyalist"),
        (5, 1, 1, "New"),
        (3, 4, 2, "Loyal"),
        (3, 2, 2, "Needs attention"),
        (1, 5, 5, "Can't lose them"),
        (2, 4, 2, "At risk"),
        (2, 1, 1, "Hibernating"),
        (1, 2, 5, "Lost"),
    ],
)
def test_rfm_segment_rules(r: int, f: int, m: int, expected: str) -> None:
    assert an.rfm_segment(r, f, m) == expected


def test_loyalty_tiers_pyramid() -> None:
    table = an.rfm(_random_log(seed=5), as_of=AS_OF)
    tiers = an.loyalty_tiers(table)
    assert tiers.pyramid["tier"].tolist() == list(an.TIER_ORDER)
    assert tiers.pyramid["users"].sum() == len(table)
    assert tiers.pyramid["share"].sum() == pytest.approx(1.0)
    merged = table.merge(tiers.users, on=s.USER_ID)
    assert (merged.loc[merged["tier"] == "New", "frequency"] == 1).all()
    assert (merged.loc[merged["frequency"] == 1, "tier"].isin(["New", "Champions", "Loyal"])).all()
    assert (merged.loc[merged["tier"] == "Regular", "frequency"] >= 3).all()
    assert (merged.loc[merged["tier"] == "Repeat", "frequency"] >= 2).all()
    assert {"New", "Repeat"} <= set(merged["tier"])
    assert (merged.loc[merged["segment"] == "Champions", "tier"] == "Champions").all()


# --- engagement score -------------------------------------------------------------------------


def test_engagement_active_user_beats_lapsed_user() -> None:
    log = _random_log(seed=2)
    active = [
        ("active", AS_OF - timedelta(hours=6 * k + 1), et, None, cat)
        for k, (et, cat) in enumerate(
            [(t, c) for t in ("session_start", "product_view", "add_to_cart", "purchase") for c in "abc"] * 4
        )
    ]
    lapsed = [("lapsed", AS_OF - timedelta(days=100 + k), "session_start", None, "a") for k in range(5)]
    scores = an.engagement_score(pl.concat([log, _events(active + lapsed)]), as_of=AS_OF).set_index(s.USER_ID)
    assert scores["engagement_score"].between(0, 100).all()
    assert scores.at["active", "engagement_score"] > 80
    assert scores.at["lapsed", "engagement_score"] < 30
    assert scores.at["active", "engagement_score"] > scores.at["lapsed", "engagement_score"]
    assert scores.at["active", "band"] == "high"
    assert scores.at["lapsed", "events_window"] == 0
    summary = an.engagement_summary(scores.reset_index())
    assert summary["users"].sum() == len(scores)


def test_engagement_trend_sign_and_weights() -> None:
    rising = [("up", AS_OF - timedelta(days=k / 4 + 0.01), "page_view", None, None) for k in range(20)]
    falling = [("down", AS_OF - timedelta(days=10 + k), "page_view", None, None) for k in range(20)]
    scores = an.engagement_score(_events(rising + falling), as_of=AS_OF).set_index(s.USER_ID)
    assert scores.at["up", "trend"] > 0 > scores.at["down", "trend"]
    only_trend = an.engagement_score(_events(rising + falling), as_of=AS_OF, weights={"trend": 1.0})
    assert only_trend.set_index(s.USER_ID)["engagement_score"].to_dict() == {"down": 0.0, "up": 100.0}
    with pytest.raises(ValueError, match="unknown engagement weight"):
        an.engagement_score(_events(rising), as_of=AS_OF, weights={"loudness": 1.0})


def test_point_in_time_events_at_or_after_as_of_change_nothing() -> None:
    log = _random_log(seed=9)
    later = log.filter(pl.col(s.TS) >= AS_OF)
    earlier = log.filter(pl.col(s.TS) < AS_OF)
    assert later.height > 0  # the check below must have something to ignore
    noise = later.with_columns(pl.lit("purchase").alias(s.EVENT_TYPE), pl.col("amount") * 100)
    for frame in (later, noise):
        full = pl.concat([earlier, frame])
        pd.testing.assert_frame_equal(an.rfm(full, as_of=AS_OF), an.rfm(earlier, as_of=AS_OF))
        pd.testing.assert_frame_equal(
            an.engagement_score(full, as_of=AS_OF), an.engagement_score(earlier, as_of=AS_OF)
        )
        pd.testing.assert_frame_equal(an.funnel(full, as_of=AS_OF), an.funnel(earlier, as_of=AS_OF))
        pd.testing.assert_frame_equal(
            an.cohort_retention(full, as_of=AS_OF).counts, an.cohort_retention(earlier, as_of=AS_OF).counts
        )


def test_naive_ts_and_as_of_are_utc() -> None:
    log = _random_log(seed=4).head(200)
    naive = log.with_columns(pl.col(s.TS).dt.replace_time_zone(None)).to_pandas()
    pd.testing.assert_frame_equal(an.rfm(naive, as_of=AS_OF.replace(tzinfo=None)), an.rfm(log, as_of=AS_OF))
    with pytest.raises(ValueError, match="missing required column"):
        an.rfm(log.drop(s.EVENT_TYPE), as_of=AS_OF)


# --- plots ------------------------------------------------------------------------------------


def test_plots_return_figures_and_handle_empty_input() -> None:
    log = _random_log(seed=1, users=60)
    table = an.cohort_retention(log, as_of=AS_OF)
    rfm_table = an.rfm(log, as_of=AS_OF)
    figures = [
        plots.cohort_heatmap(table),
        plots.retention_curves(table),
        plots.funnel_bars(an.funnel(log, as_of=AS_OF, segment="category")),
        plots.rfm_segment_bars(an.rfm_segment_summary(rfm_table)),
        plots.loyalty_pyramid(an.loyalty_tiers(rfm_table).pyramid),
        plots.engagement_histogram(an.engagement_score(log, as_of=AS_OF)),
    ]
    empty = _events([])
    empty_rfm = an.rfm(empty, as_of=AS_OF)
    figures += [
        plots.cohort_heatmap(an.cohort_retention(empty, as_of=AS_OF)),
        plots.retention_curves(an.cohort_retention(empty, as_of=AS_OF)),
        plots.funnel_bars(an.funnel(empty, as_of=AS_OF)),
        plots.rfm_segment_bars(an.rfm_segment_summary(empty_rfm)),
        plots.loyalty_pyramid(an.loyalty_tiers(empty_rfm).pyramid),
        plots.engagement_histogram(an.engagement_score(empty, as_of=AS_OF)),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert fig.axes and fig.axes[0].get_title()
    pyramid_ax = figures[4].axes[0]
    widths = [patch.get_width() for patch in pyramid_ax.patches]
    centers = [patch.get_x() + patch.get_width() / 2 for patch in pyramid_ax.patches]
    assert sum(widths) == pytest.approx(len(rfm_table))
    assert np.allclose(centers, 0.0)
