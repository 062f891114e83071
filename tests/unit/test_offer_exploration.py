"""Exploration decays as served batches accumulate (``offers.policy.decayed_epsilon``)."""

from __future__ import annotations

import math

import pytest

from engage.config import PolicyConfig
from engage.offers.policy import decayed_epsilon


def test_epsilon_decays_with_served_batches_down_to_its_floor() -> None:
    policy = PolicyConfig(epsilon=0.05, epsilon_decay=0.5, epsilon_min=0.02)
    assert decayed_epsilon(policy, 1) == pytest.approx(0.05)
    assert decayed_epsilon(policy, 2) == pytest.approx(0.05 / math.sqrt(2))
    assert decayed_epsilon(policy, 4) == pytest.approx(0.025)
    assert decayed_epsilon(policy, 100) == pytest.approx(0.02)  # the floor keeps every arm judgeable


def test_no_decay_keeps_epsilon_and_the_floor_never_raises_it() -> None:
    assert decayed_epsilon(PolicyConfig(epsilon=0.05, epsilon_decay=0.0), 7) == pytest.approx(0.05)
    assert decayed_epsilon(PolicyConfig(epsilon=0.01, epsilon_decay=1.0, epsilon_min=0.03), 3) == 0.01
    assert decayed_epsilon(PolicyConfig(epsilon=0.0, epsilon_decay=0.5), 2) == 0.0


def test_batches_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        decayed_epsilon(PolicyConfig(), 0)
