"""Run -> register -> promote, once for every model: the MLflow record a training run leaves behind.

One tracked run per training: the code version, the config, data fingerprints, metrics, figures and
tables, the model logged as a pyfunc and registered. The new version becomes the ``challenger``; a
model-specific gate (a callable) judges it against the current ``champion`` on the same rows, its
metrics are logged, and the ``champion`` alias moves only when the gate says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from engage import tracking
from engage.config import EngageConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Gate", "Registered", "record_and_promote"]

Gate = Callable[[str], tuple[bool, dict[str, float]]]
"""Given the registered model name: (promote?, gate metrics). Judges the challenger vs the champion."""


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
) -> Registered:
    """Record a training run of ``bundle``, register it as ``model_name``, promote it if ``gate`` says so.

    ``kind`` names the model (run tag ``engage.model``, artifact ``<kind>_model``); ``fingerprints``
    maps a param prefix (``data``, ``table``) to its fingerprint; ``frames`` maps an artifact file
    name to a table; ``method`` is what the pyfunc's ``predict`` calls.
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
        model_uri, version = tracking.log_model(
            bundle,
            name=f"{kind}_model",
            input_example=input_example,
            method=method,
            registered_model_name=model_name,
        )
        promoted = False
        if version is not None:
            tracking.set_alias(model_name, tracking.CHALLENGER, version)
            promoted, gate_metrics = gate(model_name)
            tracking.log_metrics(gate_metrics)
            if promoted:
                tracking.set_alias(model_name, tracking.CHAMPION, version)
            tracking.set_tags({"engage.promoted": str(promoted)})
    return Registered(run_id=run_id, model_uri=model_uri, version=version, promoted=promoted)
