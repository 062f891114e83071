"""The closed loop's DR forecast: it judges the policy with the contact rules it serves with, and its
interval holds the value the next round realizes."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from engage.cli.demo_loop import _direct, _dr_before
from engage.config import EngageConfig
from engage.offers.catalog import catalog_from_dict

CATALOG = catalog_from_dict(
    {
        "messages": [
            {"id": "big", "channel": "email", "template": "t", "cost": 0.0, "value": 1.0, "cooldown_days": 7},
            {
                "id": "small",
                "channel": "email",
                "template": "t",
                "cost": 0.0,
                "value": 1.0,
                "cooldown_days": 0,
            },
        ]
    }
)


class _Outcomes:
    """A stand-in offers model: `big` lifts conversion most for everyone."""

    def outcomes(self, rows: pd.DataFrame) -> pd.DataFrame:
        n = len(rows)
        return pd.DataFrame({"none": [0.1] * n, "big": [0.5] * n, "small": [0.3] * n}, index=rows.index)


def test_the_target_policy_keeps_the_cooldowns_it_serves_with() -> None:
    rows = pd.DataFrame({"user_id": ["u1", "u2"]})
    at = datetime(2024, 7, 1, tzinfo=UTC)
    history = pd.DataFrame(
        {
            "user_id": ["u1"],
            "ts": [datetime(2024, 6, 28, tzinfo=UTC)],
            "message_id": ["big"],
            "channel": ["email"],
        }
    )
    cfg = EngageConfig().model_copy(
        update={"policy": EngageConfig().policy.model_copy(update={"exploration": "none"})}
    )
    free, _ = _direct(_Outcomes(), rows, CATALOG, cfg)  # type: ignore[arg-type]
    assert free["big"].tolist() == [1.0, 1.0]  # without contact history: big for both
    ruled, q = _direct(_Outcomes(), rows, CATALOG, cfg, (history, at))  # type: ignore[arg-type]
    assert ruled["big"].tolist() == [0.0, 1.0]  # u1 got big 3 days ago: cooled down
    assert ruled["small"].tolist() == [1.0, 0.0]
    assert q["big"].tolist() == [0.5, 0.5]


def test_the_forecast_interval_holds_the_value_the_next_round_realizes() -> None:
    """A stationary world whose outcome model is exact: a round's realized value is a mean of its
    users' draws around the policy's value. The interval made before the round must hold it about
    95% of the time: with only the estimate's own bootstrap (a large logged round, a small next
    round) it would hold it about two times in three."""
    truth = {"none": 0.1, "big": 0.5, "small": 0.3}
    arms = np.array(list(truth))
    base = EngageConfig()
    held = 0
    trials = 100
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        cfg = base.model_copy(
            update={"seed": trial, "policy": base.policy.model_copy(update={"holdout_pct": 0.0})}
        )
        logged_arm = rng.choice(arms, 2_000)  # a uniformly randomized round
        previous = pd.DataFrame(
            {
                "user_id": [f"p{i}" for i in range(len(logged_arm))],
                "arm": logged_arm,
                "converted": rng.random(len(logged_arm)) < pd.Series(logged_arm).map(truth).to_numpy(),
                "propensity": 1 / 3,
            }
        )
        current = pd.DataFrame({"user_id": [f"c{i}" for i in range(200)]})
        forecast = _dr_before(_Outcomes(), previous, CATALOG, cfg, current)  # type: ignore[arg-type]
        target, _ = _direct(_Outcomes(), current, CATALOG, cfg)  # type: ignore[arg-type]
        probs = target[list(arms)].to_numpy()
        served = np.array([rng.choice(arms, p=row / row.sum()) for row in probs])
        realized = (rng.random(len(served)) < pd.Series(served).map(truth).to_numpy()).mean()
        held += forecast["dr_ci_low"] <= realized <= forecast["dr_ci_high"]
    assert held / trials >= 0.85, f"the interval held the realized value in {held} of {trials} rounds"
