"""The closed loop's DR estimate judges the policy with the contact rules it serves with."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from engage.cli.demo_loop import _direct
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
