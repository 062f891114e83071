"""Scores carry the channel, the send time and the propensity of the (message, send time) pair."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest

from engage import schemas as s
from engage.config import DEFAULT_CATALOG_PATH, PolicyConfig, TimingConfig
from engage.models.bundle import ChurnBundle, OfferBundle
from engage.models.churn import RecencyBaseline
from engage.models.uplift import MultiArmUplift
from engage.offers.catalog import catalog_from_dict, load_catalog
from engage.scoring.core import ScoringModels, score_features
from engage.timing.features import timing_features
from engage.timing.sendtime import TimingModel

CAT = load_catalog(DEFAULT_CATALOG_PATH)
NOW = datetime(2024, 6, 5, tzinfo=UTC)
OFFER_FEATURES = ["days_since_last_session", "session_count_28d"]
N = 300


def _features(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            s.USER_ID: [f"u{i}" for i in range(n)],
            s.AS_OF: pd.Timestamp(NOW),
            "days_since_last_event": rng.integers(0, 60, n).astype(float),
            "cart_abandon_count_7d": rng.integers(0, 2, n).astype(float),
            "product_view_count_28d": rng.integers(0, 5, n).astype(float),
            "days_since_last_session": rng.integers(0, 40, n).astype(float),
            "session_count_28d": rng.integers(0, 5, n).astype(float),
            "top_category": "books",
            "consent_email": (np.arange(n) % 3 != 0).astype(float),
            "consent_push": 1.0,
            "consent_in_app": 0.0,
            "consent_web_popup": 0.0,
        }
    )


def _models(catalog=CAT) -> ScoringModels:
    train = _features(3000, seed=2)
    rng = np.random.default_rng(3)
    churned = (rng.random(len(train)) < train["days_since_last_event"] / 80).astype(int)
    churn = RecencyBaseline(feature="days_since_last_event").fit(train, churned)
    arms = rng.choice(catalog.arms, len(train))
    converted = (rng.random(len(train)) < 0.1 + 0.2 * (arms != s.CONTROL_ARM)).astype(float)
    uplift = MultiArmUplift(learner="t", n_estimators=5, min_child_samples=20).fit(
        train[OFFER_FEATURES], arms, converted
    )
    return ScoringModels(
        churn=ChurnBundle(model=churn, explainer=None, feature_names=["days_since_last_event"]),
        catalog=catalog,
        offers=OfferBundle(model=uplift, feature_names=OFFER_FEATURES),
        versions={"churn": "c/1", "offers": "o/1"},
    )


def _timing():
    rows = []
    for i in range(N):
        hour = (7 + 5 * (i % 4)) % 24  # routines at 07, 12, 17, 22 UTC
        rows += [
            (f"u{i}", NOW - timedelta(days=d) + timedelta(hours=hour), "session_start") for d in range(1, 15)
        ]
    events = pl.DataFrame(
        {
            s.USER_ID: [r[0] for r in rows],
            s.TS: pl.Series([r[1] for r in rows], dtype=s.TS_DTYPE),
            s.EVENT_TYPE: [r[2] for r in rows],
        }
    )
    users = pl.DataFrame({s.USER_ID: [f"u{i}" for i in range(N)], s.TIMEZONE: ["UTC"] * N})
    return timing_features(events, NOW, users=users, seed=1)


@pytest.fixture(scope="module")
def scored() -> tuple[pd.DataFrame, pd.DataFrame]:
    models = _models()
    features = _features(N)
    timing = _timing()
    timed_models = ScoringModels(**{**models.__dict__, "timing": TimingModel(prior=timing.prior)})
    policy = PolicyConfig(epsilon=0.2, holdout_pct=0.0)
    plain = score_features(features, models, policy=policy, seed=3, reasons_top_k=None)
    cfg = TimingConfig(epsilon=0.0)
    timed = score_features(
        features, timed_models, policy=policy, seed=3, reasons_top_k=None, timing=timing, timing_config=cfg
    )
    return plain, timed


def test_without_timing_the_send_columns_are_null(scored) -> None:
    plain, _ = scored
    assert tuple(plain.columns) == s.SCORE_FIELDS
    assert plain[s.SEND_AT].isna().all() and plain[s.SEND_PROPENSITY].isna().all()


def test_send_at_is_the_users_hour_and_the_propensity_is_the_pairs(scored) -> None:
    plain, timed = scored
    assert tuple(timed.columns) == s.SCORE_FIELDS
    assert timed[s.MESSAGE_ID].tolist() == plain[s.MESSAGE_ID].tolist()  # no variants: same picks
    sent = (timed[s.MESSAGE_ID] != s.CONTROL_ARM).to_numpy()
    assert sent.any() and (~sent).any()
    assert timed.loc[sent, s.SEND_AT].notna().all() and timed.loc[~sent, s.SEND_AT].isna().all()
    hours = timed.loc[sent, s.SEND_AT].dt.hour.to_numpy()
    routine = np.array([(7 + 5 * (int(u[1:]) % 4)) % 24 for u in timed.loc[sent, s.USER_ID]])
    push = (timed.loc[sent, s.CHANNEL] == "push").to_numpy()
    assert (hours[~push] == routine[~push]).all()  # email at the user's own hour
    assert not np.isin(hours[push], [22, 23, 0, 1, 2, 3, 4, 5, 6, 7]).any()  # never a quiet push
    assert ((timed.loc[sent, s.SEND_AT] - pd.Timestamp(NOW)) < pd.Timedelta(hours=24)).all()
    np.testing.assert_allclose(timed.loc[sent, s.SEND_PROPENSITY], 1.0)  # epsilon 0
    np.testing.assert_allclose(timed[s.PROPENSITY], plain[s.PROPENSITY])
    assert timed.loc[sent, s.SEND_REASON].str.startswith("usually active").all()


def test_a_push_variant_goes_to_push_only_users_with_its_own_text() -> None:
    raw = {
        "messages": [
            {
                "id": "hello",
                "channel": "email",
                "template": "Email hello",
                "cost": 0.0,
                "value": 30.0,
                "variants": [{"channel": "push", "template": "Push hello", "cost": 0.0}],
            }
        ]
    }
    catalog = catalog_from_dict(raw)
    models = _models(catalog)
    features = _features(60)
    scored = score_features(
        features, models, policy=PolicyConfig(epsilon=0.0, holdout_pct=0.0), seed=1, reasons_top_k=None
    )
    sent = scored[scored[s.MESSAGE_ID] == "hello"]
    assert len(sent)
    push_only = features.loc[sent.index, "consent_email"] == 0
    assert (sent.loc[push_only, s.CHANNEL] == "push").all() and push_only.any()
    assert (sent.loc[sent[s.CHANNEL] == "push", "message_text"] == "Push hello").all()
    assert (sent.loc[sent[s.CHANNEL] == "email", "message_text"] == "Email hello").all()


def test_timing_rows_must_align_with_the_features() -> None:
    models = _models()
    timing = _timing()
    timed_models = ScoringModels(**{**models.__dict__, "timing": TimingModel(prior=timing.prior)})
    with pytest.raises(ValueError, match="align"):
        score_features(
            _features(N).iloc[::-1],
            timed_models,
            policy=PolicyConfig(),
            seed=1,
            reasons_top_k=None,
            timing=timing,
        )
