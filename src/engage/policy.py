"""Message choice: eligibility -> consent per channel -> cooldowns and caps -> argmax expected gain.

``action_probabilities`` gives the probability of every arm per user after exploration (epsilon-greedy
or softmax over the allowed arms), so a candidate policy can be judged offline and the chosen arm's
propensity is always known. ``choose`` draws one arm per user from those probabilities. A stable hash
of user_id puts a global holdout on `none` (propensity 1), so incremental impact can be measured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.catalog import Catalog
from engage.config import PolicyConfig

HOLDOUT = "holdout"
EXPLORATION = "exploration"
EXPECTED_GAIN = "expected_gain"


def _unit_hash(parts: Iterable[str]) -> np.ndarray:
    """A uniform number in [0, 1) per key from sha256: stable across processes and machines."""
    return np.asarray(
        [int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "big") / 2.0**64 for p in parts],
        dtype=float,
    )


def holdout_mask(user_ids: Iterable[Any], pct: float) -> np.ndarray:
    """True for the users in the global holdout: a fixed ``pct`` share chosen by hash of user_id."""
    users = [str(u) for u in user_ids]
    if pct <= 0:
        return np.zeros(len(users), dtype=bool)
    return _unit_hash(f"holdout|{u}" for u in users) < pct


def _users(features: pd.DataFrame) -> np.ndarray:
    if s.USER_ID in features:
        return features[s.USER_ID].astype(str).to_numpy()
    return np.array([""] * len(features), dtype=object)


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


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
    n = len(features)
    users = _users(features)
    allowed = catalog.eligibility(features)
    recent: pd.DataFrame | None = None
    capped = np.zeros(n, dtype=bool)
    moment = _utc(as_of) if as_of is not None else None
    if history is not None and len(history) and moment is not None:
        missing = [c for c in (s.USER_ID, s.TS, s.MESSAGE_ID) if c not in history.columns]
        if missing:
            raise KeyError(f"history: missing column(s) {', '.join(missing)}")
        h = history[[s.USER_ID, s.TS, s.MESSAGE_ID]].copy()
        h[s.TS] = pd.to_datetime(h[s.TS], utc=True)
        h[s.USER_ID] = h[s.USER_ID].astype(str)
        recent = h[(h[s.TS] < moment) & (h[s.MESSAGE_ID].astype(str) != s.CONTROL_ARM)]
        counts = recent[recent[s.TS] >= moment - timedelta(days=7)].groupby(s.USER_ID).size()
        capped = pd.Series(users).map(counts).fillna(0).to_numpy() >= max_per_7d
    elif max_per_7d <= 0:
        capped = np.ones(n, dtype=bool)
    for m in catalog.messages:
        ok = allowed[m.id].to_numpy(dtype=bool, copy=True)
        consent = s.consent_column(m.channel)
        if consent in features:
            ok &= pd.to_numeric(features[consent], errors="coerce").fillna(0).to_numpy() > 0
        if recent is not None and moment is not None and m.cooldown_days > 0:
            cool = recent[
                (recent[s.MESSAGE_ID] == m.id) & (recent[s.TS] >= moment - timedelta(days=m.cooldown_days))
            ]
            ok &= ~np.isin(users, cool[s.USER_ID].unique())
        allowed[m.id] = ok & ~capped
    return allowed


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
    if len(gains) != len(features):
        raise ValueError(f"gains have {len(gains)} rows but features have {len(features)}")
    arms = catalog.arms
    cap = min(config.max_per_7d, catalog.max_per_7d) if max_per_7d is None else max_per_7d
    allowed = allowed_arms(features, catalog, history=history, as_of=as_of, max_per_7d=cap)
    g = gains.reindex(columns=arms).to_numpy(dtype=float, copy=True)
    g[:, 0] = 0.0
    ok = allowed[arms].to_numpy(dtype=bool) & np.isfinite(g)
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
    hold = holdout_mask(_users(features), config.holdout_pct)
    probs[hold] = 0.0
    probs[hold, 0] = 1.0
    return pd.DataFrame(probs, columns=arms, index=features.index), hold


def choose(
    features: pd.DataFrame,
    gains: pd.DataFrame,
    catalog: Catalog,
    *,
    config: PolicyConfig,
    history: pd.DataFrame | None = None,
    as_of: datetime | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """One decision per row: message_id, channel, expected_gain, propensity, holdout, exploration.

    The arm is drawn from ``action_probabilities`` with a uniform number hashed from (seed, user_id,
    as_of), so a user's draw does not depend on who else is in the batch (batch and API agree).
    ``exploration`` is True when the drawn arm is not the greedy one.
    """
    probs, hold = action_probabilities(features, gains, catalog, config=config, history=history, as_of=as_of)
    arms = np.asarray(catalog.arms, dtype=object)
    p = probs.to_numpy()
    stamp = "" if as_of is None else _utc(as_of).isoformat()
    users = _users(features)
    keys = (
        [f"choose|{seed}|{u}|{stamp}" for u in users]
        if s.USER_ID in features
        else [f"choose|{seed}|row{i}|{stamp}" for i in range(len(features))]
    )
    u = _unit_hash(keys)
    cum = np.cumsum(p, axis=1)
    cum[:, -1] = 1.0 + 1e-12
    chosen = np.minimum((cum <= u[:, None]).sum(axis=1), len(arms) - 1)
    while True:  # never land on a zero-probability arm through rounding
        bad = p[np.arange(len(p)), chosen] <= 0
        if not bad.any():
            break
        chosen[bad] -= 1
    g = gains.reindex(columns=catalog.arms).fillna(0.0).to_numpy(dtype=float)
    g[:, 0] = 0.0
    allowed = p > 0
    greedy = np.argmax(np.where(allowed, g, -np.inf), axis=1)
    rows = np.arange(len(p))
    out = pd.DataFrame(index=features.index)
    if s.USER_ID in features:
        out[s.USER_ID] = features[s.USER_ID].to_numpy()
    out[s.MESSAGE_ID] = arms[chosen]
    out[s.CHANNEL] = [catalog.channel(a) for a in arms[chosen]]
    out[EXPECTED_GAIN] = g[rows, chosen]
    out[s.PROPENSITY] = p[rows, chosen]
    out[HOLDOUT] = hold
    out[EXPLORATION] = (chosen != greedy) & ~hold
    return out
