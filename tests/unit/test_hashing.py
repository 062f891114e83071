"""Stable hashes: the scalar definition, the holdout share and the decision keys, fixed forever."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engage.hashing import decision_keys, holdout_mask, stable_hash64


def _reference_hash(text: str, salt: int) -> int:
    """Scalar restatement of ``stable_hash64``'s definition (plain Python integers)."""
    mask = (1 << 64) - 1
    gamma = 0x9E3779B97F4A7C15

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    data = text.encode()
    h = mix((salt + len(data) + gamma) & mask)
    for i in range(0, len(data), 8):
        word = int.from_bytes(data[i : i + 8].ljust(8, b"\0"), "little")
        h = mix(((h ^ word) + gamma) & mask)
    return h


def test_vectorised_hash_matches_its_scalar_definition_on_random_text() -> None:
    rng = np.random.default_rng(5)
    alphabet = list("abcXYZ019_-|é€ ")
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 30))) for _ in range(300)]
    for salt in (0, 12345):
        got = stable_hash64(texts, salt).tolist()
        assert got == [_reference_hash(t, salt) for t in texts]
    assert stable_hash64(pd.Series(texts, dtype="str"), 7).tolist() == stable_hash64(texts, 7).tolist()
    assert len(set(stable_hash64(texts).tolist())) == len(set(texts))


def test_holdout_share_and_row_independence() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    mask = holdout_mask(users, 0.1)
    assert 0.09 < mask.mean() < 0.11
    assert holdout_mask(users[5:9], 0.1).tolist() == mask[5:9].tolist()


USERS = pd.Series(["u1", "user-2", "ü3", ""])
AS_OF = pd.Series(
    pd.to_datetime(
        ["2024-06-01T00:00:00", "2024-06-01T12:30:00", "2023-01-02T00:00:00", "2024-06-01T00:00:00"], utc=True
    )
)
VERSIONS = {"churn": "engage-churn/3", "offers": "engage-offers/2"}


def test_decision_keys_keep_the_values_every_earlier_run_logged() -> None:
    """Draws and ids are part of the decision log's meaning: the same inputs give these values."""
    draws, ids = decision_keys(USERS, AS_OF, VERSIONS, 7)
    assert ids == [
        "38a6dd04e90ef09fb74ed47f",
        "5eddf6d5467bbcb011c74725",
        "f9f2e69cd9967add6393e7d1",
        "a91c7a9b4dedc751c275acac",
    ]
    np.testing.assert_array_equal(
        draws, [0.9790634439012628, 0.27843257182291603, 0.5472528055596388, 0.058717910240797644]
    )


def test_decision_keys_of_a_row_ignore_the_rest_of_the_batch() -> None:
    draws, ids = decision_keys(USERS, AS_OF, VERSIONS, 7)
    one_draw, one_id = decision_keys(USERS.iloc[[2]], AS_OF.iloc[[2]], VERSIONS, 7)
    assert one_id == [ids[2]] and one_draw.tolist() == [draws[2]]
    same_moment, _ = decision_keys(USERS, AS_OF.iloc[0], VERSIONS, 7)  # one as_of for every row
    assert same_moment[0] == draws[0] and same_moment[3] == draws[3]


def test_the_draw_depends_on_user_time_and_seed_and_the_id_on_the_models_too() -> None:
    draws, ids = decision_keys(USERS, AS_OF, VERSIONS, 7)
    other_seed, other_seed_ids = decision_keys(USERS, AS_OF, VERSIONS, 8)
    assert (other_seed != draws).all() and set(other_seed_ids).isdisjoint(ids)
    later, _ = decision_keys(USERS, AS_OF + pd.Timedelta(microseconds=1), VERSIONS, 7)
    assert (later != draws).all()
    new_models, new_ids = decision_keys(USERS, AS_OF, {**VERSIONS, "churn": "engage-churn/4"}, 7)
    np.testing.assert_array_equal(new_models, draws)  # the draw is the user's, whatever the models
    assert set(new_ids).isdisjoint(ids)


def test_draws_are_uniform() -> None:
    users = pd.Series([f"user-{i}" for i in range(20_000)])
    draws, _ = decision_keys(users, pd.Timestamp("2024-06-01", tz="UTC"), VERSIONS, 0)
    counts = np.histogram(draws, bins=10, range=(0, 1))[0]
    assert ((draws >= 0) & (draws < 1)).all()
    assert counts.min() > 1_800 and counts.max() < 2_200


def test_a_nonce_makes_new_ids_and_keeps_the_draws() -> None:
    """The service's per-request nonce: same draws (same answer), different decision ids."""
    draws, ids = decision_keys(USERS, AS_OF, VERSIONS, 7)
    seen = set(ids)
    for nonce in ("a1b2-0", "a1b2-1", "other-0", ""):
        nonce_draws, nonce_ids = decision_keys(USERS, AS_OF, VERSIONS, 7, nonce=nonce)
        np.testing.assert_array_equal(nonce_draws, draws)
        assert seen.isdisjoint(nonce_ids) and len(set(nonce_ids)) == len(USERS)
        seen.update(nonce_ids)
    assert (
        decision_keys(USERS, AS_OF, VERSIONS, 7, nonce="a1b2-0")[1]
        == decision_keys(USERS, AS_OF, VERSIONS, 7, nonce="a1b2-0")[1]
    )
