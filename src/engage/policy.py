"""Message choice: eligibility -> consent -> cooldowns and caps -> argmax expected gain.

Returns the probability of every arm per user (after exploration), so the chosen arm's propensity
is always known and a candidate policy can be judged offline. A deterministic hash of user_id puts
a global holdout on `none`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.config import PolicyConfig


def holdout_mask(user_ids, pct: float) -> np.ndarray:
    if pct <= 0:
        return np.zeros(len(user_ids), bool)
    keys = [
        int.from_bytes(hashlib.sha256(f"holdout|{u}".encode()).digest()[:8], "big") / 2.0**64
        for u in user_ids
    ]
    return np.asarray(keys) < pct


def allowed_arms(
    features: pd.DataFrame, catalog, *, history: pd.DataFrame | None, as_of: datetime | None, max_per_7d: int
) -> pd.DataFrame:
    n = len(features)
    allowed = {s.CONTROL_ARM: np.ones(n, bool)}
    recent = None
    if history is not None and len(history) and as_of is not None:
        h = history[[s.USER_ID, s.TS, s.MESSAGE_ID]].copy()
        h[s.TS] = pd.to_datetime(h[s.TS], utc=True)
        moment = pd.Timestamp(as_of)
        moment = moment.tz_localize("UTC") if moment.tz is None else moment.tz_convert("UTC")
        h = h[(h[s.TS] < moment) & (h[s.MESSAGE_ID] != s.CONTROL_ARM)]
        recent = h
    users = features[s.USER_ID].astype(str).to_numpy() if s.USER_ID in features else np.array([""] * n)
    capped = np.zeros(n, bool)
    if recent is not None:
        last7 = recent[recent[s.TS] >= moment - timedelta(days=7)]
        counts = last7.groupby(s.USER_ID).size()
        capped = pd.Series(users).map(counts).fillna(0).to_numpy() >= max_per_7d
    for m in catalog.messages:
        ok = m.eligible_if.evaluate(features)
        consent = f"consent_{m.channel}"
        if consent in features:
            ok &= pd.to_numeric(features[consent], errors="coerce").fillna(0).to_numpy() > 0
        if recent is not None and m.cooldown_days > 0:
            cool = recent[
                (recent[s.MESSAGE_ID] == m.id) & (recent[s.TS] >= moment - timedelta(days=m.cooldown_days))
            ]
            ok &= ~pd.Series(users).isin(set(cool[s.USER_ID].astype(str))).to_numpy()
        allowed[m.id] = ok & ~capped
    return pd.DataFrame(allowed, index=features.index)


def action_probabilities(
    features: pd.DataFrame,
    gains: pd.DataFrame,
    catalog,
    *,
    config: PolicyConfig,
    history: pd.DataFrame | None = None,
    as_of: datetime | None = None,
    max_per_7d: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    arms = catalog.arms
    allowed = allowed_arms(
        features,
        catalog,
        history=history,
        as_of=as_of,
        max_per_7d=config.max_per_7d if max_per_7d is None else max_per_7d,
    )
    g = gains.reindex(columns=arms).to_numpy(dtype=float, copy=True)
    g[:, 0] = 0.0
    ok = allowed[arms].to_numpy() & np.isfinite(g)
    g_masked = np.where(ok, g, -np.inf)
    best = np.argmax(g_masked, axis=1)
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
    users = (
        features[s.USER_ID].astype(str).to_numpy()
        if s.USER_ID in features
        else np.array([""] * len(features))
    )
    hold = holdout_mask(users, config.holdout_pct)
    probs[hold] = 0.0
    probs[hold, 0] = 1.0
    return pd.DataFrame(probs, columns=arms, index=features.index), hold
