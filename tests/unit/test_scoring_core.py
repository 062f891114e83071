"""The one scoring path: the draw is seeded, per user (batch-independent) and reports its propensity."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.config import DEFAULT_CATALOG_PATH, PolicyConfig
from engage.models.bundle import ChurnBundle, OfferBundle
from engage.models.churn import RecencyBaseline
from engage.models.uplift import MultiArmUplift, expected_gain
from engage.offers.catalog import load_catalog
from engage.offers.policy import action_probabilities
from engage.scoring.core import ScoringModels, score_features

CAT = load_catalog(DEFAULT_CATALOG_PATH)
NOW = datetime(2024, 6, 1, tzinfo=UTC)
OFFER_FEATURES = ["days_since_last_session", "session_count_28d"]


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
            "consent_email": 1.0,
            "consent_push": 0.0,
            "consent_in_app": 1.0,
            "consent_web_popup": 0.0,
        }
    )


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    train = _features(3000, seed=2)
    rng = np.random.default_rng(3)
    churned = (rng.random(len(train)) < train["days_since_last_event"] / 80).astype(int)
    churn = RecencyBaseline(feature="days_since_last_event").fit(train, churned)
    arms = rng.choice(CAT.arms, len(train))
    converted = (rng.random(len(train)) < 0.1 + 0.1 * (arms != s.CONTROL_ARM)).astype(float)
    uplift = MultiArmUplift(learner="t", n_estimators=5, min_child_samples=20).fit(
        train[OFFER_FEATURES], arms, converted
    )
    return ScoringModels(
        churn=ChurnBundle(model=churn, explainer=None, feature_names=["days_since_last_event"]),
        catalog=CAT,
        offers=OfferBundle(model=uplift, feature_names=OFFER_FEATURES),
        versions={"churn": "engage-churn/1", "offers": "engage-offers/1"},
    )


def test_the_draw_is_seeded_per_user_and_reports_the_probability_it_used(models: ScoringModels) -> None:
    features = _features(2000)
    policy = PolicyConfig(epsilon=0.3, holdout_pct=0.05)
    first = score_features(features, models, policy=policy, seed=7, reasons_top_k=None)
    pd.testing.assert_frame_equal(
        first, score_features(features, models, policy=policy, seed=7, reasons_top_k=None)
    )
    part = score_features(features.iloc[::3], models, policy=policy, seed=7, reasons_top_k=None)
    expected_part = first.iloc[::3].reset_index(drop=True).drop(columns=["model_versions"])
    pd.testing.assert_frame_equal(part.drop(columns=["model_versions"]), expected_part)
    other = score_features(features, models, policy=policy, seed=8, reasons_top_k=None)
    assert (other[s.MESSAGE_ID] != first[s.MESSAGE_ID]).any()
    assert first["decision_id"].is_unique and not set(other["decision_id"]) & set(first["decision_id"])

    gains = expected_gain(models.offers.outcomes(features), CAT)  # type: ignore[union-attr]
    probs, hold = action_probabilities(features, gains, CAT, config=policy, as_of=NOW)
    column = [CAT.arms.index(a) for a in first[s.MESSAGE_ID]]
    chosen_p = probs.to_numpy()[np.arange(len(first)), column]
    np.testing.assert_allclose(first[s.PROPENSITY], chosen_p)
    assert (first[s.PROPENSITY] > 0).all()
    assert first["holdout"].tolist() == hold.tolist()
    assert (first.loc[first["holdout"], s.MESSAGE_ID] == s.CONTROL_ARM).all()
    assert (first.loc[first["holdout"], s.PROPENSITY] == 1).all()
    assert first[s.CHANNEL].tolist() == [CAT.channel(a) for a in first[s.MESSAGE_ID]]
    greedy = probs.to_numpy().argmax(axis=1)
    explored = (np.asarray(column) != greedy) & ~hold
    expected = (policy.epsilon * (1 - 1 / (probs[~hold] > 0).sum(axis=1))).mean()
    assert abs(explored[~hold].mean() - expected) < 0.05


def test_scores_carry_exactly_the_score_fields(models: ScoringModels) -> None:
    scored = score_features(_features(5), models, policy=PolicyConfig(), seed=0, reasons_top_k=None)
    assert tuple(scored.columns) == s.SCORE_FIELDS
    empty = score_features(_features(0), models, policy=PolicyConfig(), seed=0)
    assert tuple(empty.columns) == s.SCORE_FIELDS and empty.empty


def test_a_holdout_decision_records_the_message_the_policy_would_have_sent(models: ScoringModels) -> None:
    """``intended_message_id`` is the pick without the holdout (same draw): the treated twin's message."""
    features = _features(3000)
    policy = PolicyConfig(epsilon=0.3, holdout_pct=0.2)
    scored = score_features(features, models, policy=policy, seed=7, reasons_top_k=None)
    unheld = score_features(
        features, models, policy=policy.model_copy(update={"holdout_pct": 0.0}), seed=7, reasons_top_k=None
    )
    held = scored["holdout"].to_numpy()
    assert held.sum() > 400
    assert scored[s.INTENDED_MESSAGE_ID].tolist() == unheld[s.MESSAGE_ID].tolist()
    assert (scored.loc[~held, s.INTENDED_MESSAGE_ID] == scored.loc[~held, s.MESSAGE_ID]).all()
    assert (scored.loc[held, s.MESSAGE_ID] == s.CONTROL_ARM).all()
    assert (scored.loc[held, s.INTENDED_MESSAGE_ID] != s.CONTROL_ARM).mean() > 0.5


def test_a_decision_nonce_changes_the_ids_and_nothing_else(models: ScoringModels) -> None:
    features = _features(300)
    policy = PolicyConfig(epsilon=0.3)
    plain = score_features(features, models, policy=policy, seed=7, reasons_top_k=None)
    runs = [
        score_features(features, models, policy=policy, seed=7, reasons_top_k=None, decision_nonce=n)
        for n in ("request-1", "request-2", "request-1")
    ]
    for run in runs:
        pd.testing.assert_frame_equal(run.drop(columns=["decision_id"]), plain.drop(columns=["decision_id"]))
    ids = [set(run["decision_id"]) for run in [plain, *runs]]
    assert ids[0].isdisjoint(ids[1]) and ids[1].isdisjoint(ids[2]) and ids[1] == ids[3]
