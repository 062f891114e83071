"""Catalog rules, policy choice with caps, holdout and exploration, and off-policy estimators."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.catalog import CatalogError, load_catalog, parse_rule, render
from engage.config import DEFAULT_CATALOG_PATH, PolicyConfig
from engage.evaluation.off_policy import doubly_robust, ips, snips
from engage.policy import action_probabilities, holdout_mask

CAT = load_catalog(DEFAULT_CATALOG_PATH)
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def test_rules_are_parsed_not_evaluated_as_code() -> None:
    frame = pd.DataFrame({"a": [1.0, 5.0, np.nan], "b": ["x", "y", "x"]})
    assert parse_rule("a > 2 and not b == 'y'").evaluate(frame).tolist() == [False, False, False]
    assert parse_rule("a <= 2 or b == 'y'").evaluate(frame).tolist() == [True, True, False]
    assert parse_rule("").evaluate(frame).tolist() == [True] * 3
    for bad in ("__import__('os')", "a >", "a > 2 and", "a + 1 > 2"):
        with pytest.raises(ValueError):
            parse_rule(bad)


def test_malformed_catalog_names_message_and_field(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "messages:\n  - id: promo\n    channel: fax\n    template: hi\n    cost: 1\n    value: 2\n"
    )
    with pytest.raises(CatalogError, match=r"message promo: field 'channel'"):
        load_catalog(path)
    path.write_text(
        "messages:\n  - id: promo\n    channel: email\n    template: hi\n    cost: 1\n    value: 2\n"
        "    eligible_if: 'x >'\n"
    )
    with pytest.raises(CatalogError, match=r"message promo: field 'eligible_if'"):
        load_catalog(path)


def _features(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            s.USER_ID: [f"u{i}" for i in range(n)],
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


def _gains(features: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({arm: np.full(len(features), 1.0 + i) for i, arm in enumerate(CAT.arms)}).assign(
        none=0.0
    )


def test_policy_respects_eligibility_consent_caps_and_holdout() -> None:
    features = _features()
    probs, hold = action_probabilities(
        features, _gains(features), CAT, config=PolicyConfig(epsilon=0.0), as_of=NOW
    )
    assert np.allclose(probs.sum(axis=1), 1)
    assert (probs["category_news"] == 0).all()  # no push consent
    no_cart = features["cart_abandon_count_7d"] == 0
    assert (probs.loc[no_cart, "cart_coupon"] == 0).all()
    assert (probs.loc[hold, s.CONTROL_ARM] == 1).all()
    assert 0.01 < hold.mean() < 0.12
    history = pd.DataFrame(
        {s.USER_ID: features[s.USER_ID], s.TS: NOW - timedelta(days=1), s.MESSAGE_ID: "newsletter"}
    )
    capped, _ = action_probabilities(
        features,
        _gains(features),
        CAT,
        config=PolicyConfig(epsilon=0.0, max_per_7d=1),
        history=history,
        as_of=NOW,
    )
    assert (capped[s.CONTROL_ARM] == 1).all()


def test_exploration_gives_every_allowed_arm_some_probability() -> None:
    features = _features()
    probs, _hold = action_probabilities(
        features, _gains(features), CAT, config=PolicyConfig(epsilon=0.2, holdout_pct=0), as_of=NOW
    )
    assert (probs[s.CONTROL_ARM] > 0).all()
    assert probs.max(axis=1).min() >= 0.8
    assert holdout_mask(["a", "b"], 0.5).tolist() == holdout_mask(["a", "b"], 0.5).tolist()


def test_render_fills_placeholders_and_never_crashes() -> None:
    text = render(CAT, "cart_coupon", pd.Series({"top_category": "books"}))
    assert "books" in text and "10%" in text
    assert render(CAT, "category_news", pd.Series({})) != ""


def test_dr_ci_covers_the_truth_in_most_seeds() -> None:
    covered = 0
    arms = ["none", "a", "b"]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = 3000
        x = rng.normal(size=n)
        p_true = pd.DataFrame({"none": 0.1 + 0 * x, "a": 0.1 + 0.1 * (x > 0), "b": 0.15 - 0.05 * (x > 0)})
        logged = rng.choice(arms, size=n)
        reward = (rng.random(n) < p_true.to_numpy()[np.arange(n), [arms.index(a) for a in logged]]).astype(
            float
        )
        target = pd.DataFrame(0.0, index=range(n), columns=arms)
        target.loc[x > 0, "a"] = 1.0
        target.loc[x <= 0, "b"] = 1.0
        truth = float((target * p_true).sum(axis=1).mean())
        q = p_true + rng.normal(0, 0.02, size=p_true.shape)  # an imperfect outcome model
        est = doubly_robust(logged, reward, np.full(n, 1 / 3), target, q, n_boot=200, seed=seed)
        covered += est.ci_low <= truth <= est.ci_high
        assert abs(ips(logged, reward, np.full(n, 1 / 3), target, n_boot=50).value - truth) < 0.05
        assert abs(snips(logged, reward, np.full(n, 1 / 3), target, n_boot=50).value - truth) < 0.05
    assert covered >= 16
