"""The simulator's true behavioral model: engagement levels, hazards, rates and message effects.

Kept apart from the day loop so that the oracle (``p_inactive``) and the simulation read the
same numbers: the oracle is exact only because both use these functions.

Engagement is a Markov chain over ``N_LEVELS`` discrete levels per user (drift class sets the
up/down rates); a churn hazard that rises steeply as the level falls moves the user to a
churned state that produces no events, from which the user may reactivate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from engage import schemas

N_LEVELS = 10
ENGAGEMENT = (np.arange(N_LEVELS, dtype=np.float64) + 1.0) / N_LEVELS
"""Engagement in (0, 1] for each level."""

HAZARD = 0.0005 + 0.3 * (1.0 - ENGAGEMENT) ** 8
"""True daily churn hazard per level: steep at low engagement, about zero at the top."""

REACTIVATION_RATE = 0.003
REACTIVATION_LEVEL = 3
CONVERSION_REACTIVATION_LEVEL = 4

ACTIVITY = np.array([0.75, 0.9, 1.0, 1.15, 1.35])
"""Per-user activity multipliers on the session rate (a user trait, drawn once)."""
ACTIVITY_P = np.array([0.2, 0.25, 0.25, 0.2, 0.1])

DRIFT_UP = np.array([0.04, 0.02, 0.08])
DRIFT_DOWN = np.array([0.04, 0.08, 0.08])
"""Daily probability of moving one level up / down for the stable, decliner and volatile classes."""
DRIFT_P = np.array([0.55, 0.30, 0.15])

SESSION_RATE = 0.36
DOW_FACTOR = np.array([0.9, 0.95, 0.95, 1.0, 1.05, 1.1, 1.05])
DOW_FACTOR = DOW_FACTOR / DOW_FACTOR.mean()
"""Monday..Sunday multipliers on the session rate (weekly seasonality)."""

CAMPAIGN_HOUR = 9
EMAIL_OPEN = (0.08, 0.35)
PUSH_OPEN = (0.04, 0.20)
EMAIL_CLICK_GIVEN_OPEN = 0.3

DEFAULT_MESSAGES: tuple[tuple[str, str], ...] = (
    ("cart_coupon", "email"),
    ("category_news", "push"),
    ("winback_offer", "email"),
    ("retained_content", "in_app"),
    ("newsletter", "email"),
)
DISCOUNT = {"cart_coupon": 0.10, "winback_offer": 0.20}
"""Share of the order value a coupon gives away (revenue is net of it)."""


def session_rate(level: NDArray[np.int64], activity: NDArray[np.float64], dow: int) -> NDArray[np.float64]:
    """Poisson rate of sessions per day for an alive user."""
    return SESSION_RATE * activity * ENGAGEMENT[level] ** 2 * DOW_FACTOR[dow]


def open_probability(channel: str, engagement: NDArray[np.float64]) -> NDArray[np.float64]:
    """Chance an alive user opens a message on `channel` (in-app and control make no event)."""
    if channel == "email":
        return EMAIL_OPEN[0] + EMAIL_OPEN[1] * engagement
    if channel == "push":
        return PUSH_OPEN[0] + PUSH_OPEN[1] * engagement
    return np.zeros_like(engagement)


def base_conversion(engagement: NDArray[np.float64], activity: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(purchase within 7 days) with no message: about 2% for weak users, 14% for the best."""
    return 0.015 + 0.12 * engagement * np.minimum(activity, 1.5) / 1.5


@dataclass(frozen=True)
class UserState:
    """What the message effects depend on, for one batch of exposed users (arrays aligned)."""

    alive: NDArray[np.bool_]
    engagement: NDArray[np.float64]
    activity: NDArray[np.float64]
    days_since_session: NDArray[np.float64]
    abandoned_recent: NDArray[np.bool_]
    browse: NDArray[np.float64]
    fatigue: NDArray[np.float64]


