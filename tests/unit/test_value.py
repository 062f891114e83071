"""Customer value: the feature engine's purchase-history columns are the BTYD inputs, the value model
predicts from them, and every score carries the value fields (null without a value model)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import polars as pl
import pytest

from engage import schemas as s
from engage.config import DEFAULT_CATALOG_PATH, FeatureConfig, PolicyConfig
from engage.events import validate_events
from engage.features import build_features
from engage.models.btyd import FREQUENCY, RECENCY, T_COL, rfm_summary
from engage.models.bundle import ChurnBundle
from engage.models.churn import RecencyBaseline
from engage.models.value import (
    EXPECTED_NEXT_ORDER_DAYS,
    PREDICTED_PURCHASES,
    PREDICTED_REVENUE,
    CustomerValue,
    btyd_feature_names,
    value_inputs,
)
from engage.offers.catalog import load_catalog
from engage.scoring.core import ScoringModels, score_features

AS_OF = datetime(2024, 7, 1, tzinfo=UTC)


def _events(n_users: int, seed: int) -> pl.DataFrame:
    """Purchases (several a day for some users) and page views of users who buy at different rates."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(n_users):
        rate = rng.gamma(0.8, 1 / 20)  # purchases per day
        first = rng.uniform(0, 170)
        t, alive = first, True
        while alive and t < 200:
            rows.append((f"u{u}", start + pd.Timedelta(days=t), "purchase", float(rng.gamma(2, 15))))
            if rng.random() < 0.2:  # a second line the same day
                rows.append((f"u{u}", start + pd.Timedelta(days=t, hours=1), "purchase", 5.0))
            alive = rng.random() > 0.15
            t += rng.exponential(1 / rate)
        rows.append((f"v{u}", start + pd.Timedelta(days=rng.uniform(0, 180)), "page_view", None))
    frame = pl.DataFrame(rows, schema=[s.USER_ID, s.TS, s.EVENT_TYPE, "amount"], orient="row")
    return validate_events(frame, source="test").accepted


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    return build_features(_events(600, seed=4), [AS_OF], config=FeatureConfig())


def test_feature_history_columns_are_the_btyd_summary(features: pd.DataFrame) -> None:
    events = _events(600, seed=4).filter(pl.col(s.EVENT_TYPE) == "purchase").to_pandas()
    summary = rfm_summary(
        events[events[s.TS] < AS_OF], s.USER_ID, s.TS, AS_OF, unit="W", amount_col="amount"
    ).set_index(s.USER_ID)
    buyer, x, t_x, big_t, _ = value_inputs(features)
    mine = features[s.USER_ID].to_numpy()[buyer]
    assert sorted(mine) == sorted(summary.index)  # page-view-only users are not buyers
    ref = summary.loc[mine]
    np.testing.assert_allclose(x[buyer], ref[FREQUENCY], atol=1e-9)
    np.testing.assert_allclose(big_t[buyer], ref[T_COL], atol=1e-9)  # as_of at midnight: calendar days
    np.testing.assert_allclose(t_x[buyer], ref[RECENCY], atol=1e-9)


def test_value_predictions(features: pd.DataFrame) -> None:
    model = CustomerValue(horizon_days=180).fit(features)
    value = model.predict(features)
    buyer = value_inputs(features)[0]
    assert value.loc[~buyer].isna().all().all()
    assert (value.loc[buyer, PREDICTED_PURCHASES] >= 0).all()
    longer = CustomerValue(horizon_days=365).fit(features).predict(features)
    assert (longer.loc[buyer, PREDICTED_PURCHASES] >= value.loc[buyer, PREDICTED_PURCHASES] - 1e-12).all()
    per_purchase = value[PREDICTED_REVENUE] / value[PREDICTED_PURCHASES]
    assert per_purchase[buyer & (value[PREDICTED_PURCHASES] > 0)].between(1, 200).all()
    # the next order is promised only to users more likely alive than not
    _, x, t_x, big_t, _ = value_inputs(features)
    alive = model.counts_.p_alive(x[buyer], t_x[buyer], big_t[buyer])
    assert np.array_equal(value.loc[buyer, EXPECTED_NEXT_ORDER_DAYS].notna().to_numpy(), alive >= 0.5)
    with pytest.raises(ValueError, match="features missing for the value model"):
        model.predict(features.drop(columns=["purchase_days_total"]))


def test_every_score_carries_value(features: pd.DataFrame) -> None:
    churn = RecencyBaseline(feature="days_since_last_event").fit(
        features, (features["days_since_last_event"] > 30).astype(int)
    )
    value = CustomerValue(horizon_days=90, feature_horizon_days=30).fit(features)
    names = ["days_since_last_event", *btyd_feature_names(30)]
    bundle = ChurnBundle(model=churn, explainer=None, feature_names=names, value=value)
    models = ScoringModels(churn=bundle, catalog=load_catalog(DEFAULT_CATALOG_PATH))
    scores = score_features(features, models, policy=PolicyConfig(), seed=1, reasons_top_k=None)
    assert list(scores.columns) == list(s.SCORE_FIELDS)
    expected = value.predict(features)
    np.testing.assert_allclose(scores["predicted_revenue"], expected[PREDICTED_REVENUE])
    assert (scores["value_horizon_days"] == 90).all()
    wait = scores["expected_next_order_at"] - scores[s.AS_OF]
    np.testing.assert_allclose(
        wait.dt.total_seconds() / 86_400, expected[EXPECTED_NEXT_ORDER_DAYS], atol=1 / 86_400
    )
    bare = ChurnBundle(model=churn, explainer=None, feature_names=["days_since_last_event"])
    none = score_features(
        features,
        ScoringModels(churn=bare, catalog=models.catalog),
        policy=PolicyConfig(),
        seed=1,
        reasons_top_k=None,
    )
    assert none["predicted_revenue"].isna().all() and none["expected_next_order_at"].isna().all()


