"""Offers training run: an ``OfferFit`` recorded in MLflow, registered, and promoted by the DR gate.

The fit itself is pure (``engage.offers.training``); this module adds the tracked run, the model
registry aliases and the champion gate, which re-scores the champion on the challenger's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engage import tracking
from engage.config import EngageConfig
from engage.models.bundle import OfferBundle
from engage.offers.training import OfferFit, policy_dr_value
from engage.training.registry import Dataset, record_and_promote

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["OfferTrainingResult", "offer_figures", "offers_champion_gate", "train_offers"]


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
    """Record an offers fit in MLflow, register it and apply the champion gate on DR policy value.

    The run always carries the Qini curves and the policy values with their intervals as plots
    (``figures`` adds to them or replaces them by name), and the held-out rows as its dataset.
    """
    name = config.tracking.offer_model_name
    plots = {**offer_figures(fit), **(figures or {})}
    digest = (fingerprint or {}).get("sha256")
    source = (fingerprint or {}).get("source")
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
        figures=plots,
        frames={"policy_values.csv": fit.values},
        datasets=[
            Dataset(
                fit.test,
                name="offers_held_out",
                source=str(source) if source else None,
                digest=str(digest) if digest else None,
                context="evaluation",
            )
        ],
    )
    return OfferTrainingResult(
        run_id=done.run_id, model_uri=done.model_uri, version=done.version, promoted=done.promoted, fit=fit
    )


def offer_figures(fit: OfferFit) -> dict[str, Figure]:
    """The plots every offers run logs: Qini curves per arm and the DR policy values (95% CI)."""
    from engage.plots.uplift import policy_values_figure, qini_figure

    figures: dict[str, Figure] = {}
    if fit.qini:
        figures["qini"] = qini_figure(fit.qini)
    if not fit.values.empty and (fit.values["estimator"] == "dr").any():
        figures["policy_values"] = policy_values_figure(fit.values, estimator="dr")
    return figures


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
