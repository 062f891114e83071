"""Learning from the served log: the decision log becomes a campaign log for the one offers fit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest

from engage import schemas
from engage.config import load_config
from engage.offers.training import HOLDOUT, decision_exposures, fit_offers, generic_catalog

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def _events(rows: list[tuple[str, datetime, str, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            schemas.USER_ID: [r[0] for r in rows],
            schemas.TS: [r[1] for r in rows],
            schemas.EVENT_TYPE: [r[2] for r in rows],
            "amount": [r[3] for r in rows],
        },
        schema_overrides={schemas.TS: pl.Datetime("us", "UTC")},
    )


def _log() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "decision_id": ["a", "b", "c", "d"],
            "decided_at": [T0.isoformat()] * 4,
            "user_id": ["u1", "u2", "u3", "u4"],
            "message_id": ["cart_coupon", "none", "winback_offer", "newsletter"],
            "channel": ["email", "none", "email", "email"],
            "propensity": [0.9, 0.8, 1.0, 0.02],
            "holdout": [False, False, True, None],
        }
    )


def test_holdout_rows_become_control_and_outcomes_follow_the_decision() -> None:
    cfg = load_config()
    events = _events(
        [
            ("u1", T0 + timedelta(hours=5), "purchase", 20.0),  # inside the window: converted
            ("u2", T0 - timedelta(hours=1), "purchase", 9.0),  # before the decision: not counted
            ("u3", T0 + timedelta(days=2), "purchase", 15.0),  # a holdout user who bought anyway
            ("u4", T0 + timedelta(days=cfg.offers.attribution_days, hours=1), "purchase", 5.0),  # too late
        ]
    )
    table = decision_exposures(_log(), events, cfg)
    assert table[schemas.MESSAGE_ID].to_list() == ["cart_coupon", "none", "none", "newsletter"]
    assert table[schemas.CHANNEL].to_list() == ["email", "none", "none", "email"]
    assert table[HOLDOUT].to_list() == [False, False, True, False]
    assert table[schemas.CONVERTED].to_list() == [True, False, True, False]
    assert table[schemas.REVENUE].to_list() == [20.0, 0.0, 15.0, 0.0]
    assert table[schemas.PROPENSITY].to_list() == [0.9, 0.8, 1.0, 0.02]
    assert (table[schemas.TS] == T0).all()


def test_a_log_without_usable_propensities_is_refused() -> None:
    cfg = load_config()
    events = _events([("u1", T0 + timedelta(hours=1), "page_view", None)])
    with pytest.raises(ValueError, match=r"row 2 \(user u2\) has propensity"):
        decision_exposures(_log().assign(propensity=[0.5, 0.0, 1.0, 0.5]), events, cfg)
    with pytest.raises(KeyError, match="propensity"):
        decision_exposures(_log().drop(columns="propensity"), events, cfg)


def test_holdout_rows_are_fit_but_never_judged_on() -> None:
    """A holdout row's 1.0 is no probability of the policy: the fit keeps it, OPE leaves it out."""
    cfg = load_config(overrides={"offers.n_estimators": 20})
    catalog = generic_catalog(["none", "a", "b"], schemas.CONTROL_ARM)
    rng = np.random.default_rng(0)
    n = 3_000
    arms = np.array([schemas.CONTROL_ARM, *(m.id for m in catalog.messages)])
    arm = rng.choice(arms, n)
    held = rng.random(n) < 0.1
    arm[held] = schemas.CONTROL_ARM
    x = rng.random(n)
    dates = np.where(rng.random(n) < 0.5, T0, T0 + timedelta(days=14))
    table = pd.DataFrame(
        {
            schemas.USER_ID: [f"u{i}" for i in range(n)],
            schemas.AS_OF: pd.to_datetime(dates, utc=True),
            "arm": arm,
            schemas.PROPENSITY: np.where(held, 1.0, 1.0 / len(arms)),
            schemas.CONVERTED: rng.random(n) < 0.1 + 0.2 * x * (arm == "a"),
            HOLDOUT: held,
            "x": x,
        }
    )
    fit = fit_offers(table, cfg, catalog, n_boot=5, min_split_dates=2)
    assert not fit.test[HOLDOUT].any()
    assert (fit.test[schemas.AS_OF] == pd.Timestamp(T0 + timedelta(days=14))).all()  # later ones held out
    assert fit.bundle.feature_names == ["x"]  # the flag is no feature
    assert fit.metrics["rows_train"] == (table[schemas.AS_OF] == pd.Timestamp(T0)).sum()