def message_lift(message_id: str, s: UserState) -> NDArray[np.float64]:
    """True additive effect of `message_id` on the 7-day conversion probability (alive users).

    Heterogeneous by design: each message helps its own segment and does little (or slight
    harm) elsewhere, so a personalized policy beats any single arm.
    """
    eng = s.engagement
    if message_id == "cart_coupon":
        return 0.12 * s.abandoned_recent.astype(np.float64) - 0.003
    if message_id == "category_news":
        return 0.07 * np.clip(s.browse / 4.0, 0.0, 1.0) - 0.006
    if message_id == "winback_offer":
        recency = np.clip((s.days_since_session - 7.0) / 21.0, 0.0, 1.0)
        return 0.09 * recency + 0.04 * (eng <= 0.4) - 0.03 * (eng >= 0.8)
    if message_id == "retained_content":
        return 0.03 * (eng <= 0.5).astype(np.float64)
    if message_id == "newsletter":
        return 0.004 - 0.02 * np.clip(s.fatigue - 2.0, 0.0, 2.0) / 2.0
    return np.full(eng.shape, 0.005)


def churned_conversion(message_id: str, channel: str) -> float:
    """P(conversion) for a churned user: only a message on an outside channel can reach them."""
    if message_id == "winback_offer":
        return 0.04
    if channel in ("email", "push", "web_popup") and message_id != schemas.CONTROL_ARM:
        return 0.006 if channel == "email" else 0.003
    return 0.0


def arm_probabilities(
    arms: Sequence[tuple[str, str]],
    s: UserState,
    *,
    effect_scale: NDArray[np.float64] | None = None,
    channels: NDArray[np.int64] | None = None,
) -> NDArray[np.float64]:
    """True conversion probability under every arm, shape (n_users, n_arms), in [0, 0.95].

    With timing (``_sim_timing``): each message's effect is multiplied by `effect_scale` (channel
    responsiveness x timing gain of the send) and reaches a churned user on `channels` (index into
    ``schemas.CHANNELS`` per user, -1 none) instead of the arm's own channel.
    """
    base = base_conversion(s.engagement, s.activity)
    out = np.empty((base.shape[0], len(arms)), dtype=np.float64)
    scale = 1.0 if effect_scale is None else effect_scale
    for j, (message_id, channel) in enumerate(arms):
        lift = 0.0 if message_id == schemas.CONTROL_ARM else message_lift(message_id, s) * scale
        if channels is None:
            churned: float | NDArray[np.float64] = churned_conversion(message_id, channel)
        else:
            by_channel = np.array(
                [churned_conversion(message_id, ch) for ch in (*schemas.CHANNELS, schemas.CONTROL_ARM)]
            )
            churned = by_channel[channels]  # -1 picks the last entry: no channel, no conversion
        out[:, j] = np.where(s.alive, base + lift, churned)
    return np.clip(out, 0.0, 0.95)


def transition_matrix(drift: int) -> NDArray[np.float64]:
    """Day-to-day transition over states 0..N_LEVELS-1 (alive levels) and N_LEVELS (churned)."""
    k = N_LEVELS
    t = np.zeros((k + 1, k + 1))
    up, down = DRIFT_UP[drift], DRIFT_DOWN[drift]
    for lvl in range(k):
        survive = 1.0 - HAZARD[lvl]
        t[lvl, k] += HAZARD[lvl]
        t[lvl, min(lvl + 1, k - 1)] += survive * up
        t[lvl, max(lvl - 1, 0)] += survive * down
        t[lvl, lvl] += survive * (1.0 - up - down)
    t[k, REACTIVATION_LEVEL] = REACTIVATION_RATE
    t[k, k] = 1.0 - REACTIVATION_RATE
    return t


def conversion_delay_max_hours(campaign_every_days: int) -> float:
    """Longest delay from exposure to its purchase: inside 7 days and before the next campaign."""
    return min(7, campaign_every_days) * 24.0 - CAMPAIGN_HOUR - 2.0


