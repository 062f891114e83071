"""The timing gate never promotes a fit without history: the flat fallback prior, every hour alike."""

from __future__ import annotations

import numpy as np
import pytest

from engage.config import load_config
from engage.datasets.simulate import SimulatedData, simulate
from engage.training.timing import fit_timing, flat_prior, no_history, timing_champion_gate


@pytest.fixture(scope="module")
def short_world() -> SimulatedData:
    return simulate(300, 45, seed=11)


def test_a_history_shorter_than_the_holdout_is_the_flat_prior_and_is_refused(
    short_world: SimulatedData,
) -> None:
    config = load_config()  # timing.holdout_days 90: as_of lies before a 45-day world starts
    fit = fit_timing(short_world.events, config, users=short_world.users)
    assert flat_prior(fit.model.prior)
    assert fit.metrics["timing_active_users"] == 0
    reason = no_history(fit, config)
    assert reason is not None and "timing.holdout_days=90" in reason and "not promoted" in reason
    promoted, metrics = timing_champion_gate(config.timing.model_name, fit, config)
    assert promoted is False
    assert metrics["gate_no_history"] == 1.0 and metrics["gate_promoted"] == 0.0


def test_a_fit_on_activity_is_not_flat(short_world: SimulatedData) -> None:
    config = load_config(overrides={"timing.holdout_days": 10})
    fit = fit_timing(short_world.events, config, users=short_world.users)
    assert fit.metrics["timing_active_users"] > 100
    assert not flat_prior(fit.model.prior)
    assert no_history(fit, config) is None
    assert not np.allclose(fit.model.prior.population, 1.0 / 168)
