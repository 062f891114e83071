"""Point-in-time features: nothing at or after as_of changes a feature; names and values are right."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage import schemas as s
from engage.config import FeatureConfig
from engage.features import (
    build_features,
    categorical_features,
    feature_defs,
    feature_descriptions,
    feature_names,
)

CFG = FeatureConfig()
AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
TYPES = ["session_start", "page_view", "product_view", "add_to_cart", "purchase", "refund", "email_open", "x"]


def _events(rows: list[tuple[str, datetime, str, str | None, str | None, float | None]]) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            s.USER_ID: [r[0] for r in rows],
            s.TS: [r[1] for r in rows],
            s.EVENT_TYPE: [r[2] for r in rows],
            "session_id": [r[3] for r in rows],
            "category": [r[4] for r in rows],
            "amount": [r[5] for r in rows],
        },
        schema={
            s.USER_ID: pl.String,
            s.TS: s.TS_DTYPE,
            s.EVENT_TYPE: pl.String,
            "session_id": pl.String,
            "category": pl.String,
            "amount": pl.Float64,
        },
    )
    for name, dtype in s.EVENT_SCHEMA.items():
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(name))
    return frame.select(s.EVENT_COLUMNS)


def _at(days: float) -> datetime:
    return AS_OF - timedelta(days=days)


def test_counts_recency_and_names_on_a_hand_built_log() -> None:
    events = _events(
        [
            ("a", _at(1), "session_start", "s1", None, None),
            ("a", _at(1) + timedelta(seconds=30), "product_view", "s1", "books", None),
            ("a", _at(1) + timedelta(seconds=40), "purchase", "s1", "books", 20.0),
            ("a", _at(10), "purchase", "s0", "toys", 5.0),
            ("a", _at(2) - timedelta(days=0), "add_to_cart", "s2", "toys", None),
            ("b", _at(40), "session_start", "s3", None, None),
            ("b", AS_OF, "purchase", "s9", "books", 99.0),  # at as_of: must be invisible
        ]
    )
    f = build_features(events, [AS_OF], config=CFG).set_index(s.USER_ID)
    assert f.loc["a", "purchase_count_7d"] == 1 and f.loc["a", "purchase_count_28d"] == 2
    assert f.loc["a", "amount_sum_28d"] == pytest.approx(25.0)
    assert f.loc["a", "days_since_last_purchase"] == pytest.approx(1 - 40 / 86400, abs=1e-6)
    assert f.loc["a", "cart_abandon_count_7d"] == 1
    assert f.loc["a", "top_category"] == "books" or f.loc["a", "top_category"] == "toys"
    assert f.loc["b", "purchase_count_90d"] == 0
    assert np.isnan(f.loc["b", "days_since_last_purchase"])
    assert set(feature_descriptions(CFG)) >= {
        "purchase_count_28d",
        "days_since_last_session",
        "cart_abandon_count_7d",
        "session_count_28d",
        "product_view_count_28d",
        "top_category",
    }


def test_engaged_session_rule() -> None:
    events = _events(
        [
            ("a", _at(3), "session_start", "short", None, None),  # one view, 0 s: not engaged
            ("a", _at(2), "session_start", "long", None, None),
            ("a", _at(2) + timedelta(seconds=11), "page_view", "long", None, None),  # lasts 11 s: engaged
            ("a", _at(1), "page_view", "two", None, None),
            ("a", _at(1) + timedelta(seconds=1), "product_view", "two", "x", None),  # 2 views: engaged
        ]
    )
    f = build_features(events, [AS_OF], config=CFG).set_index(s.USER_ID)
    assert f.loc["a", "session_count_7d"] == 3
    assert f.loc["a", "engaged_session_rate_7d"] == pytest.approx(2 / 3)


_event = st.tuples(
    st.sampled_from(["u1", "u2", "u3"]),
    st.floats(min_value=-120, max_value=60, allow_nan=False),
    st.sampled_from(TYPES),
    st.sampled_from(["s1", "s2", "s3", None]),
    st.sampled_from(["books", "toys", None]),
    st.one_of(st.none(), st.floats(min_value=-50, max_value=200, allow_nan=False)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    past=st.lists(_event, min_size=1, max_size=25), future=st.lists(_event, max_size=10), drop=st.booleans()
)
def test_events_at_or_after_as_of_never_change_a_feature(past, future, drop) -> None:
    def rows(items, shift_future):
        out = []
        for user, offset, etype, sess, cat, amount in items:
            days = abs(offset) if shift_future else -abs(offset) - 1e-3  # past: strictly before as_of
            out.append(
                (
                    user,
                    AS_OF + timedelta(days=days),
                    etype,
                    sess,
                    cat,
                    amount,
                )
            )
        return out

    before = rows(past, shift_future=False)
    after = rows(future, shift_future=True)  # at or after as_of
    base = build_features(_events(before), [AS_OF], config=CFG)
    mutated = before + after
    if drop and after:
        mutated = before + after[1:]
    elif after:  # change one at-or-after event in every field
        user, ts, _, _, _, _ = after[0]
        mutated = [*before, (user, ts + timedelta(hours=1), "purchase", "s1", "toys", 1e6), *after[1:]]
    changed = build_features(_events(mutated), [AS_OF], config=CFG)
    pd.testing.assert_frame_equal(base.reset_index(drop=True), changed.reset_index(drop=True))


def test_names_are_deterministic_described_and_match_the_table() -> None:
    cfg = FeatureConfig(windows=(7, 14))
    names = feature_names(cfg, with_users=False, with_exposures=False)
    assert names == feature_names(cfg, with_users=False, with_exposures=False)
    assert len(names) == len(set(names))
    assert {"purchase_count_14d", "cart_abandon_count_14d", "messages_received_28d"} <= set(names)
    assert "purchase_count_28d" not in names
    assert all(f.description and f.kind for f in feature_defs(cfg))
    events = _events(
        [("a", _at(1), "purchase", "s1", "books", 3.0), ("b", _at(3), "page_view", None, None, None)]
    )
    users = pl.DataFrame(
        {s.USER_ID: ["a", "b"], "region": ["north", "south"], "consent_email": [True, False]}
    )
    table = build_features(events, AS_OF, config=cfg, users=users)
    assert list(table.columns) == [s.USER_ID, s.AS_OF, *names, "consent_email", "region"]
    assert table[s.AS_OF].dt.tz is not None and table["top_category"].dtype != "category"
    assert table["consent_email"].tolist() == [1.0, 0.0]
    assert categorical_features(cfg, ("region", "consent_email")) == ["top_category", "region"]


def test_snapshots_are_stacked_and_each_sees_only_its_past() -> None:
    events = _events(
        [("a", _at(40), "purchase", "s1", None, 1.0), ("a", _at(1), "purchase", "s2", None, 1.0)]
    )
    early = AS_OF - timedelta(days=20)
    table = build_features(events, [AS_OF, early], config=CFG)
    assert table[s.AS_OF].tolist() == sorted(table[s.AS_OF].tolist())
    assert table["purchase_count_90d"].tolist() == [1.0, 2.0]


def test_active_days_are_24h_periods_before_as_of() -> None:
    noon = AS_OF + timedelta(hours=12)
    events = _events(
        [
            ("a", noon - timedelta(hours=1), "page_view", None, None, None),
            ("a", noon - timedelta(hours=13), "page_view", None, None, None),  # yesterday, same period
            ("a", noon - timedelta(hours=37), "page_view", None, None, None),  # the period before
            ("a", noon - timedelta(days=30), "page_view", None, None, None),
        ]
    )
    f = build_features(events, [noon], config=CFG).set_index(s.USER_ID)
    calendar_days = len({(noon - timedelta(hours=h)).date() for h in (1, 13, 37)})
    assert calendar_days == 3 and f.loc["a", "active_days_7d"] == 2
    assert f.loc["a", "active_days_28d"] == 2 and f.loc["a", "active_days_90d"] == 3
    assert f.loc["a", "active_days_change_28d"] == 2 - 1


def test_sessions_and_categories_count_once_per_window_with_ties_to_the_first_name() -> None:
    events = _events(
        [
            ("a", _at(6.5), "page_view", "s1", "toys", None),
            ("a", _at(8), "page_view", "s1", "toys", None),  # same session, older event
            ("a", _at(20), "page_view", "s2", "books", None),
            ("a", _at(21), "page_view", "s2", "books", None),
            ("a", _at(100), "page_view", "s3", "garden", None),  # beyond 90 days
        ]
    )
    f = build_features(events, [AS_OF], config=CFG).set_index(s.USER_ID)
    assert f.loc["a", "session_count_7d"] == 1 and f.loc["a", "session_count_28d"] == 2
    assert f.loc["a", "session_count_90d"] == 2
    assert f.loc["a", "category_distinct_7d"] == 1 and f.loc["a", "category_distinct_90d"] == 2
    assert f.loc["a", "top_category"] == min("toys", "books")
    assert f.loc["a", "top_category_share_90d"] == pytest.approx(2 / 4)
    assert f.loc["a", "engaged_session_rate_28d"] == 1.0  # both sessions have 2 views


def test_a_small_lazy_input_read_once_equals_streaming_it(tmp_path) -> None:
    from engage.datasets.simulate import simulate

    data = simulate(300, 60, seed=5)
    path = tmp_path / "events.parquet"
    data.events.write_parquet(path)
    as_of = [data.events[s.TS].max() - timedelta(days=d) for d in (20, 3)]
    held = build_features(pl.scan_parquet(path), as_of, config=CFG)
    streamed = build_features(
        pl.scan_parquet(path), as_of, config=CFG.model_copy(update={"in_memory_events": 0})
    )
    assert len(held) > 100
    pd.testing.assert_frame_equal(held, streamed)


def test_a_rerun_gives_the_same_bits() -> None:
    """Float sums merged across threads in varying order differed in the last bits between runs."""
    from engage.datasets.simulate import simulate

    data = simulate(1500, 90, seed=3)
    as_of = [data.events[s.TS].max() - timedelta(days=5)]
    runs = [build_features(data.events, as_of, config=CFG, exposures=data.exposures) for _ in range(3)]
    assert runs[0]["amount_sum_90d"].gt(0).sum() > 100
    for other in runs[1:]:
        pd.testing.assert_frame_equal(runs[0], other, check_exact=True)


def test_every_feature_has_one_formula_over_known_tables() -> None:
    from engage.features.formula import Agg, Lit, aggs_of, top_keys_of
    from engage.features.spec import EVENTS, EXPOSURES, feature_tables

    cfg = FeatureConfig(windows=(7, 14))
    known = {EVENTS, EXPOSURES, *(t.name for t in feature_tables(cfg))}
    for d in feature_defs(cfg):
        assert d.formula != Lit(None), d.name
        reads = [*aggs_of(d.formula), *top_keys_of(d.formula)]
        assert reads and {r.table for r in reads} <= known, d.name
    with pytest.raises(ValueError, match="unknown aggregate kind"):
        Agg(EVENTS, "median", Lit(1))
    with pytest.raises(ValueError, match="needs 'of'"):
        Agg(EVENTS, "sum")