def conversion_delay_hours(u: NDArray[np.float64], campaign_every_days: int) -> NDArray[np.float64]:
    """Delay from exposure to the converting purchase: 1 h + (max - 1 h) * u**2 (front-loaded)."""
    return 1.0 + (conversion_delay_max_hours(campaign_every_days) - 1.0) * u**2


def conversion_in_window(hours_left: float, campaign_every_days: int) -> float:
    """P(conversion delay < hours_left), the inverse of ``conversion_delay_hours``."""
    span = conversion_delay_max_hours(campaign_every_days) - 1.0
    return float(np.clip(np.sqrt(max(hours_left - 1.0, 0.0) / span), 0.0, 1.0))


def no_event_tables(
    *,
    horizon_days: int,
    first_dow: int,
    campaign_offsets: Sequence[int],
    arms: Sequence[tuple[str, str]],
    consent_codes: int,
    campaign_every_days: int,
) -> NDArray[np.float64]:
    """P(no event on days 1..H-1 of a window | state at start of day 1), per user type.

    Backward recursion of the exact Markov dynamics; returns shape
    (n_activity, n_drift, consent_codes, N_LEVELS + 1), already multiplied through the
    transition out of day 0, so that p_inactive = P(no event on day 0) * table[type, state].
    On campaign days after day 0 the message effect is approximated by the base conversion
    (features such as abandoned carts are not part of the Markov state).
    """
    k = N_LEVELS
    n_act, n_drift = len(ACTIVITY), len(DRIFT_UP)
    trans = np.stack([transition_matrix(d) for d in range(n_drift)])  # (D, K+1, K+1)
    w = np.ones((n_act, n_drift, consent_codes, k + 1))
    levels = np.arange(k)
    campaign_set = set(campaign_offsets)
    for offset in range(horizon_days - 1, 0, -1):
        dow = (first_dow + offset) % 7
        ne = np.ones((n_act, 1, consent_codes, k + 1))
        rate = session_rate(levels[None, :], ACTIVITY[:, None], dow)  # (A, K)
        ne[:, 0, :, :k] = np.exp(-rate)[:, None, :]
        if offset in campaign_set:
            hours_left = (horizon_days - offset) * 24.0 - CAMPAIGN_HOUR
            in_window = conversion_in_window(hours_left, campaign_every_days)
            ne *= campaign_no_event(arms, consent_codes, in_window)[:, None, :, :]
        # w_new[a,d,c,s] = ne[a,c,s] * sum_s' T[d,s,s'] w[a,d,c,s']
        w = ne * np.einsum("dst,adct->adcs", trans, w)
    return np.einsum("dst,adct->adcs", trans, w)


def campaign_no_event(
    arms: Sequence[tuple[str, str]], consent_codes: int, in_window: float
) -> NDArray[np.float64]:
    """P(no campaign-caused event) averaged over the uniform arm draw: (A, consent, K+1)."""
    k = N_LEVELS
    out = np.zeros((len(ACTIVITY), consent_codes, k + 1))
    base = base_conversion(ENGAGEMENT[None, :], ACTIVITY[:, None])  # (A, K)
    for code in range(consent_codes):
        allowed = [(m, ch) for m, ch in arms if m == schemas.CONTROL_ARM or consent_allows(code, ch)]
        acc = np.zeros((len(ACTIVITY), k + 1))
        for m, ch in allowed:
            p_open = open_probability(ch, ENGAGEMENT)[None, :]
            p_conv = base if m == schemas.CONTROL_ARM else np.clip(base, 0.0, 0.95)
            acc[:, :k] += (1.0 - p_open) * (1.0 - p_conv * in_window)
            acc[:, k] += 1.0 - churned_conversion(m, ch) * in_window
        out[:, code, :] = acc / len(allowed)
    return out


def consent_allows(code: int, channel: str) -> bool:
    """Whether the consent bit set `code` (bits in ``schemas.CHANNELS`` order) allows `channel`."""
    if channel not in schemas.CHANNELS:
        return False
    return bool(code >> schemas.CHANNELS.index(channel) & 1)
