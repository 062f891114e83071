"""What a trained churn model ships with: the estimator, its reason explainer and risk bands.

One picklable object so that MLflow, the Bento service and batch scoring load the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from engage.models.frame import column_positions

if TYPE_CHECKING:
    from engage.explain import ReasonExplainer
    from engage.models.uplift import MultiArmUplift
    from engage.models.value import CustomerValue
    from engage.offers.catalog import Catalog

RISK_BAND_NAMES = ("low", "medium", "high", "very_high", "extreme")


class ChurnEstimator(Protocol):
    """What a churn bundle needs of its model: probabilities and per-feature contributions."""

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame: ...


def risk_bands(probability: np.ndarray | pd.Series, thresholds: Sequence[float]) -> np.ndarray:
    """Band names for probabilities: below thresholds[0] is 'low', then 'medium', then 'high'."""
    edges = np.asarray(sorted(thresholds), dtype=float)
    names = np.asarray(RISK_BAND_NAMES[: len(edges) + 1], dtype=object)
    return names[np.searchsorted(edges, np.asarray(probability, dtype=float), side="right")]


def _require_features(frame: pd.DataFrame, names: list[str], model: str) -> None:
    """A ValueError naming (up to 10 of) the model's features the frame lacks."""
    present = set(frame.columns.tolist())  # a set: a request pays 80 Index lookups four times otherwise
    missing = [c for c in names if c not in present]
    if missing:
        raise ValueError(f"features missing for the {model} model: {', '.join(missing[:10])}")


@dataclass
class ChurnBundle:
    """A fitted churn model plus what turns its output into an answer a marketer can read."""

    model: ChurnEstimator
    explainer: ReasonExplainer | None
    feature_names: list[str]
    thresholds: tuple[float, ...] = (0.3, 0.6)
    metadata: dict[str, Any] = field(default_factory=dict)
    value: CustomerValue | None = None
    """The customer-value model fitted with the churn model (None: scores carry no value)."""

    def _features(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame = self.with_inputs(frame)
        return frame.take(column_positions(frame, self.feature_names), axis=1)

    def inputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's input columns for ``frame``, BTYD columns included (what contributions explain)."""
        return self._features(frame)

    def with_inputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame once every feature is there (the model picks its columns by name); a caller
        asking several things of one frame (probability, reasons) computes the BTYD columns once.

        The BTYD columns (``btyd_*``, ``churn.btyd_features``) are not in feature tables: they come
        from the bundle's value model here (NaN without one), as training computed them.
        """
        btyd = [n for n in self.feature_names if n.startswith("btyd_") and n not in frame.columns]
        if btyd:
            value = getattr(self, "value", None)
            columns = value.btyd_features(frame) if value is not None else pd.DataFrame(index=frame.index)
            frame = frame.assign(**{n: columns.get(n, np.nan) for n in btyd})
        _require_features(frame, self.feature_names, "churn")
        return frame

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated (n, 2) probabilities, like scikit-learn."""
        return np.asarray(self.model.predict_proba(self.with_inputs(frame)))

    def churn_probability(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_proba(frame)[:, 1]

    def bands(self, probability: np.ndarray) -> np.ndarray:
        return risk_bands(probability, self.thresholds)

    def reasons(self, frame: pd.DataFrame, top_k: int | None = None) -> list[list[dict[str, Any]]]:
        """Top risk-raising reasons per row, in plain words."""
        features = self._features(frame)
        if self.explainer is None:
            raise ValueError("this churn model carries no reason explainer")
        contributions = self.model.contributions(features)
        reasons = self.explainer.explain(contributions, features)
        return [r[:top_k] for r in reasons] if top_k is not None else reasons

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.model.contributions(self._features(frame))

    def predicted_value(self, frame: pd.DataFrame) -> pd.DataFrame | None:
        """Value columns per row over the value model's horizon, or None without a value model.

        Bundles pickled before the value model existed have no such attribute: they give None.
        """
        value = getattr(self, "value", None)
        return None if value is None else value.predict(frame)


@dataclass
class OfferBundle:
    """A fitted multi-arm uplift model and the feature columns it reads."""

    model: MultiArmUplift
    feature_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def outcomes(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Predicted outcome probability under every arm (one column per arm, control included)."""
        _require_features(frame, self.feature_names, "offers")
        return self.model.predict_outcomes(frame)

    def gain_matrix(self, frame: pd.DataFrame, catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
        """(p(arm) - p(none)) * value - cost as (rows, ``catalog.arms``) floats, NaN for arms the
        model lacks, and the mask of the arms it has (``uplift.expected_gain_matrix``)."""
        from engage.models.uplift import expected_gain_matrix

        _require_features(frame, self.feature_names, "offers")
        return expected_gain_matrix(self.model.outcome_matrix(frame), self.model.arms_, catalog)

    def predict_outcomes(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Alias used by the MLflow pyfunc wrapper."""
        return self.outcomes(frame)
