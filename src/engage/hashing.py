"""Stable hashes: the one family behind the holdout, the exploration draws and the decision ids.

Every random-looking choice that must be reproducible anywhere (a batch run, the HTTP service, a
Spark executor, next year's re-run) is a pure function of text and integers here: splitmix64 over
the UTF-8 bytes of the user id, folded with the decision time and the seed. Nothing depends on the
process, the machine, the batch a user arrives in or a library's own hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from engage.schemas import utc_values

__all__ = [
    "DECISION_SALTS",
    "DRAW_SALT",
    "HOLDOUT_SALT",
    "decision_keys",
    "holdout_mask",
    "mix_int",
    "stable_hash64",
    "stable_hashes",
    "unit_interval",
]

U64 = npt.NDArray[np.uint64]

_MASK64 = (1 << 64) - 1
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_UNIT = 2.0**-53
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

HOLDOUT_SALT = 0x686F6C646F7574  # "holdout"
DRAW_SALT = 0x64726177  # "draw"
DECISION_SALTS = (0x646563697369306E, 0x6465636973693121)  # two lanes: 96-bit decision ids


def _mix(z: U64) -> U64:
    """splitmix64's finaliser on uint64 arrays (wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _utf8(values: Any) -> tuple[U64, npt.NDArray[np.int64]]:
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


def stable_hash64(values: Any, salt: int = 0) -> U64:
    """A 64-bit hash per string, the same in every process, machine and library version.

    Definition (``tests/unit/test_hashing.py`` has a scalar reference): ``h = mix(salt + n + gamma)``
    where n is the UTF-8 byte length, then for each little-endian 8-byte word w of the bytes (the
    last one zero-padded) ``h = mix((h ^ w) + gamma)``; ``mix`` is splitmix64's finaliser and gamma
    its golden-ratio increment. Vectorised with numpy over the batch (one pass per 8 bytes).
    """
    return stable_hashes(values, (salt,))[0]


def stable_hashes(values: Any, salts: Sequence[int]) -> U64:
    """``stable_hash64`` of the values under each salt, shape (salts, values): the text read once."""
    words, lengths = _utf8(values)
    start = np.array([salt & _MASK64 for salt in salts], dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        h = _mix(start + lengths.astype(np.uint64) + _GAMMA)
        n_words = (lengths + 7) // 8
        for j in range(words.shape[1]):
            h = np.where(j < n_words, _mix((h ^ words[:, j]) + _GAMMA), h)
    return h


def mix_int(h: U64, values: Any) -> U64:
    """Fold a 64-bit integer per row (e.g. a timestamp in microseconds) into hashes ``h``."""
    x = np.asarray(values, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _mix((h ^ x) + _GAMMA)


def unit_interval(h: U64) -> npt.NDArray[np.float64]:
    """Hashes to uniform floats in [0, 1): the top 53 bits."""
    return (h >> np.uint64(11)).astype(np.float64) * _UNIT


def holdout_mask(user_ids: Iterable[Any], pct: float) -> npt.NDArray[np.bool_]:
    """True for the users in the global holdout: a fixed ``pct`` share chosen by hash of user_id."""
    users = user_ids if isinstance(user_ids, np.ndarray) else np.asarray(list(user_ids), dtype=object)
    if pct <= 0:
        return np.zeros(len(users), dtype=bool)
    return unit_interval(stable_hash64(users.astype(str).astype(object), HOLDOUT_SALT)) < pct


def _as_of_micros(as_of: Any, n: int) -> npt.NDArray[np.int64]:
    """as_of per row (or one for all rows) as integer microseconds since the epoch, UTC."""
    stamps = utc_values(as_of if np.ndim(as_of) else [as_of] * n)
    return stamps.astype("datetime64[us]").view(np.int64)


def _user_text(user_ids: Any) -> Any:
    if isinstance(user_ids, pd.Series) and user_ids.dtype == "str":
        return user_ids
    return pd.Series(user_ids).astype(str)


def decision_keys(
    user_ids: Any, as_of: Any, versions: Mapping[str, str], seed: int, *, nonce: str | None = None
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """Per row, the exploration draw in [0, 1) and the decision id (24 hex digits).

    The draw is fixed by (user, as_of, seed), so a user's draw ignores the rest of the batch and
    the service, a batch run and Spark agree; the id adds the model versions and ``nonce``. The
    service passes a nonce per request (a process token and a counter), so two ``/score`` calls for
    one user and day are two decisions with two ids; a batch run passes its run key, or nothing,
    so re-running the same job gives the same ids (``nonce=None`` keeps the ids every earlier run
    logged). ``as_of`` is one moment or one per row; the user ids are read once for all hashes.
    """
    users = _user_text(user_ids)
    hashes = stable_hashes(users, (DRAW_SALT, *DECISION_SALTS))
    micros = _as_of_micros(as_of, len(users))
    seeds = np.full(len(users), seed, dtype=np.int64)
    draws = unit_interval(mix_int(mix_int(hashes[0], micros), seeds))
    tag = json.dumps(dict(versions), sort_keys=True) + f"|{seed}"
    tag_hash = _run_tag_hash if nonce is None else _tag_hash
    tag = tag if nonce is None else f"{tag}|{nonce}"
    lanes = [
        mix_int(mix_int(user_hash, micros), np.full(len(micros), tag_hash(tag, salt), dtype=np.int64))
        for salt, user_hash in zip(DECISION_SALTS, hashes[1:], strict=True)
    ]
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nibbles = np.concatenate(
        [(lanes[0][:, None] >> shifts) & np.uint64(15), (lanes[1][:, None] >> shifts[:8]) & np.uint64(15)],
        axis=1,
    )
    chars = np.ascontiguousarray(_HEX[nibbles.astype(np.intp)])
    return draws, chars.view("S24").ravel().astype(str).tolist()


@lru_cache(maxsize=64)
def _run_tag_hash(tag: str, salt: int) -> int:
    """The hash of a run's decision tag (model versions and seed): cached, every call repeats it."""
    return _tag_hash(tag, salt)


def _tag_hash(tag: str, salt: int) -> int:
    """The hash of a decision tag: the same for every row of a call."""
    return int(stable_hash64([tag], salt).astype(np.int64)[0])
