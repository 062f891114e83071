"""One user's answer in the API's shape: what the engine decided, as the response models.

A scored row, a cold start, a withheld message and a churn explanation become
:class:`~engage.serving.schemas.UserScore` and :class:`~engage.serving.schemas.ExplainResponse`
with plain values only (numbers finite or None, texts ``str``, timestamps as datetimes). No state,
no clock, no store: :class:`engage.serving.engine.ScoringEngine` decides, this module spells the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.models.bundle import ChurnBundle
from engage.offers.catalog import Catalog
from engage.scoring.core import ScoringModels
from engage.serving.schemas import ChosenMessage, ExplainResponse, Reason, UserScore

__all__ = ["as_list", "cold_explanation", "cold_score", "explanation", "user_score", "withheld"]


def as_list(values: Any) -> list[Any]:
    """A scored column as a list of plain values (numpy arrays and Series through ``tolist``)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def user_score(user_id: str, row: dict[str, Any]) -> UserScore:
    """One scored row as the response model.

    Validated from plain values in one pass of pydantic-core: about three times faster than
    ``model_construct`` of the nested models, which runs Python code per model.
    """
    channel, text = row[s.CHANNEL], row["message_text"]
    return UserScore.model_validate(
        {
            "user_id": user_id,
            "churn_probability": float(row["churn_probability"]),
            "risk_band": str(row["risk_band"]),
            "reasons": [_reason(item) for item in row["reasons"]],
            "message": {
                "message_id": str(row[s.MESSAGE_ID]),
                "channel": None if channel is None or pd.isna(channel) else str(channel),
                "text": None if text is None or pd.isna(text) else str(text),
                "expected_gain": float(row[s.EXPECTED_GAIN]),
                "propensity": float(row[s.PROPENSITY]),
                "holdout": bool(row["holdout"]),
                "intended_message_id": str(row[s.INTENDED_MESSAGE_ID]),
                "send_at": None if pd.isna(row[s.SEND_AT]) else pd.Timestamp(row[s.SEND_AT]),
                "send_propensity": _finite(row[s.SEND_PROPENSITY]),
                "send_reason": row[s.SEND_REASON],
            },
            "feature_as_of": pd.Timestamp(row[s.AS_OF]).to_pydatetime(),
            "model_versions": {str(k): str(v) for k, v in row["model_versions"].items()},
            "decision_id": str(row["decision_id"]),
            "cold_start": bool(row["cold_start"]),
            "quarantined_events": {},
            "predicted_purchases": _finite(row["predicted_purchases"]),
            "predicted_revenue": _finite(row["predicted_revenue"]),
            "value_horizon_days": None
            if pd.isna(row["value_horizon_days"])
            else int(row["value_horizon_days"]),
            "expected_next_order_at": (
                None
                if pd.isna(row["expected_next_order_at"])
                else pd.Timestamp(row["expected_next_order_at"])
            ),
        }
    )


def cold_score(user_id: str, prior: float, models: ScoringModels, decision_id: str) -> UserScore:
    """Population prior and no message (``none``: nothing known to choose on), marked ``cold_start``."""
    arm = s.CONTROL_ARM
    return UserScore(
        user_id=user_id,
        churn_probability=prior,
        risk_band=str(models.churn.bands(np.array([prior]))[0]),
        reasons=[],
        message=ChosenMessage(
            message_id=arm,
            channel=models.catalog.channel(arm),
            text=None,
            expected_gain=0.0,
            propensity=1.0,
            holdout=False,
            intended_message_id=arm,
        ),
        feature_as_of=None,
        model_versions=dict(models.versions),
        decision_id=decision_id,
        cold_start=True,
    )


def withheld(answer: UserScore, reason: str, catalog: Catalog) -> UserScore:
    """The answer with nothing to send: ``none`` (propensity 1), the policy's pick kept as intended."""
    chosen = answer.message
    answer.message = ChosenMessage(
        message_id=s.CONTROL_ARM,
        channel=catalog.channel(s.CONTROL_ARM),
        text=None,
        expected_gain=0.0,
        propensity=1.0,
        holdout=chosen.holdout,
        intended_message_id=chosen.intended_message_id,
        withheld=reason,
    )
    return answer


def cold_explanation(
    user_id: str, prior: float, models: ScoringModels, quarantined: dict[str, int]
) -> ExplainResponse:
    """``/explain`` for a user without features: the population prior and no contributions."""
    return ExplainResponse(
        user_id=user_id,
        churn_probability=prior,
        risk_band=str(models.churn.bands(np.array([prior]))[0]),
        contributions=[],
        feature_as_of=None,
        model_versions=dict(models.versions),
        cold_start=True,
        quarantined_events=quarantined,
    )


def explanation(
    user_id: str,
    row: pd.DataFrame,
    churn: ChurnBundle,
    versions: Mapping[str, str],
    quarantined: dict[str, int],
) -> ExplainResponse:
    """``/explain`` for one feature row (a one-row frame): every feature's contribution, largest push
    on the risk first, with its value and its text."""
    probability = float(churn.churn_probability(row)[0])
    contributions = churn.contributions(row).iloc[0]
    inputs = churn.inputs(row).iloc[0]  # the BTYD columns come from the bundle, not the snapshot
    texts = {r.get("feature"): r.get("text") for r in churn.reasons(row, top_k=None)[0]}
    descriptions = getattr(churn.explainer, "descriptions", None) or {}
    items = [
        Reason(
            feature=name,
            value=_scalar(inputs[name]),
            contribution=float(contributions[name]),
            text=str(texts.get(name) or descriptions.get(name) or name),
        )
        for name in churn.feature_names
        if name in contributions.index
    ]
    items.sort(key=lambda r: r.contribution, reverse=True)
    return ExplainResponse(
        user_id=user_id,
        churn_probability=probability,
        risk_band=str(churn.bands(np.array([probability]))[0]),
        contributions=items,
        feature_as_of=pd.Timestamp(row.iloc[0][s.AS_OF]).to_pydatetime(),
        model_versions=dict(versions),
        cold_start=False,
        quarantined_events=quarantined,
    )


def _reason(item: dict[str, Any]) -> dict[str, Any]:
    """One reason as the fields of :class:`Reason` (plain values: a number, text or None)."""
    value = item.get("value")
    if isinstance(value, bool | int | float | np.number) and not isinstance(value, str):
        value = float(value) if np.isfinite(float(value)) else None
    elif value is not None and not isinstance(value, str):
        value = None if pd.isna(value) else str(value)
    return {
        "feature": str(item.get("feature", "")),
        "value": value,
        "contribution": float(item.get("contribution") or 0.0),
        "text": str(item.get("text") or item.get("feature", "")),
    }


def _finite(value: Any) -> float | None:
    """A number for the answer, None for NaN (no estimate)."""
    number = float(value)
    return number if np.isfinite(number) else None


def _scalar(value: Any) -> float | str | None:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float):
        return float(value) if np.isfinite(float(value)) else None
    return None if pd.isna(value) else str(value)
