"""Policy: eligibility, consent, cooldowns and caps, holdout and exploration probabilities."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.config import DEFAULT_CATALOG_PATH, PolicyConfig
from engage.hashing import holdout_mask
from engage.offers.catalog import load_catalog
from engage.offers.policy import action_probabilities

CAT = load_catalog(DEFAULT_CATALOG_PATH)
NOW = datetime(2024, 6, 1, tzinfo=UTC)


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


def test_cooldown_blocks_only_the_same_message_inside_its_window() -> None:
    features = _features(60)
    cart = CAT.get("cart_coupon")
    assert cart is not None and cart.cooldown_days > 1
    history = pd.DataFrame(
        {
            s.USER_ID: ["u0", "u1", "u2"],
            s.TS: [
                NOW - timedelta(days=cart.cooldown_days - 1),  # inside the cooldown
                NOW - timedelta(days=cart.cooldown_days + 1),  # outside it
                NOW + timedelta(days=1),  # after as_of: must not count
            ],
            s.MESSAGE_ID: "cart_coupon",
        }
    )
    features["cart_abandon_count_7d"] = 1.0
    cfg = PolicyConfig(epsilon=0.0, holdout_pct=0.0, max_per_7d=5)
    probs, _ = action_probabilities(features, _gains(features), CAT, config=cfg, history=history, as_of=NOW)
    uniform = PolicyConfig(exploration="epsilon", epsilon=1.0, holdout_pct=0.0, max_per_7d=5)
    spread, _ = action_probabilities(
        features, _gains(features), CAT, config=uniform, history=history, as_of=NOW
    )
    assert spread.loc[0, "cart_coupon"] == 0
    assert spread.loc[1, "cart_coupon"] > 0 and spread.loc[2, "cart_coupon"] > 0
    assert np.allclose(probs.sum(axis=1), 1)


def test_none_wins_when_no_arm_has_a_positive_gain() -> None:
    features = _features(50)
    gains = _gains(features) * 0 - 1.0
    gains[s.CONTROL_ARM] = 0.0
    probs, _ = action_probabilities(
        features, gains, CAT, config=PolicyConfig(exploration="none", holdout_pct=0.0), as_of=NOW
    )
    assert (probs[s.CONTROL_ARM] == 1).all()


def test_softmax_prefers_higher_gain_and_keeps_support() -> None:
    features = _features(50)
    cfg = PolicyConfig(exploration="softmax", temperature=1.0, holdout_pct=0.0)
    probs, _ = action_probabilities(features, _gains(features), CAT, config=cfg, as_of=NOW)
    allowed = probs > 0
    assert np.allclose(probs.sum(axis=1), 1)
    row = probs.iloc[0][allowed.iloc[0]]
    gains = _gains(features).iloc[0][row.index].where(lambda g: g.index != s.CONTROL_ARM, 0.0)
    assert list(row.sort_values().index) == list(gains.sort_values().index)


def test_gain_matrix_is_the_reindexed_gains() -> None:
    from engage.offers.policy import gain_matrix

    features = _features(5)
    gains = _gains(features).drop(columns="newsletter")[["winback_offer", "none", "cart_coupon"]]
    gains["not_an_arm"] = "text"  # columns outside the arms are ignored, whatever their type
    gains.loc[2, "cart_coupon"] = np.nan
    for fill in (np.nan, 0.0):
        expected = gains.reindex(columns=CAT.arms, fill_value=fill).to_numpy(dtype=float)
        np.testing.assert_array_equal(gain_matrix(gains, CAT.arms, fill=fill), expected)


def test_history_stamps_count_alike_whatever_their_form() -> None:
    """UTC, other time zones, naive (UTC) and text stamps give the same cooldowns; NaT never counts."""
    from engage.offers.policy import allowed_arms

    features = _features(4)
    moments = [NOW - timedelta(days=1), NOW - timedelta(days=10), NOW + timedelta(hours=1), NOW]
    base = pd.DataFrame({s.USER_ID: ["u0", "u1", "u2", "u3"], s.TS: moments, s.MESSAGE_ID: "newsletter"})
    utc = pd.to_datetime(base[s.TS], utc=True)
    forms = [
        utc,
        utc.dt.tz_convert("America/New_York"),
        utc.dt.tz_convert(None),
        utc.dt.strftime("%Y-%m-%dT%H:%M:%S%z"),
    ]
    results = [
        allowed_arms(features, CAT, history=base.assign(ts=ts), as_of=NOW, max_per_7d=9) for ts in forms
    ]
    for result in results[1:]:
        pd.testing.assert_frame_equal(result, results[0])
    assert results[0]["newsletter"].tolist() == [False, True, True, True]
    missing = base.assign(ts=utc.where(base[s.USER_ID] != "u0"))  # NaT: not a contact
    assert allowed_arms(features, CAT, history=missing, as_of=NOW, max_per_7d=9)["newsletter"].all()


def test_eligibility_matrix_is_the_eligibility_frame() -> None:
    features = _features(50)
    frame = CAT.eligibility(features)
    assert list(frame.columns) == CAT.arms
    np.testing.assert_array_equal(CAT.eligibility_matrix(features), frame.to_numpy())
    assert CAT.arm_channels.tolist() == [CAT.channel(arm) for arm in CAT.arms]
