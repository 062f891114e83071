"""Message choice: eligibility -> consent per channel -> cooldowns and caps -> argmax expected gain.

``action_probabilities`` gives the probability of every arm per user after exploration (epsilon-greedy
or softmax over the allowed arms), so a candidate policy can be judged offline and the chosen arm's
propensity is always known. ``draw_arms`` picks one arm per user from those probabilities with the
user's stable draw (``engage.hashing``). A stable hash of user_id puts a global holdout on `none`
(propensity 1), so incremental impact can be measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.config import PolicyConfig
from engage.hashing import holdout_mask
from engage.offers.catalog import CAP_DAYS, Catalog
from engage.schemas import utc_values


def _users(features: pd.DataFrame) -> np.ndarray:
    if s.USER_ID in features:
        return features[s.USER_ID].astype(str).to_numpy()
    return np.array([""] * len(features), dtype=object)


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _text(column: pd.Series) -> np.ndarray:
    """The column as text values (``astype(str)``; a text column is read as it is)."""
    return (column if column.dtype == "str" else column.astype(str)).to_numpy()


class _Recent:
    """Past non-`none` exposures in the window before ``moment``, users as integer codes.

    Each user of the batch maps to the code of their history (or -1), so caps and cooldowns are
    counting and gathering over arrays, never a per-user lookup.
    """

    def __init__(self, history: pd.DataFrame, moment: pd.Timestamp, days: int, users: np.ndarray) -> None:
        missing = [c for c in (s.USER_ID, s.TS, s.MESSAGE_ID) if c not in history.columns]
        if missing:
            raise KeyError(f"history: missing column(s) {', '.join(missing)}")
        ts = utc_values(history[s.TS]).astype("datetime64[ns]")
        message = _text(history[s.MESSAGE_ID])
        end = np.datetime64(moment.tz_convert(None), "ns")
        keep = (ts < end) & (ts >= end - np.timedelta64(timedelta(days=days))) & (message != s.CONTROL_ARM)
        self.end = np.datetime64(moment.tz_convert(None), "us")
        self.ts = ts[keep].astype("datetime64[us]")
        self.message = message[keep]
        self.kept_rows = np.flatnonzero(keep)
        kept = _text(history[s.USER_ID])[keep]
        # one factorisation of history users then batch users: history codes come first
        codes, _ = pd.factorize(np.concatenate([kept, np.asarray(users, dtype=object)]))
        self.codes = codes[: len(kept)]
        self.n_users = int(self.codes.max()) + 1 if len(kept) else 0
        position = codes[len(kept) :]
        self.position = np.where(position < self.n_users, position, -1)

    def since(self, days: int) -> np.ndarray:
        """Mask of the exposures in the last ``days`` days."""
        return self.ts >= self.end - np.timedelta64(days, "D")

    def gather(self, per_user: np.ndarray, default: Any) -> np.ndarray:
        """A per-history-user array read for every batch user (``default`` when no history)."""
        known = self.position >= 0
        return np.where(
            known, per_user[np.where(known, self.position, 0)] if len(per_user) else default, default
        )


def _consent(features: pd.DataFrame, column: str) -> np.ndarray:
    """True where the consent column is a number above 0 (text is parsed; missing is no consent)."""
    values = features[column].to_numpy()
    if values.dtype.kind in "biuf":
        with np.errstate(invalid="ignore"):
            return np.asarray(values > 0, dtype=bool)
    return pd.to_numeric(features[column], errors="coerce").fillna(0).to_numpy() > 0


def allowed_arms(
    features: pd.DataFrame,
    catalog: Catalog,
    *,
    history: pd.DataFrame | None,
    as_of: datetime | None,
    max_per_7d: int,
) -> pd.DataFrame:
    """Boolean frame (one column per arm, `none` always True): eligible, consented, not cooled, not capped.

    Consent: a message needs ``consent_<channel>`` > 0 when the features carry that column. History
    (user_id, ts, message_id) counts only exposures strictly before ``as_of``; `none` rows never count.
    """
    allowed = allowed_matrix(features, catalog, history=history, as_of=as_of, max_per_7d=max_per_7d)
    return pd.DataFrame(allowed, columns=catalog.arms, index=features.index)


def allowed_matrix(
    features: pd.DataFrame,
    catalog: Catalog,
    *,
    history: pd.DataFrame | None,
    as_of: datetime | None,
    max_per_7d: int,
    users: np.ndarray | None = None,
) -> np.ndarray:
    """``allowed_arms`` as a boolean array (rows x ``catalog.arms``), without building a frame.

    ``users`` (the rows' user ids as text), when the caller has them, saves reading them again.
    """
    n = len(features)
    allowed = catalog.eligibility_matrix(features)
    recent: _Recent | None = None
    capped = np.zeros(n, dtype=bool)
    moment = _utc(as_of) if as_of is not None else None
    if history is not None and len(history) and moment is not None:
        window = catalog.history_days
        recent = _Recent(history, moment, window, _users(features) if users is None else users)
        capped = recent.gather(np.bincount(recent.codes[recent.since(CAP_DAYS)], minlength=recent.n_users), 0)
        capped = capped >= max_per_7d
    elif max_per_7d <= 0:
        capped = np.ones(n, dtype=bool)
    consents: dict[str, np.ndarray] = {}
    reachable: np.ndarray | None = (
        np.asarray(channel_allowed(features, catalog, history=history, as_of=as_of, users=users).any(axis=2))
        if catalog.per_channel_7d or any(m.variants for m in catalog.messages)
        else None
    )
    for j, m in enumerate(catalog.messages, start=1):
        ok = allowed[:, j]
        consent = s.consent_column(m.channel)
        if reachable is not None:  # variants: any consented channel under its cap will do
            ok &= reachable[:, j]
        elif consent in features:
            if consent not in consents:
                consents[consent] = _consent(features, consent)
            ok &= consents[consent]
        if recent is not None and m.cooldown_days > 0:
            cooled = np.zeros(recent.n_users, dtype=bool)
            cooled[recent.codes[(recent.message == m.id) & recent.since(m.cooldown_days)]] = True
            ok &= ~recent.gather(cooled, False)
        ok &= ~capped
    return allowed


def channel_allowed(
    features: pd.DataFrame,
    catalog: Catalog,
    *,
    history: pd.DataFrame | None,
    as_of: datetime | None,
    users: np.ndarray | None = None,
) -> np.ndarray:
    """(rows, arms, channels): whether each arm could go on each channel (``schemas.CHANNELS``).

    A message's variant on a channel is allowed when the user consented (``consent_<channel>`` > 0,
    when the features carry it) and the channel's cap (``caps.per_channel_7d``) is not reached by
    the non-`none` history before ``as_of`` (its ``channel`` column, else the message's channel).
    The control arm has no channel; eligibility, cooldowns and the global cap are ``allowed_matrix``'s.
    """
    n, channels = len(features), s.CHANNELS
    out = np.zeros((n, len(catalog.arms), len(channels)), dtype=bool)
    ok_channel = np.ones((n, len(channels)), dtype=bool)
    for c, ch in enumerate(channels):
        if s.consent_column(ch) in features:
            ok_channel[:, c] = _consent(features, s.consent_column(ch))
    moment = _utc(as_of) if as_of is not None else None
    if catalog.per_channel_7d and history is not None and len(history) and moment is not None:
        recent = _Recent(history, moment, CAP_DAYS, _users(features) if users is None else users)
        sent_on = _text(history[s.CHANNEL]) if s.CHANNEL in history.columns else None
        kept = recent.kept_rows
        channel_of = (
            sent_on[kept] if sent_on is not None else np.array([catalog.channel(m) for m in recent.message])
        )
        for c, ch in enumerate(channels):
            cap = catalog.per_channel_7d.get(ch)
            if cap is None:
                continue
            counts = np.bincount(recent.codes[channel_of == ch], minlength=recent.n_users)
            ok_channel[:, c] &= recent.gather(counts, 0) < cap
    elif catalog.per_channel_7d:
        for c, ch in enumerate(channels):
            if catalog.per_channel_7d.get(ch) == 0:
                ok_channel[:, c] = False
    for j, m in enumerate(catalog.messages, start=1):
        for v in m.all_variants:
            c = channels.index(v.channel)
            out[:, j, c] = ok_channel[:, c]
    return out


def variant_gains(
    gains: np.ndarray,
    catalog: Catalog,
    allowed: np.ndarray,
    channel_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each arm's best channel and its expected gain net of that channel's cost: (gains, channel index).

    ``gains`` (rows x arms) are the model's expected gains on the message's own channel, net of its
    cost; the benefit (gain + cost) is scaled by the user's relative responsiveness to each channel
    (``channel_scores``, rows x channels, 1 = as the own channel; ``engage.timing``) and each
    variant's cost subtracted. Channels not ``allowed`` (``channel_allowed``) are skipped; an arm
    with none left gets -inf and channel -1. The control arm keeps its gain and channel -1.
    """
    n, n_arms, n_ch = allowed.shape
    scores = np.ones((n, n_ch)) if channel_scores is None else np.asarray(channel_scores, dtype=float)
    best = np.full((n, n_arms), -np.inf)
    channel = np.full((n, n_arms), -1, dtype=np.int64)
    best[:, 0] = gains[:, 0]
    for j, m in enumerate(catalog.messages, start=1):
        own = s.CHANNELS.index(m.channel)
        benefit = (gains[:, j] + m.cost) / np.where(scores[:, own] > 0, scores[:, own], 1.0)
        for v in m.all_variants:
            c = s.CHANNELS.index(v.channel)
            net = np.where(allowed[:, j, c], benefit * scores[:, c] - v.cost, -np.inf)
            better = net > best[:, j]
            best[:, j] = np.where(better, net, best[:, j])
            channel[:, j] = np.where(better, c, channel[:, j])
    return best, channel


def gain_matrix(gains: pd.DataFrame, arms: Sequence[str], fill: float = np.nan) -> np.ndarray:
    """The gains as a float array with one column per arm in ``arms`` order (``fill`` where absent).

    ``gains.reindex(columns=arms, fill_value=fill).to_numpy(dtype=float)``, without a new frame.
    """
    if not gains.columns.is_unique:
        raise ValueError("gains: repeated arm columns")
    wanted = set(arms)
    present = [name for name in gains.columns if name in wanted]
    values = (gains if len(present) == gains.shape[1] else gains[present]).to_numpy(dtype=float)
    position = {name: j for j, name in enumerate(present)}
    out = np.full((len(gains), len(arms)), fill, dtype=float)
    for j, arm in enumerate(arms):
        if arm in position:
            out[:, j] = values[:, position[arm]]
    return out


MAX_VALUE_WEIGHT = 10.0
"""A user's value weight is capped so one extrapolated big spender does not outweigh the rest."""


def value_weights(predicted_revenue: np.ndarray, reference: float) -> np.ndarray:
    """Predicted revenue relative to ``reference`` (the mean buyer's), in [0, MAX_VALUE_WEIGHT];
    1 where unknown (users without a purchase) or when there is no positive reference."""
    revenue = np.asarray(predicted_revenue, dtype=float)
    if not (np.isfinite(reference) and reference > 0):
        return np.ones(len(revenue))
    return np.where(np.isfinite(revenue), np.clip(revenue / reference, 0.0, MAX_VALUE_WEIGHT), 1.0)


def value_weighted_gains(arm_gains: np.ndarray, catalog: Catalog, weights: np.ndarray) -> np.ndarray:
    """Each arm's benefit scaled by the user's value weight, its cost not: (gain + cost) * w - cost.

    With ``policy.value_weighting`` a coupon's expected benefit counts more for a valuable user and
    less for a low-value one, while it costs the same: win-back offers go to valuable at-risk users.
    """
    costs = np.zeros(len(catalog.arms))
    for j, arm in enumerate(catalog.arms):
        message = catalog.get(arm)
        costs[j] = 0.0 if message is None else message.cost
    return (arm_gains + costs) * np.asarray(weights, dtype=float)[:, None] - costs


def action_probabilities(
    features: pd.DataFrame,
    gains: pd.DataFrame,
    catalog: Catalog,
    *,
    config: PolicyConfig,
    history: pd.DataFrame | None = None,
    as_of: datetime | None = None,
    max_per_7d: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-arm probability of being chosen (rows sum to 1) and the holdout mask.

    Greedy = argmax expected gain over allowed arms (`none` = 0, so `none` wins when no arm has a
    positive gain). Exploration spreads ``epsilon`` uniformly over allowed arms, or uses a softmax of
    gain / temperature. Holdout rows get `none` with probability 1. The contact cap is the stricter
    of ``config.max_per_7d`` and the catalog's ``caps.max_per_7d`` (unless ``max_per_7d`` is given).
    """
    probs, hold = probability_matrix(
        features,
        gain_matrix(gains, catalog.arms),
        catalog,
        config=config,
        history=history,
        as_of=as_of,
        max_per_7d=max_per_7d,
    )
    return pd.DataFrame(probs, columns=catalog.arms, index=features.index), hold


def probability_matrix(
    features: pd.DataFrame,
    gains: np.ndarray,
    catalog: Catalog,
    *,
    config: PolicyConfig,
    history: pd.DataFrame | None = None,
    as_of: datetime | None = None,
    max_per_7d: int | None = None,
    users: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``action_probabilities`` over arrays: ``gains`` is rows x ``catalog.arms`` (``gain_matrix``).

    Returns the probability array (same shape) and the holdout mask. ``users``, the rows' user ids
    as text when the caller has them, saves reading them again.
    """
    if len(gains) != len(features):
        raise ValueError(f"gains have {len(gains)} rows but features have {len(features)}")
    users = _users(features) if users is None else users
    cap = min(config.max_per_7d, catalog.max_per_7d) if max_per_7d is None else max_per_7d
    allowed = allowed_matrix(features, catalog, history=history, as_of=as_of, max_per_7d=cap, users=users)
    g = np.array(gains, dtype=float)
    g[:, 0] = 0.0
    ok = allowed & np.isfinite(g)
    best = np.argmax(np.where(ok, g, -np.inf), axis=1)
    greedy = np.zeros_like(g)
    greedy[np.arange(len(g)), best] = 1.0
    n_ok = ok.sum(axis=1, keepdims=True)
    if config.exploration == "epsilon" and config.epsilon > 0:
        probs = (1 - config.epsilon) * greedy + config.epsilon * ok / n_ok
    elif config.exploration == "softmax":
        z = np.where(ok, g / config.temperature, -np.inf)
        z = z - z.max(axis=1, keepdims=True)
        e = np.where(ok, np.exp(z), 0.0)
        probs = e / e.sum(axis=1, keepdims=True)
    else:
        probs = greedy
    hold = holdout_mask(users, config.holdout_pct)
    probs[hold] = 0.0
    probs[hold, 0] = 1.0
    return probs, hold


def decayed_epsilon(config: PolicyConfig, batch: int) -> float:
    """The exploration share for served batch ``batch`` (1 = the first after the randomized data).

    ``epsilon * batch ** -epsilon_decay``, never below ``epsilon_min`` (nor above ``epsilon``): the
    more logged decisions the model learns from, the less the policy pays for exploring, while every
    allowed arm keeps a logged probability above 0 (a floor > 0) so later policies stay judgeable.
    """
    if batch < 1:
        raise ValueError(f"batch counts served batches from 1, got {batch}")
    decayed = config.epsilon * float(batch) ** -config.epsilon_decay
    return float(min(config.epsilon, max(config.epsilon_min, decayed)))


def draw_arms(probabilities: np.ndarray, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pick one arm per row by inverse CDF of its probabilities; return (arm index, its probability).

    ``uniforms`` are the rows' draws in [0, 1) (``engage.hashing.decision_keys``); a draw past the
    cumulative sum's rounding lands on the last arm.
    """
    matrix = np.asarray(probabilities, dtype=float)
    cumulative = np.cumsum(matrix, axis=1)
    cumulative[:, -1] = np.maximum(cumulative[:, -1], 1.0)
    index = (uniforms[:, None] >= cumulative).sum(axis=1)
    index = np.minimum(index, matrix.shape[1] - 1)
    return index, matrix[np.arange(len(matrix)), index]
