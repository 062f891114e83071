"""One scoring path for batch jobs and the HTTP service: features -> risk, reasons -> message.

Given a feature table and the loaded models, returns one row per user with the churn probability,
risk band, top reasons, the chosen message with its expected gain and the probability the policy
gave it, the holdout flag, model versions and a decision id. The random draw of exploration is a
pure function of (user, as_of, seed), so the service and a batch run give the same answer for the
same user and date, and a re-run gives the identical file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.catalog import Catalog, render
from engage.config import PolicyConfig
from engage.models.bundle import ChurnBundle, OfferBundle
from engage.policy import action_probabilities

SCORE_FIELDS: tuple[str, ...] = (
    s.USER_ID,
    s.AS_OF,
    "churn_probability",
    "risk_band",
    "reasons",
    s.MESSAGE_ID,
    s.CHANNEL,
    "message_text",
    "expected_uplift",
    s.PROPENSITY,
    "holdout",
    "cold_start",
    "model_versions",
    "decision_id",
)


@dataclass
class ScoringModels:
    """Everything a decision needs, loaded once (from MLflow or the Bento store)."""

    churn: ChurnBundle
    catalog: Catalog
    offers: OfferBundle | None = None
    versions: dict[str, str] = field(default_factory=dict)


def row_uniforms(user_ids: pd.Series, as_of: pd.Series, seed: int) -> np.ndarray:
    """A uniform draw in [0, 1) per row, fixed by (user, as_of, seed): reproducible anywhere."""
    keys = (user_ids.astype(str) + "|" + pd.to_datetime(as_of, utc=True).astype(str) + f"|{seed}").to_numpy()
    out = np.empty(len(keys))
    for i, key in enumerate(keys):
        out[i] = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2.0**64
    return out


def decision_ids(user_ids: pd.Series, as_of: pd.Series, versions: dict[str, str], seed: int) -> list[str]:
    """Stable ids: the same user, date, models and seed give the same decision id."""
    tag = json.dumps(versions, sort_keys=True) + f"|{seed}"
    stamps = pd.to_datetime(as_of, utc=True).astype(str)
    return [
        hashlib.blake2b(f"{u}|{t}|{tag}".encode(), digest_size=12).hexdigest()
        for u, t in zip(user_ids.astype(str), stamps, strict=True)
    ]


def draw(probabilities: pd.DataFrame, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pick one arm per row by inverse CDF; return (arm, its probability)."""
    matrix = probabilities.to_numpy(dtype=float)
    cumulative = np.cumsum(matrix, axis=1)
    cumulative[:, -1] = np.maximum(cumulative[:, -1], 1.0)
    index = (uniforms[:, None] >= cumulative).sum(axis=1)
    index = np.minimum(index, matrix.shape[1] - 1)
    arms = np.asarray(probabilities.columns)[index]
    return arms, matrix[np.arange(len(matrix)), index]


def score_features(
    features: pd.DataFrame,
    models: ScoringModels,
    *,
    policy: PolicyConfig,
    seed: int,
    history: pd.DataFrame | None = None,
    reasons_top_k: int | None = 3,
    explain_rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """Score a feature table (one row per user and as_of). Reasons for ``explain_rows`` (default all).

    ``reasons_top_k=None`` skips reasons entirely (the cheapest path).
    """
    if features.empty:
        return pd.DataFrame(columns=list(SCORE_FIELDS))
    features = features.reset_index(drop=True)
    features[s.AS_OF] = pd.to_datetime(features[s.AS_OF], utc=True)  # naive stamps (e.g. from Spark) are UTC
    as_of = features[s.AS_OF]
    probability = models.churn.churn_probability(features)
    out = pd.DataFrame(
        {
            s.USER_ID: features[s.USER_ID].astype(str),
            s.AS_OF: as_of,
            "churn_probability": probability,
            "risk_band": models.churn.bands(probability),
        }
    )
    reasons: list[list[dict[str, Any]]] = [[] for _ in range(len(features))]
    if reasons_top_k is not None:
        rows = np.arange(len(features)) if explain_rows is None else np.flatnonzero(explain_rows)
        if len(rows):
            explained = models.churn.reasons(features.iloc[rows], top_k=reasons_top_k)
            for row, items in zip(rows, explained, strict=True):
                reasons[row] = [_plain(item) for item in items]
    out["reasons"] = reasons

    decision_time = pd.Timestamp(as_of.max()).to_pydatetime() if len(as_of) else None
    gains = (
        models.offers.expected_gains(features, models.catalog)
        if models.offers is not None
        else pd.DataFrame({s.CONTROL_ARM: np.zeros(len(features))})
    )
    probabilities, holdout = action_probabilities(
        features, gains, models.catalog, config=policy, history=history, as_of=decision_time
    )
    arms, propensity = draw(probabilities, row_uniforms(out[s.USER_ID], as_of, seed))
    out[s.MESSAGE_ID] = arms
    out[s.CHANNEL] = [models.catalog.channel(arm) for arm in arms]
    out["message_text"] = [render(models.catalog, arm, features.iloc[i]) for i, arm in enumerate(arms)]
    gain_matrix = gains.reindex(columns=probabilities.columns, fill_value=0.0).to_numpy(dtype=float)
    chosen = pd.Index(probabilities.columns).get_indexer(arms)
    out["expected_uplift"] = gain_matrix[np.arange(len(arms)), chosen]
    out[s.PROPENSITY] = propensity
    out["holdout"] = np.asarray(holdout, dtype=bool)
    out["cold_start"] = False
    out["model_versions"] = [dict(models.versions)] * len(out)
    out["decision_id"] = decision_ids(out[s.USER_ID], as_of, models.versions, seed)
    return out[list(SCORE_FIELDS)]


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    """Reason dicts with plain Python scalars (JSON- and Parquet-friendly)."""
    clean: dict[str, Any] = {}
    for key, value in item.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not np.isfinite(value):
            value = None
        clean[key] = value
    return clean


def to_storable(scores: pd.DataFrame) -> pd.DataFrame:
    """Nested columns as JSON text, for Parquet files that any reader opens."""
    stored = scores.copy()
    stored["reasons"] = [json.dumps(r, sort_keys=True) for r in stored["reasons"]]
    stored["model_versions"] = [json.dumps(v, sort_keys=True) for v in stored["model_versions"]]
    return stored


def decision_time(as_of: datetime | None, fallback: datetime) -> datetime:
    return as_of if as_of is not None else fallback