def test_value_model_travels_in_the_churn_bundle_files(features: pd.DataFrame) -> None:
    from engage.models.persist import from_parts, to_parts

    churn = RecencyBaseline(feature="days_since_last_event").fit(
        features, (features["days_since_last_event"] > 30).astype(int)
    )
    bundle = ChurnBundle(
        model=churn,
        explainer=None,
        feature_names=["days_since_last_event"],
        value=CustomerValue().fit(features),
    )
    loaded = from_parts(to_parts(bundle))
    pd.testing.assert_frame_equal(loaded.predicted_value(features), bundle.predicted_value(features))


def test_expected_purchases_stay_finite_when_nobody_drops_out() -> None:
    from engage.models.btyd_mbg import MBGNBD
    from engage.models.value import expected_purchases

    model = MBGNBD()
    model.params_ = {"r": 0.86, "alpha": 9.6, "a": 2e-4, "b": 7e10}  # the Online Retail II half-year fit
    x, t_x, big_t = np.array([0.0, 3.0, 40.0]), np.array([0.0, 10.0, 20.0]), np.array([5.0, 20.0, 21.0])
    got = expected_purchases(model, 27.0, x, t_x, big_t)
    no_dropout = (0.86 + x) / (9.6 + big_t) * 27.0  # the NBD limit
    np.testing.assert_allclose(got, no_dropout, rtol=1e-3)
    sane = MBGNBD()
    sane.params_ = {"r": 0.7, "alpha": 3.0, "a": 1.6, "b": 3.5}
    closed = sane.expected_purchases(27.0, x, t_x, big_t)
    np.testing.assert_allclose(expected_purchases(sane, 27.0, x, t_x, big_t), closed)  # untouched


def test_value_weights_and_weighted_gains() -> None:
    from engage.offers.policy import MAX_VALUE_WEIGHT, value_weighted_gains, value_weights

    w = value_weights(np.array([np.nan, 0.0, 50.0, 1e9]), reference=100.0)
    np.testing.assert_allclose(w, [1.0, 0.0, 0.5, MAX_VALUE_WEIGHT])
    assert (value_weights(np.array([5.0]), reference=float("nan")) == 1).all()
    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    costs = np.array([catalog.get(a).cost if catalog.get(a) else 0.0 for a in catalog.arms])
    gains = np.tile(np.linspace(-1, 3, len(catalog.arms)), (3, 1))
    weighted = value_weighted_gains(gains, catalog, np.array([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(weighted[0], gains[0])  # weight 1: unchanged
    np.testing.assert_allclose(weighted[1], -costs)  # no value: only the cost is left
    np.testing.assert_allclose(weighted[2], 2 * (gains[2] + costs) - costs)


class _SameUplift:
    """Every user answers every message alike: only the value weighting can tell users apart."""

    def __init__(self, arms: list[str]) -> None:
        self.arms_ = arms

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({a: 0.1 if a == s.CONTROL_ARM else 0.102 for a in self.arms_}, index=X.index)

    def outcome_matrix(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_outcomes(X).to_numpy()


def test_value_weighting_sends_messages_to_valuable_users(features: pd.DataFrame) -> None:
    from engage.models.bundle import OfferBundle

    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    churn = RecencyBaseline(feature="days_since_last_event").fit(
        features, (features["days_since_last_event"] > 30).astype(int)
    )
    value = CustomerValue(horizon_days=365).fit(features)
    models = ScoringModels(
        churn=ChurnBundle(model=churn, explainer=None, feature_names=["days_since_last_event"], value=value),
        catalog=catalog,
        offers=OfferBundle(model=_SameUplift(catalog.arms), feature_names=[]),  # type: ignore[arg-type]
    )
    sent = {}
    for weighting in (False, True):
        policy = PolicyConfig(value_weighting=weighting, exploration="none", holdout_pct=0.0)
        scores = score_features(features, models, policy=policy, seed=1, reasons_top_k=None)
        sent[weighting] = (scores[s.MESSAGE_ID] != s.CONTROL_ARM).to_numpy()
    revenue = value.predict(features)[PREDICTED_REVENUE].to_numpy()
    rich = revenue > np.nanquantile(revenue, 0.8)
    poor = revenue < np.nanquantile(revenue, 0.2)
    assert sent[False][rich].mean() == pytest.approx(sent[False][poor].mean(), abs=0.15)  # alike unweighted
    assert sent[True][rich].mean() > sent[True][poor].mean() + 0.3


def test_btyd_churn_features_are_point_in_time() -> None:
    from engage.config import EngageConfig
    from engage.training.value import add_btyd_features

    events = _events(400, seed=6)
    dates = [datetime(2024, 5, 1, tzinfo=UTC), AS_OF]
    table = build_features(events, dates, config=FeatureConfig())
    config = EngageConfig()
    with_btyd = add_btyd_features(table, events, config)
    names = btyd_feature_names(config.labels.horizon_days)
    assert with_btyd[names[0]].notna().any() and (with_btyd[names[0]].dropna() <= 1).all()
    later = events.with_columns(  # every event at or after the first as_of moves a year on
        pl.when(pl.col(s.TS) >= dates[0]).then(pl.col(s.TS) + pd.Timedelta(days=365)).otherwise(pl.col(s.TS))
    )
    first = (table[s.AS_OF] == pd.Timestamp(dates[0])).to_numpy()
    again = add_btyd_features(table, later, config)
    pd.testing.assert_frame_equal(with_btyd.loc[first, names], again.loc[first, names])
