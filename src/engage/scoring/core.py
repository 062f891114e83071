"""One scoring path for batch jobs and the HTTP service: features -> risk, reasons -> message.

Given a feature table and the loaded models, returns one row per user with the churn probability,
risk band, top reasons, the chosen message with its expected gain and the probability the policy
gave it, the holdout flag, model versions and a decision id. The random draw of exploration is a
pure function of (user, as_of, seed), so the service and a batch run give the same answer for the
same user and date, and a re-run gives the identical file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Required, TypedDict, Unpack

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.config import PolicyConfig, TimingConfig
from engage.hashing import decision_keys
from engage.models.bundle import ChurnBundle, OfferBundle
from engage.models.uplift import expected_gain_matrix
from engage.offers.catalog import Catalog
from engage.offers.policy import (
    channel_allowed,
    draw_arms,
    probability_matrix,
    value_weighted_gains,
    value_weights,
    variant_gains,
)
from engage.offers.templates import render_many
from engage.timing.features import TimingFeatures
from engage.timing.sendtime import TimingModel, decision_times

NO_REASONS: tuple[()] = ()
"""The reasons of a row that was not explained (shared and immutable)."""


@dataclass
class ScoringModels:
    """Everything a decision needs, loaded once (from MLflow or the Bento store)."""

    churn: ChurnBundle
    catalog: Catalog
    offers: OfferBundle | None = None
    versions: dict[str, str] = field(default_factory=dict)
    timing: TimingModel | None = None
    """The send-time and channel model (``engage train timing``); None: no send time, own channels."""


class ScoreOptions(TypedDict, total=False):
    """Keyword options of ``score_features``: the parameters of ``score_columns``."""

    policy: Required[PolicyConfig]
    seed: Required[int]
    history: pd.DataFrame | None
    reasons_top_k: int | None
    explain_rows: np.ndarray | None
    churn_probability: np.ndarray | None
    decision_nonce: str | None
    timing: TimingFeatures | None
    timing_config: TimingConfig | None
    send_from: datetime | None


def score_features(
    features: pd.DataFrame, models: ScoringModels, **options: Unpack[ScoreOptions]
) -> pd.DataFrame:
    """Score a feature table (one row per user and as_of): one row per user, ``SCORE_FIELDS``.

    The options are those of :func:`score_columns`; an empty table gives an empty frame.
    """
    if features.empty:
        return pd.DataFrame(columns=list(s.SCORE_FIELDS))
    return pd.DataFrame(score_columns(features, models, **options), index=pd.RangeIndex(len(features)))


def score_columns(
    features: pd.DataFrame,
    models: ScoringModels,
    *,
    policy: PolicyConfig,
    seed: int,
    history: pd.DataFrame | None = None,
    reasons_top_k: int | None = 3,
    explain_rows: np.ndarray | None = None,
    churn_probability: np.ndarray | None = None,
    decision_nonce: str | None = None,
    timing: TimingFeatures | None = None,
    timing_config: TimingConfig | None = None,
    send_from: datetime | None = None,
) -> dict[str, Any]:
    """Scores of a feature table (at least one row) as columns: ``SCORE_FIELDS`` in order.

    Reasons for ``explain_rows`` (default all); ``reasons_top_k=None`` skips reasons entirely (the
    cheapest path). ``churn_probability``, when the caller already has it (batch jobs rank users by
    it first), saves predicting it twice. ``decision_nonce`` goes into the decision ids
    (``engage.hashing.decision_keys``: the service's per request, a batch run's key), never into the
    draws. :func:`score_features` makes these columns a frame; the HTTP service reads its few rows
    straight from them.

    ``intended_message_id`` is the message the policy picks without the holdout: for a holdout row
    the message it would have sent (the same draw over the probabilities it would have had), for
    every other row its ``message_id``; lift per message compares the two groups on it.

    Channels: a message with variants goes on its best allowed channel (``policy.variant_gains``;
    with ``timing`` and ``models.timing``, scaled by the user's channel responsiveness). Send time:
    with ``timing`` (the users' timing features, rows aligned) and ``models.timing``, ``send_at`` is
    the best (or explored) hour of the window in the user's zone outside the channel's quiet hours,
    ``send_propensity`` its probability and ``propensity`` that of the (message, send time) pair.
    The window starts at ``send_from`` (the service: the request's decision time, later than its
    snapshot's ``as_of``), else at the features' latest ``as_of``.
    """
    features = features.reset_index(drop=True)
    if not _is_utc(features[s.AS_OF]):
        features[s.AS_OF] = pd.to_datetime(features[s.AS_OF], utc=True)  # naive stamps (e.g. Spark) are UTC
    as_of = features[s.AS_OF]
    features = models.churn.with_inputs(features)  # BTYD inputs once, for risk and reasons
    probability = (
        models.churn.churn_probability(features)
        if churn_probability is None
        else np.asarray(churn_probability, dtype=float)
    )
    if len(probability) != len(features):
        raise ValueError(f"churn_probability has {len(probability)} rows but features have {len(features)}")
    user_ids = features[s.USER_ID].astype(str)
    out: dict[str, Any] = {  # one DataFrame built at the end: no per-column inserts
        s.USER_ID: user_ids,
        s.AS_OF: as_of,
        "churn_probability": probability,
        "risk_band": models.churn.bands(probability),
        "reasons": _reasons(features, models, reasons_top_k, explain_rows),
    }
    catalog = models.catalog
    decision_time = pd.Timestamp(as_of.max()).to_pydatetime()
    arm_gains, modelled = (  # NaN for arms the offers model lacks
        models.offers.gain_matrix(features, catalog)
        if models.offers is not None
        else expected_gain_matrix(np.zeros((len(features), 1)), [s.CONTROL_ARM], catalog)
    )
    value = _value_columns(features, models.churn)
    if policy.value_weighting:
        reference = getattr(getattr(models.churn, "value", None), "reference_revenue_", float("nan"))
        weights = value_weights(value["predicted_revenue"], reference)
        arm_gains = value_weighted_gains(arm_gains, catalog, weights)
    timed = timing is not None and models.timing is not None
    if timing is not None and not timing.table[s.USER_ID].cast(str).to_list() == user_ids.tolist():
        raise ValueError("timing features: rows must align with the feature table's user_id")
    arm_channel: np.ndarray | None = None
    if timed or any(m.variants for m in catalog.messages):
        scores = models.timing.channel_scores(timing.table) if timed and models.timing and timing else None
        allowed = channel_allowed(
            features, catalog, history=history, as_of=decision_time, users=user_ids.to_numpy()
        )
        arm_gains, arm_channel = variant_gains(arm_gains, catalog, allowed, scores)
    probabilities, holdout = probability_matrix(
        features,
        arm_gains,
        catalog,
        config=policy,
        history=history,
        as_of=decision_time,
        users=user_ids.to_numpy(),
    )
    draws, ids = decision_keys(user_ids, as_of, models.versions, seed, nonce=decision_nonce)
    chosen, propensity = draw_arms(probabilities, draws)
    all_arms = np.asarray(catalog.arms, dtype=object)
    arms = all_arms[chosen]
    intended = arms.copy()
    held = np.flatnonzero(holdout)
    if len(held):  # the policy once more for the held-out rows only, without the holdout
        held_users = user_ids.to_numpy()[held]
        held_history = None if history is None else history[history[s.USER_ID].isin(held_users)]
        unheld, _ = probability_matrix(
            features.iloc[held],
            arm_gains[held],
            catalog,
            config=policy.model_copy(update={"holdout_pct": 0.0}),
            history=held_history,
            as_of=decision_time,
            users=held_users,
        )
        intended[held] = all_arms[draw_arms(unheld, draws[held])[0]]
    rows = np.arange(len(arms))
    channel_index = (
        arm_channel[rows, chosen]
        if arm_channel is not None
        else np.array([_channel_index(c) for c in catalog.arm_channels])[chosen]
    )
    out[s.MESSAGE_ID] = arms
    out[s.CHANNEL] = np.where(
        channel_index >= 0, np.asarray(s.CHANNELS, dtype=object)[np.maximum(channel_index, 0)], s.CONTROL_ARM
    )
    out["message_text"] = _texts(catalog, arms, out[s.CHANNEL], features)
    picked = arm_gains[rows, chosen]
    out[s.EXPECTED_GAIN] = np.where(modelled[chosen], picked, 0.0)
    out[s.PROPENSITY] = propensity
    send_start = decision_time if send_from is None else send_from
    out |= _send_columns(timing if timed else None, send_start, timing_config, channel_index, seed)
    if timed:  # the logged propensity is that of the (message, send time) pair
        out[s.PROPENSITY] = propensity * np.where(channel_index >= 0, out[s.SEND_PROPENSITY], 1.0)
    out["holdout"] = np.asarray(holdout, dtype=bool)
    out[s.INTENDED_MESSAGE_ID] = intended
    out["cold_start"] = np.zeros(len(features), dtype=bool)
    versions = dict(models.versions)
    out["model_versions"] = [versions] * len(features)  # one shared dict: to_storable dumps it once
    out["decision_id"] = ids
    out.update(value)
    return {name: out[name] for name in s.SCORE_FIELDS}


def _channel_index(channel: str) -> int:
    return s.CHANNELS.index(channel) if channel in s.CHANNELS else -1


def _texts(catalog: Catalog, arms: np.ndarray, channels: np.ndarray, features: pd.DataFrame) -> np.ndarray:
    """The message texts: each row rendered with the template of the channel it goes on."""
    texts = render_many(catalog, arms, features)
    for m in catalog.messages:
        for v in m.variants:
            rows = np.flatnonzero((arms == m.id) & (channels == v.channel))
            if len(rows) and v.template != m.template:
                variant = replace(
                    m, channel=v.channel, template=v.template, cost=v.cost, html=v.html, variants=()
                )
                texts[rows] = render_many(
                    replace(catalog, messages=(variant,)),
                    arms[rows],
                    features.iloc[rows].reset_index(drop=True),
                )
    return texts


def _send_columns(
    timing: TimingFeatures | None, as_of: Any, config: TimingConfig | None, channels: np.ndarray, seed: int
) -> dict[str, Any]:
    """``send_at``, ``send_propensity``, ``send_reason``: from the timing model, else nulls."""
    n = len(channels)
    if timing is None:
        return {
            s.SEND_AT: pd.Series(pd.NaT, index=range(n), dtype="datetime64[us, UTC]"),
            s.SEND_PROPENSITY: np.full(n, np.nan),
            s.SEND_REASON: np.full(n, None, dtype=object),
        }
    return decision_times(timing, as_of, config or TimingConfig(), channels, seed=seed)


def _value_columns(features: pd.DataFrame, churn: ChurnBundle) -> dict[str, Any]:
    """Predicted purchases, revenue, their horizon and the next order's date (null without a model).

    The value model travels in the churn bundle (``ChurnBundle.value``), so every surface that
    loads the churn model gives the same value from the same feature row.
    """
    from engage.models.value import EXPECTED_NEXT_ORDER_DAYS, PREDICTED_PURCHASES, PREDICTED_REVENUE

    n = len(features)
    value = churn.predicted_value(features)
    if value is None:
        missing = np.full(n, np.nan)
        stamps = pd.Series(pd.NaT, index=range(n), dtype="datetime64[us, UTC]")
        return {
            PREDICTED_PURCHASES: missing,
            PREDICTED_REVENUE: missing,
            "value_horizon_days": pd.array([None] * n, dtype="Int32"),
            "expected_next_order_at": stamps,
        }
    wait = pd.to_timedelta(value[EXPECTED_NEXT_ORDER_DAYS].to_numpy(dtype=float), unit="D")
    horizon = int(getattr(churn, "value").horizon_days)  # noqa: B009 (old pickles lack the field)
    return {
        PREDICTED_PURCHASES: value[PREDICTED_PURCHASES].to_numpy(dtype=float),
        PREDICTED_REVENUE: value[PREDICTED_REVENUE].to_numpy(dtype=float),
        "value_horizon_days": np.full(n, horizon, dtype=np.int32),
        "expected_next_order_at": (features[s.AS_OF] + wait).dt.floor("s").dt.as_unit("us"),
    }


def _is_utc(stamps: pd.Series) -> bool:
    return isinstance(stamps.dtype, pd.DatetimeTZDtype) and str(stamps.dtype.tz) == "UTC"


def _reasons(
    features: pd.DataFrame, models: ScoringModels, top_k: int | None, explain_rows: np.ndarray | None
) -> list[Sequence[dict[str, Any]]]:
    """Top-k reasons per row for ``explain_rows`` (all rows when None); ``()`` elsewhere or when
    top_k is None: one shared empty tuple, since a million fresh empty lists cost seconds of
    garbage-collector scans in a batch run."""
    reasons: list[Sequence[dict[str, Any]]] = [NO_REASONS] * len(features)
    if top_k is None:
        return reasons
    rows = np.arange(len(features)) if explain_rows is None else np.flatnonzero(explain_rows)
    if len(rows):
        explained = models.churn.reasons(
            features if explain_rows is None else features.iloc[rows], top_k=top_k
        )
        for row, items in zip(rows, explained, strict=True):
            reasons[row] = [_plain(item) for item in items]
    return reasons


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
    stored["reasons"] = [json.dumps(r, sort_keys=True) if r else "[]" for r in stored["reasons"]]
    stored["model_versions"] = _dumps_column(stored["model_versions"])
    return stored


def _dumps_column(values: pd.Series) -> list[str]:
    """JSON text per value; each distinct object (model versions: one per chunk) is dumped once."""
    texts: dict[int, str] = {}
    out: list[str] = []
    for value in values.tolist():  # the list keeps every object alive, so an id stays one object
        text = texts.get(id(value))
        if text is None:
            text = texts[id(value)] = json.dumps(value, sort_keys=True)
        out.append(text)
    return out
