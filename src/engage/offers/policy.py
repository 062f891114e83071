"""Message choice: eligibility -> consent per channel -> cooldowns and caps -> argmax expected gain.

``action_probabilities`` gives the probability of every arm per user after exploration (epsilon-greedy
or softmax over the allowed arms), so a candidate policy can be judged offline and the chosen arm's
propensity is always known. ``choose`` draws one arm per user from those probabilities. A stable hash
of user_id puts a global holdout on `none` (propensity 1), so incremental impact can be measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from engage import schemas as s
from engage.config import PolicyConfig
from engage.offers.catalog import CAP_DAYS, Catalog

HOLDOUT = "holdout"
EXPLORATION = "exploration"
EXPECTED_GAIN = "expected_gain"


_MASK64 = (1 << 64) - 1
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
HOLDOUT_SALT = 0x686F6C646F7574  # "holdout": the holdout hash has its own stream
_UNIT = 2.0**-53


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _utf8(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of each string as zero-padded little-endian 64-bit words, and byte lengths."""
    arr = (
        values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, type=pa.large_string())
    )
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=pa.large_string())
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    if arr.null_count:
        raise ValueError("cannot hash missing values: convert them to text first")
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    lengths = np.diff(offsets)
    width = max(8, int(-(-int(lengths.max(initial=0)) // 8) * 8))
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    padded = np.concatenate([data[: int(offsets[-1])], np.zeros(width, np.uint8)])
    matrix = np.lib.stride_tricks.sliding_window_view(padded, width)[offsets[:-1]]
    matrix[np.arange(width)[None, :] >= lengths[:, None]] = 0
    return np.ascontiguousarray(matrix).view("<u8"), lengths


def stable_hash64(values: Any, salt: int = 0) -> np.ndarray:
    """A 64-bit hash per string, the same in every process, machine and library version.

    Definition (``tests/unit/test_policy.py`` has a scalar reference): ``h = mix(salt + n + gamma)``
    where n is the UTF-8 byte length, then for each little-endian 8-byte word w of the bytes (the
    last one zero-padded) ``h = mix((h ^ w) + gamma)``; ``mix`` is splitmix64's finaliser and gamma
    its golden-ratio increment. Vectorised with numpy over the batch (one pass per 8 bytes).
    """
    return stable_hashes(values, (salt,))[0]


def stable_hashes(values: Any, salts: Sequence[int]) -> np.ndarray:
    """``stable_hash64`` of the values under each salt, shape (salts, values): the text read once."""
    words, lengths = _utf8(values)
    start = np.array([salt & _MASK64 for salt in salts], dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        h = _mix(start + lengths.astype(np.uint64) + _GAMMA)
        n_words = (lengths + 7) // 8
        for j in range(words.shape[1]):
            h = np.where(j < n_words, _mix((h ^ words[:, j]) + _GAMMA), h)
    return h


def mix_int(h: np.ndarray, values: Any) -> np.ndarray:
    """Fold a 64-bit integer per row (e.g. a timestamp in microseconds) into hashes ``h``."""
    x = np.asarray(values, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _mix((h ^ x) + _GAMMA)


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Hashes to uniform floats in [0, 1): the top 53 bits."""
    return (h >> np.uint64(11)).astype(np.float64) * _UNIT


def _unit_hash(parts: Iterable[str]) -> np.ndarray:
    """A uniform number in [0, 1) per key: stable across processes and machines."""
    return unit_interval(stable_hash64(list(parts)))


def holdout_mask(user_ids: Iterable[Any], pct: float) -> np.ndarray:
    """True for the users in the global holdout: a fixed ``pct`` share chosen by hash of user_id."""
    users = user_ids if isinstance(user_ids, np.ndarray) else np.asarray(list(user_ids), dtype=object)
    if pct <= 0:
        return np.zeros(len(users), dtype=bool)
    return unit_interval(stable_hash64(users.astype(str).astype(object), HOLDOUT_SALT)) < pct


def _users(features: pd.DataFrame) -> np.ndarray:
    if s.USER_ID in features:
        return features[s.USER_ID].astype(str).to_numpy()
    return np.array([""] * len(features), dtype=object)


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def utc_values(stamps: Any) -> np.ndarray:
    """Timestamps as naive UTC ``datetime64`` values (naive inputs are UTC); NaT stays NaT.

    A column that already holds UTC timestamps is read as it is, without a conversion pass.
    """
    if not (isinstance(stamps, pd.Series) and isinstance(stamps.dtype, pd.DatetimeTZDtype)):
        stamps = pd.to_datetime(pd.Series(stamps), utc=True)
    elif str(stamps.dtype.tz) != "UTC":
        stamps = stamps.dt.tz_convert("UTC")
    return stamps.values


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
    for j, m in enumerate(catalog.messages, start=1):
        ok = allowed[:, j]
        consent = s.consent_column(m.channel)
        if consent in features:
            if consent not in consents:
                consents[consent] = _consent(features, consent)
            ok &= consents[consent]
        if recent is not None and m.cooldown_days > 0:
            cooled = np.zeros(recent.n_users, dtype=bool)
            cooled[recent.codes[(recent.message == m.id) & recent.since(m.cooldown_days)]] = True
            ok &= ~recent.gather(cooled, False)
        ok &= ~capped
    return allowed


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
