"""Offers training run: an ``OfferFit`` recorded in MLflow, registered, and promoted by the DR gate.

The fit itself is pure (``engage.offers.training``); this module adds the tracked run, the model
registry aliases and the champion gate, which re-scores the champion on the challenger's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engage import tracking
from engage.config import EngageConfig
from engage.models.bundle import OfferBundle
from engage.offers.training import OfferFit, policy_dr_value
from engage.training.registry import record_and_promote

__all__ = ["OfferTrainingResult", "offers_champion_gate", "train_offers"]


@dataclass
class OfferTrainingResult:
    """What a tracked offers training run left behind."""

    run_id: str
    model_uri: str
    version: str | None
    promoted: bool
    fit: OfferFit


def train_offers(
    fit: OfferFit,
    config: EngageConfig,
    *,
    fingerprint: dict[str, Any] | None = None,
    run_name: str = "offers",
    figures: dict[str, Any] | None = None,
) -> OfferTrainingResult:
    """Record an offers fit in MLflow, register it and apply the champion gate on DR policy value."""
    name = config.tracking.offer_model_name
    done = record_and_promote(
        fit.bundle,
        config,
        kind="offers",
        model_name=name,
        run_name=run_name,
        input_example=fit.test[fit.bundle.feature_names].head(5),
        method="predict_outcomes",
        metrics=fit.metrics,
        gate=lambda model_name: offers_champion_gate(model_name, fit, config),
        fingerprints={"data": fingerprint} if fingerprint else None,
        figures=figures,
        frames={"policy_values.csv": fit.values},
    )
    return OfferTrainingResult(
        run_id=done.run_id, model_uri=done.model_uri, version=done.version, promoted=done.promoted, fit=fit
    )


def offers_champion_gate(
    model_name: str, fit: OfferFit, config: EngageConfig
) -> tuple[bool, dict[str, float]]:
    """Promote when the challenger's DR policy value beats the champion's on the same held-out rows.

    The champion is re-scored on this run's test rows with this run's outcome model (the same pattern
    as the churn gate), never compared through the value it logged on other rows. A champion that
    cannot score these rows (features changed) is not replaced automatically.
    """
    margin = config.offers.promote_margin
    challenger = float(fit.metrics["policy_value_dr"])
    base = {"gate_challenger_policy_value_dr": challenger, "gate_margin": margin}
    if tracking.alias_version(model_name, tracking.CHAMPION) is None:
        return True, {**base, "gate_promoted": 1.0, "gate_no_champion": 1.0}
    try:
        champion_bundle = tracking.load_estimator(f"models:/{model_name}@{tracking.CHAMPION}")
        if not isinstance(champion_bundle, OfferBundle):
            raise TypeError(f"the {model_name} champion holds a {type(champion_bundle).__name__}")
        champion = policy_dr_value(champion_bundle, fit, config)
    except Exception:  # an incompatible champion must not crash training
        return False, {**base, "gate_promoted": 0.0, "gate_champion_failed": 1.0}
    promoted = challenger > champion + margin
    return promoted, {**base, "gate_champion_policy_value_dr": champion, "gate_promoted": float(promoted)}
