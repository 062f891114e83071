"""Run -> register -> promote, once for every model: the MLflow record a training run leaves behind.

One tracked run per training: the code version, the config, data fingerprints, metrics, figures and
tables, the training data as an MLflow dataset, the model logged from code (no pickle) and
registered with descriptions and tags (data fingerprint, key metrics). The new version becomes the
``challenger``; a model-specific gate (a callable) judges it against the current ``champion`` on the
same rows, its metrics are logged, and the ``champion`` alias moves only when the gate says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from engage import tracking
from engage.config import EngageConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Dataset", "Gate", "Registered", "record_and_promote"]

DESCRIPTIONS = {
    "churn": (
        "Churn risk from engage: calibrated LightGBM on point-in-time features, with reason codes and "
        "risk bands. predict(features) -> churn probability."
    ),
    "offers": (
        "Next best offer from engage: multi-arm uplift (LightGBM). predict(features) -> the outcome "
        "probability under every arm, one column per arm, control first."
    ),
}
"""The registered model's description, by ``kind``."""
KEY_METRICS = {
    "churn": ("oot_auc", "oot_pr_auc", "oot_brier", "oot_ece"),
    "offers": ("policy_value_dr", "policy_value_dr_ci_low", "policy_value_dr_ci_high"),
}
"""Metrics copied onto a registered version as tags (and into its description), by ``kind``."""

Gate = Callable[[str], tuple[bool, dict[str, float]]]
"""Given the registered model name: (promote?, gate metrics). Judges the challenger vs the champion."""


@dataclass(frozen=True)
class Dataset:
    """A table a run learned from, logged as an MLflow input: name, where it came from, its digest."""

    frame: pd.DataFrame
    name: str
    source: str | None
    """A path or URI the table was read from; None when engage built it (then the code version)."""
    digest: str | None = None
    context: str = "training"


@dataclass(frozen=True)
class Registered:
    """Where a run left its model: run id, model URI, registered version and whether it was promoted."""

    run_id: str
    model_uri: str
    version: str | None
    promoted: bool


def record_and_promote(
    bundle: tracking.Bundle,
    config: EngageConfig,
    *,
    kind: str,
    model_name: str,
    run_name: str,
    input_example: pd.DataFrame,
    metrics: Mapping[str, float],
    gate: Gate,
    method: str = "predict_proba",
    fingerprints: Mapping[str, Mapping[str, Any]] | None = None,
    figures: Mapping[str, Figure] | None = None,
    frames: Mapping[str, pd.DataFrame] | None = None,
    datasets: Sequence[Dataset] = (),
) -> Registered:
    """Record a training run of ``bundle``, register it as ``model_name``, promote it if ``gate`` says so.

    ``kind`` names the model (run tag ``engage.model``, artifact ``<kind>_model``); ``fingerprints``
    maps a param prefix (``data``, ``table``) to its fingerprint; ``frames`` maps an artifact file
    name to a table; ``method`` is what the pyfunc's ``predict`` calls; ``datasets`` are logged as
    the run's inputs.
    """
    tracking.configure(config.tracking.uri)
    with tracking.run(config.tracking.experiment, run_name, tags={"engage.model": kind}) as run_id:
        tracking.set_tags({"engage.code_version": tracking.code_version()})
        tracking.log_config(config)
        for prefix, fingerprint in (fingerprints or {}).items():
            tracking.log_fingerprint(fingerprint, prefix=prefix)
        tracking.log_metrics(metrics)
        if figures:
            tracking.log_figures(figures)
        for artifact_file, frame in (frames or {}).items():
            tracking.log_frame(frame, artifact_file)
        for data in datasets:
            tracking.log_dataset(
                data.frame, name=data.name, source=data.source, digest=data.digest, context=data.context
            )
        model_uri, version = tracking.log_model(
            bundle,
            name=f"{kind}_model",
            input_example=input_example,
            method=method,
            registered_model_name=model_name,
        )
        promoted = False
        if version is not None:
            _describe(model_name, version, kind=kind, run_name=run_name, metrics=metrics, data=fingerprints)
            tracking.set_alias(model_name, tracking.CHALLENGER, version)
            promoted, gate_metrics = gate(model_name)
            tracking.log_metrics(gate_metrics)
            if promoted:
                tracking.set_alias(model_name, tracking.CHAMPION, version)
            tracking.set_tags({"engage.promoted": str(promoted)})
    return Registered(run_id=run_id, model_uri=model_uri, version=version, promoted=promoted)


def _describe(
    model_name: str,
    version: str,
    *,
    kind: str,
    run_name: str,
    metrics: Mapping[str, float],
    data: Mapping[str, Mapping[str, Any]] | None,
) -> None:
    """Description and tags of the registered model and the new version: what, from which data, how good."""
    key = {name: float(metrics[name]) for name in KEY_METRICS.get(kind, ()) if name in metrics}
    fingerprint = dict((data or {}).get("data") or {})
    tags = {"engage.model": kind, "engage.code_version": tracking.code_version()}
    tags |= {f"data.{k}": str(v) for k, v in fingerprint.items()}
    tags |= {f"metric.{k}": f"{v:.6g}" for k, v in key.items()}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in key.items()) or "no key metrics"
    where = f"data sha256 {fingerprint['sha256']}, " if "sha256" in fingerprint else ""
    rows = f"{fingerprint['rows']} rows, " if "rows" in fingerprint else ""
    text = f"{kind} model from run '{run_name}': {where}{rows}{shown}."
    tracking.describe_model(
        model_name,
        version,
        model=DESCRIPTIONS.get(kind, f"engage {kind} model"),
        version_text=text,
        tags=tags,
    )
