"""Timing training run: fit the send-time and channel model, judge it, record it in MLflow, gate it.

The fit is the population prior (hour-of-week profile, open/click rates) and the channels' relative
effects read from the randomized campaign log, all from data before ``as_of``. Two evaluations:

- with the simulator's truth (``truth.parquet`` of a ``simulate.timing`` world), at the last
  campaign day: the true timing gain of each user's predicted best hour against one fixed hour for
  everybody, the population's single best hour and the per-user oracle; and the true channel gain
  of each user's predicted channel (within consent) against the best single channel;
- on any log with purchases (Online Retail II): for each customer who bought before ``as_of`` and
  again after it, whether the next purchase's local hour of the week is among the user's top-3
  predicted hours, against the population's top 3.

The champion gate re-scores the champion's prior on the challenger's rows (top-3 hit rate). A fit
without any activity before ``as_of`` (a history shorter than ``timing.holdout_days``) is the flat
fallback prior, every hour alike: the gate never promotes it (:func:`no_history`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
from numpy.typing import NDArray

from engage import schemas, tracking
from engage.config import EngageConfig, TimingConfig
from engage.timing.features import HOW, TimingFeatures, TimingPrior, activity_hours, timing_features
from engage.timing.sendtime import COUNT_COLUMNS, TimingModel, choose_channels, slot_hours, top_hours
from engage.timing.tuning import tune_profile
from engage.timing.zones import ZONE, local_parts
from engage.training.registry import record_and_promote

__all__ = [
    "TimingFit",
    "TimingTrainingResult",
    "fit_timing",
    "flat_prior",
    "no_history",
    "timing_champion_gate",
    "train_timing",
]

logger = logging.getLogger(__name__)

GAIN_HOURS = tuple(f"gain_h{h:02d}" for h in range(24))


@dataclass
class TimingFit:
    """A fitted timing model, its metrics and the rows the gate re-scores."""

    model: TimingModel
    metrics: dict[str, float]
    as_of: datetime
    counts: NDArray[np.float64]
    """(n, 168) activity counts of the hit-rate rows (the gate's rows)."""
    actual: NDArray[np.int64]
    """Local hour of the week of each hit-rate row's next purchase."""


@dataclass
class TimingTrainingResult:
    run_id: str
    model_uri: str
    version: str | None
    promoted: bool
    fit: TimingFit


def channel_effects(
    exposures: pl.DataFrame | None, events: pl.DataFrame, as_of: datetime, *, active_days: int = 28
) -> dict[str, float]:
    """Each channel's conversion lift over the control in the randomized log before `as_of`, relative
    to the mean lift over channels (1 = average; floor 0.05). Empty without a log with outcomes.

    Only sends to users active in the `active_days` before them count: a lapsed user converts (or
    not) whatever the channel, which would blur the channels' effects on the users who can answer.
    """
    if exposures is None or schemas.CONVERTED not in exposures.columns:
        return {}
    past = exposures.filter(pl.col(schemas.TS) < as_of).select(
        pl.col(schemas.USER_ID).cast(pl.String), schemas.TS, schemas.CHANNEL, schemas.CONVERTED
    )
    seen = (
        activity_hours(events, as_of)
        .rename({schemas.TS: "seen"})
        .with_columns(pl.col("seen").alias(schemas.TS))
        .sort(schemas.TS)
    )
    recent = (
        past.sort(schemas.TS)
        .join_asof(
            seen,
            on=schemas.TS,
            by=schemas.USER_ID,
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,  # both sides are sorted on ts just above
        )
        .filter(pl.col("seen") >= pl.col(schemas.TS) - timedelta(days=active_days))
    )
    rates = recent.group_by(schemas.CHANNEL).agg(
        pl.col(schemas.CONVERTED).cast(pl.Float64).mean().alias("rate"), pl.len().alias("n")
    )
    by = {r[schemas.CHANNEL]: (r["rate"], r["n"]) for r in rates.iter_rows(named=True)}
    if schemas.CONTROL_ARM not in by:
        return {}
    control, n_control = by[schemas.CONTROL_ARM]
    chans = [ch for ch in schemas.CHANNELS if ch in by]
    lift = np.array([by[ch][0] - control for ch in chans])
    se = np.sqrt(
        [by[ch][0] * (1 - by[ch][0]) / by[ch][1] + control * (1 - control) / n_control for ch in chans]
    )
    mean = float(lift.mean())
    if not chans or mean <= 0:
        return {ch: 1.0 for ch in chans}
    return dict(zip(chans, shrunk_effects(lift / mean, se / mean).tolist(), strict=True))


def shrunk_effects(relative: NDArray[np.float64], se: NDArray[np.float64]) -> NDArray[np.float64]:
    """Relative effects shrunk toward 1 by their noise (empirical Bayes, normal-normal; floor 0.05).

    The spread the channels' effects really have is what their observed spread exceeds the noise by;
    a channel's estimate keeps the share of its deviation that this spread makes credible."""
    tau2 = max(float(np.var(relative)) - float(np.mean(se**2)), 0.0)
    keep = tau2 / (tau2 + se**2) if tau2 > 0 else np.zeros_like(relative)
    return np.asarray(np.maximum(1.0 + keep * (relative - 1.0), 0.05))


def _as_of_for(events: pl.DataFrame, truth: pl.DataFrame | None, config: TimingConfig) -> datetime:
    if truth is not None:
        day = truth[schemas.TS].dt.truncate("1d").max()
        assert isinstance(day, datetime)
        return day
    last = events[schemas.TS].max()
    assert isinstance(last, datetime)
    return (last - timedelta(days=config.holdout_days)).replace(minute=0, second=0, microsecond=0)


def fit_timing(
    events: pl.DataFrame,
    config: EngageConfig,
    *,
    users: pl.DataFrame | None = None,
    exposures: pl.DataFrame | None = None,
    truth: pl.DataFrame | None = None,
) -> TimingFit:
    """Fit on everything before ``as_of`` (the last campaign day with `truth`, else the last event
    minus ``timing.holdout_days``) and evaluate after it."""
    tc = config.timing
    as_of = _as_of_for(events, truth, tc)

    def features_at(strength: float, kappa: float) -> TimingFeatures:
        return timing_features(
            events,
            as_of,
            users=users,
            exposures=exposures,
            prior_strength=strength,
            channel_prior_strength=tc.channel_prior_strength,
            min_events_to_infer_zone=tc.min_events_to_infer_zone,
            smoothing_kappa=kappa,
            daytype_weight=tc.daytype_weight,
            same_day_weight=tc.same_day_weight,
            rhythms=tc.rhythms,
            seed=config.seed,
        )

    strength, kappa = tc.prior_strength, tc.smoothing_kappa
    features = features_at(strength, kappa)
    tuned = None
    if tc.tune:
        tuned = tune_profile(
            events,
            as_of,
            features,
            validation_days=tc.validation_days,
            daytype_weight=tc.daytype_weight,
            same_day_weight=tc.same_day_weight,
            rhythms=tc.rhythms,
            seed=config.seed,
        )
    if tuned is not None and (tuned.prior_strength, tuned.smoothing_kappa) != (strength, kappa):
        strength, kappa = tuned.prior_strength, tuned.smoothing_kappa
        features = features_at(strength, kappa)
    model = TimingModel(
        prior=features.prior,
        channel_effect=channel_effects(exposures, events, as_of),
        prior_strength=strength,
        smoothing_kappa=kappa,
        daytype_weight=tc.daytype_weight,
        same_day_weight=tc.same_day_weight,
        metadata={"as_of": as_of.isoformat(), "users": features.table.height},
    )
    zones = features.table.group_by("zone_source").len()
    metrics: dict[str, float] = {
        f"timing_zone_{src}_share": n / features.table.height
        for src, n in zip(zones["zone_source"].to_list(), zones["len"].to_list(), strict=True)
    }
    metrics |= {"timing_prior_strength": strength, "timing_smoothing_kappa": kappa}
    metrics["timing_active_users"] = float((features.counts.sum(axis=1) > 0).sum())
    counts, actual, hits = _hit_rates(events, features, as_of)
    metrics |= hits
    if truth is not None:
        # the channel needs the campaign log (sends, opens per channel): without it, timing only
        metrics |= _truth_values(truth, features, model, users if exposures is not None else None, as_of, tc)
    return TimingFit(model=model, metrics=metrics, as_of=as_of, counts=counts, actual=actual)


def _hit_rates(
    events: pl.DataFrame, features: TimingFeatures, as_of: datetime
) -> tuple[NDArray[np.float64], NDArray[np.int64], dict[str, float]]:
    """Top-3 hit rates of the next purchase's local hour of the week (users who bought before too)."""
    buys = events.filter(pl.col(schemas.EVENT_TYPE) == "purchase").select(
        pl.col(schemas.USER_ID).cast(pl.String), schemas.TS
    )
    before = buys.filter(pl.col(schemas.TS) < as_of).select(schemas.USER_ID).unique()
    nxt = (
        buys.filter(pl.col(schemas.TS) >= as_of)
        .group_by(schemas.USER_ID)
        .agg(pl.col(schemas.TS).min())
        .join(before, on=schemas.USER_ID)
    )
    index = features.table.select(schemas.USER_ID, ZONE).with_row_index("row")
    rows = local_parts(nxt.join(index, on=schemas.USER_ID)).sort("row")
    if rows.height == 0:
        return np.zeros((0, HOW)), np.zeros(0, dtype=np.int64), {}
    idx = rows["row"].to_numpy().astype(np.int64)
    actual = rows["local_how"].to_numpy().astype(np.int64)
    top = top_hours(features.profile[idx], 3)
    # the baseline: the 3 busiest local hours of the week over everybody's activity before as_of
    pop_top = top_hours(features.counts.sum(axis=0)[None, :], 3)[0]
    # and the fitted model without personalization: the top 3 of its population profile
    model_top = top_hours(features.prior.population[None, :], 3)[0]
    user_hit = (top == actual[:, None]).any(axis=1)
    pop_hit = np.isin(actual, pop_top).astype(float)
    return (
        features.counts[idx],
        actual,
        {
            "timing_hit_rate_top3": float(user_hit.mean()),
            "timing_population_hit_rate_top3": float(pop_hit.mean()),
            "timing_population_model_hit_rate_top3": float(np.isin(actual, model_top).mean()),
            "timing_hit_rate_rows": float(idx.size),
            "timing_hit_rate_top3_diff_se": float(
                np.std(user_hit.astype(float) - pop_hit, ddof=1) / np.sqrt(idx.size)
            )
            if idx.size > 1
            else float("nan"),
        },
    )


def _truth_values(
    truth: pl.DataFrame,
    features: TimingFeatures,
    model: TimingModel,
    users: pl.DataFrame | None,
    as_of: datetime,
    tc: TimingConfig,
) -> dict[str, float]:
    """True values of the predicted send hour and channel on the last campaign day (alive users)."""
    missing = [c for c in (*GAIN_HOURS, "alive") if c not in truth.columns]
    if missing:
        raise ValueError(
            f"--truth: missing column(s) {', '.join(missing[:5])} (simulate with simulate.timing)"
        )
    day = truth.filter(pl.col(schemas.TS).dt.truncate("1d") == as_of, pl.col("alive"))
    index = features.table.select(schemas.USER_ID).with_row_index("row")
    day = day.join(index, on=schemas.USER_ID).sort("row")
    rows = day["row"].to_numpy().astype(np.int64)
    gains = day.select(GAIN_HOURS).to_numpy()
    sub = TimingFeatures(
        table=features.table[rows],
        counts=features.counts[rows],
        profile=features.profile[rows],
        prior=features.prior,
    )
    how = slot_hours(sub, as_of, 24)
    chosen = np.take_along_axis(sub.profile, how, axis=1).argmax(axis=1)
    r = np.arange(rows.size)
    out = {
        "timing_true_value": float(gains[r, chosen].mean()),
        "timing_fixed_hour_value": float(gains[:, tc.fixed_hour_utc].mean()),
        "timing_population_best_value": float(gains.mean(axis=0).max()),
        "timing_oracle_value": float(gains.max(axis=1).mean()),
        "timing_eval_rows": float(rows.size),
    }
    gap = out["timing_oracle_value"] - out["timing_fixed_hour_value"]
    out["timing_share_of_oracle_gain"] = (out["timing_true_value"] - out["timing_fixed_hour_value"]) / gap
    if users is not None:
        out |= _channel_values(day, users, sub, model)
    return out


def _channel_values(
    day: pl.DataFrame, users: pl.DataFrame, sub: TimingFeatures, model: TimingModel
) -> dict[str, float]:
    """True channel gain of the predicted channel vs the best single channel (both within consent)."""
    consent_cols = [schemas.consent_column(ch) for ch in schemas.CHANNELS]
    if any(c not in users.columns for c in consent_cols):
        return {}
    joined = day.select(schemas.USER_ID).join(
        users.select(pl.col(schemas.USER_ID).cast(pl.String), *consent_cols), on=schemas.USER_ID, how="left"
    )
    consent = joined.select(pl.col(consent_cols).fill_null(False)).to_numpy().astype(bool)
    gain = day.select([f"gain_{ch}" for ch in schemas.CHANNELS]).to_numpy()
    reach = consent.any(axis=1)
    consent, gain = consent[reach], gain[reach]
    chosen = choose_channels(model.channel_scores(sub.table.filter(pl.Series(reach))), consent)
    r = np.arange(consent.shape[0])
    order = np.argsort(-gain.mean(axis=0))  # the population's true ranking: the single-channel fallback
    singles = []
    for c in range(len(schemas.CHANNELS)):
        rank = np.where(consent, np.argsort(order)[None, :], 99)
        rank[:, c] = np.where(consent[:, c], -1, 99)
        singles.append(gain[r, rank.argmin(axis=1)].mean())
    return {
        "channel_true_value": float(gain[r, chosen].mean()),
        "channel_best_single_value": float(max(singles)),
        "channel_oracle_value": float(np.where(consent, gain, -np.inf).max(axis=1).mean()),
    }


def train_timing(
    fit: TimingFit, config: EngageConfig, *, fingerprint: dict[str, Any] | None = None
) -> TimingTrainingResult:
    """Record a timing fit in MLflow, register it as ``timing.model_name`` and apply the gate."""
    example = pd.DataFrame(
        fit.counts[:5] if fit.counts.shape[0] else np.zeros((1, HOW)), columns=list(COUNT_COLUMNS)
    )
    done = record_and_promote(
        fit.model,
        config,
        kind="timing",
        model_name=config.timing.model_name,
        run_name="timing",
        input_example=example,
        method="expected_engagement",
        metrics=fit.metrics,
        gate=lambda name: timing_champion_gate(name, fit, config),
        fingerprints={"data": fingerprint} if fingerprint else None,
    )
    return TimingTrainingResult(
        run_id=done.run_id, model_uri=done.model_uri, version=done.version, promoted=done.promoted, fit=fit
    )


def _hit_rate(model: TimingModel, fit: TimingFit) -> float:
    profile = model.profile(fit.counts)
    return (
        float((top_hours(profile, 3) == fit.actual[:, None]).any(axis=1).mean()) if fit.actual.size else 0.0
    )


def flat_prior(prior: TimingPrior) -> bool:
    """Whether `prior` is the fallback of a fit without activity: one profile, every hour alike."""
    return prior.profiles.shape[0] == 1 and bool(np.allclose(prior.profiles, prior.profiles[0, 0]))


def no_history(fit: TimingFit, config: EngageConfig) -> str | None:
    """Why `fit` must not be promoted for lack of data (its prior is the flat fallback), or None."""
    if not flat_prior(fit.model.prior):
        return None
    rule = (
        "the last campaign day of --truth"
        if fit.metrics.get("timing_eval_rows") is not None
        else f"the last event minus timing.holdout_days={config.timing.holdout_days}"
    )
    return (
        f"no activity before as_of {fit.as_of:%Y-%m-%d %H:%M} UTC ({rule}): the model is the flat "
        "fallback prior, every hour alike, and is not promoted; give a longer history or a smaller "
        "timing.holdout_days (--set timing.holdout_days=N)"
    )


def timing_champion_gate(
    model_name: str, fit: TimingFit, config: EngageConfig
) -> tuple[bool, dict[str, float]]:
    """Promote when the challenger's top-3 hit rate beats the champion's on the same rows (+ margin);
    never a fit without history (:func:`no_history`), champion or not."""
    challenger = _hit_rate(fit.model, fit)
    base = {"gate_challenger_hit_rate_top3": challenger, "gate_margin": config.timing.promote_margin}
    reason = no_history(fit, config)
    if reason is not None:
        logger.warning("%s: %s", model_name, reason)
        return False, {**base, "gate_promoted": 0.0, "gate_no_history": 1.0}
    if tracking.alias_version(model_name, tracking.CHAMPION) is None:
        return True, {**base, "gate_promoted": 1.0, "gate_no_champion": 1.0}
    try:
        champion_model = tracking.load_estimator(f"models:/{model_name}@{tracking.CHAMPION}")
        if not isinstance(champion_model, TimingModel):
            raise TypeError(f"the {model_name} champion holds a {type(champion_model).__name__}")
        champion = _hit_rate(champion_model, fit)
    except Exception:  # an incompatible champion must not crash training
        return False, {**base, "gate_promoted": 0.0, "gate_champion_failed": 1.0}
    promoted = challenger > champion + config.timing.promote_margin
    return promoted, {**base, "gate_champion_hit_rate_top3": champion, "gate_promoted": float(promoted)}


def utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
