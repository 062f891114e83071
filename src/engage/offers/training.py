"""Next-best-offer training: campaign logs -> point-in-time table -> uplift model -> policy values.

Two entry points: ``fit_offers`` over ``offer_table`` (exposures joined with features as of each
exposure and outcomes in the attribution window; a served decision log enters the same way through
``decision_exposures``) and ``fit_offers_from_table`` (any randomized campaign table with
precomputed covariates, e.g. Hillstrom). Both split out of time (or by a seeded 50/50 split for a
single-date table), fit a multi-arm uplift model (which serves its per-user ranking only when that
beats every arm's average effect out of fold: ``personalization_gain``), and judge the learned
policy off-policy (IPS, SNIPS, DR with bootstrap CIs) next to the logging policy, `none` for all
and every single arm. With the simulator's truth, the true value of every policy and of the oracle
are computed too.
``policy_dr_value`` re-scores any offers model the way ``fit_offers`` scores the learned one (the
champion gate's measure). The MLflow record and the gate live in ``engage.training.offers``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import EngageConfig
from engage.evaluation.uplift import qini_coefficient, qini_curve, uplift_at_k
from engage.features import build_features
from engage.models.bundle import OfferBundle
from engage.models.uplift import MultiArmUplift, expected_gain
from engage.offers.catalog import Catalog
from engage.offers.evaluation import (
    compare_policies,
    doubly_robust,
    oracle_value,
    single_arm_policy,
    true_value,
    uniform_policy,
)
from engage.offers.outcomes import attach_outcomes, decision_outcomes
from engage.offers.policy import action_probabilities, allowed_arms

__all__ = [
    "ARM",
    "HOLDOUT",
    "REWARD",
    "OfferFit",
    "decision_exposures",
    "evaluate_logged_policy",
    "fit_offers",
    "fit_offers_from_table",
    "generic_catalog",
    "offer_table",
    "personalization_gain",
    "policy_dr_value",
    "policy_rules",
    "reward_matrix",
    "rewards",
    "served_policy",
    "true_values",
]

Progress = Callable[[int, int], None]
REWARD = "reward"
ARM = "arm"
HOLDOUT = "holdout"
"""Rows the logging policy did not choose (the hash holdout): fit as control, left out of OPE."""


def rewards(arms: pd.Series, converted: pd.Series, catalog: Catalog) -> np.ndarray:
    """Net value of each logged decision: conversion value minus the message's cost.

    A conversion under `none` is worth the mean catalog value, so arms compete on lift, not value.
    """
    value = {m.id: m.value for m in catalog.messages}
    cost = {m.id: m.cost for m in catalog.messages}
    base_value = float(np.mean(list(value.values()))) if value else 1.0
    v = arms.map(value).fillna(base_value).to_numpy(dtype=float)
    c = arms.map(cost).fillna(0.0).to_numpy(dtype=float)
    return converted.to_numpy(dtype=float) * v - c


def reward_matrix(probabilities: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Expected reward per arm from outcome probabilities (the DR outcome model)."""
    value = {m.id: m.value for m in catalog.messages}
    cost = {m.id: m.cost for m in catalog.messages}
    base_value = float(np.mean(list(value.values()))) if value else 1.0
    return pd.DataFrame(
        {
            arm: probabilities[arm] * value.get(arm, base_value) - cost.get(arm, 0.0)
            for arm in probabilities.columns
        },
        index=probabilities.index,
    )


def offer_table(
    events: pl.DataFrame,
    exposures: pl.DataFrame,
    config: EngageConfig,
    *,
    users: pl.DataFrame | None = None,
    history: pl.DataFrame | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Exposures with outcomes and the user's features as of each exposure time (point in time).

    ``history``: the messages users received, for the fatigue features (default: ``exposures``).
    """
    logged = attach_outcomes(exposures, events, attribution_days=config.offers.attribution_days)
    dates = sorted(logged[s.TS].unique().to_list())
    features = build_features(
        events,
        dates,
        config=config.features,
        users=users,
        exposures=exposures if history is None else history,
        progress=progress,
    )
    table = logged.to_pandas().rename(columns={s.TS: s.AS_OF, s.MESSAGE_ID: ARM})
    table[s.AS_OF] = pd.to_datetime(table[s.AS_OF], utc=True)
    features[s.AS_OF] = pd.to_datetime(features[s.AS_OF], utc=True)
    features = features.drop(columns=[c for c in (s.CHANNEL,) if c in features.columns])
    return table.merge(features, on=[s.USER_ID, s.AS_OF], how="left")


def decision_exposures(
    decisions: pd.DataFrame | pl.DataFrame, events: pl.DataFrame, config: EngageConfig
) -> pl.DataFrame:
    """A served decision log as a campaign log, so it trains through ``offer_table`` and ``fit_offers``.

    One row per decision: ``ts`` = ``decided_at``, the arm the user got (``none`` for a holdout row,
    whatever the policy meant to send), its channel, the logged ``propensity``, ``converted`` and
    ``revenue`` from ``decision_outcomes`` (events strictly after the decision, inside
    ``offers.attribution_days``) and ``holdout``. A holdout row's propensity is the 1.0 the log holds:
    the holdout is a hash of the user, not a draw of the policy, so such rows are fit as control
    (each arm's model is weighted to the population) but left out of off-policy evaluation, whose
    rows must carry the probability the policy gave their arm.
    """
    logged = decision_outcomes(decisions, events, window_days=config.offers.attribution_days)
    for column in (s.MESSAGE_ID, s.PROPENSITY):
        if column not in logged.columns:
            raise KeyError(f"decisions: missing column {column!r} (has {', '.join(logged.columns)})")
    held = pl.col(HOLDOUT).cast(pl.Boolean).fill_null(False) if HOLDOUT in logged.columns else pl.lit(False)
    channel = pl.col(s.CHANNEL) if s.CHANNEL in logged.columns else pl.lit(None, dtype=pl.String)
    table = logged.select(
        pl.col(s.USER_ID),
        pl.col("decided_at").alias(s.TS),
        pl.when(held).then(pl.lit(s.CONTROL_ARM)).otherwise(pl.col(s.MESSAGE_ID)).alias(s.MESSAGE_ID),
        pl.when(held).then(pl.lit(s.CONTROL_ARM)).otherwise(channel).alias(s.CHANNEL),
        pl.col(s.PROPENSITY).cast(pl.Float64, strict=False),
        pl.col(s.CONVERTED),
        pl.col(s.REVENUE),
        held.alias(HOLDOUT),
    )
    p = table[s.PROPENSITY]
    bad = (p.is_null() | p.is_nan() | (p <= 0) | (p > 1)).arg_true()
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"decisions: row {row + 1} (user {table[s.USER_ID][row]}) has propensity {p[row]!r}, "
            "not a probability in (0, 1]: the log cannot be re-weighted"
        )
    return table


@dataclass
class OfferFit:
    """What an offers fit produced, before anything is tracked."""

    bundle: OfferBundle
    metrics: dict[str, float]
    values: pd.DataFrame
    qini: dict[str, pd.DataFrame]
    test: pd.DataFrame
    figures: dict[str, Any] = field(default_factory=dict)
    q_hat: pd.DataFrame | None = None
    """The DR outcome model's expected reward per arm on the test rows (re-used by the gate)."""
    catalog: Catalog | None = None


def _split(
    table: pd.DataFrame, *, test_share: float, seed: int, min_dates: int = 3
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Out of time when the rows span `min_dates` dates (the later ones held out), else a seeded split."""
    dates = np.sort(table[s.AS_OF].unique()) if s.AS_OF in table else np.array([])
    if len(dates) >= min_dates:
        cut = dates[int(np.floor(len(dates) * (1 - test_share)))]
        return table[table[s.AS_OF] < cut].copy(), table[table[s.AS_OF] >= cut].copy()
    rng = np.random.default_rng(seed)
    test_rows = np.zeros(len(table), bool)
    for _, idx in table.groupby(ARM).indices.items():  # stratified by arm
        chosen = rng.choice(idx, size=round(len(idx) * test_share), replace=False)
        test_rows[chosen] = True
    return table[~test_rows].copy(), table[test_rows].copy()


def served_policy(
    test: pd.DataFrame, gains: pd.DataFrame, catalog: Catalog, config: EngageConfig, *, greedy: bool = False
) -> pd.DataFrame:
    """The probabilities the serving policy gives held-out rows: no holdout, no contact history.

    ``greedy`` turns exploration off. Every learned policy is judged through this one function.
    """
    policy_cfg = config.policy.model_copy(update={"holdout_pct": 0.0})
    if greedy:
        policy_cfg = policy_cfg.model_copy(update={"exploration": "none"})
    probs, _ = action_probabilities(test, gains, catalog, config=policy_cfg, history=None, as_of=None)
    return probs


def fit_offers(
    table: pd.DataFrame,
    config: EngageConfig,
    catalog: Catalog,
    *,
    feature_cols: Sequence[str] | None = None,
    truth: pd.DataFrame | None = None,
    n_boot: int = 300,
    min_split_dates: int = 3,
) -> OfferFit:
    """Fit the uplift model and judge the learned policy against the alternatives on held-out rows.

    Rows span `min_split_dates` dates or more: the later dates are held out, else a seeded 30%.
    Rows flagged ``holdout`` are fit as control but not judged on (see ``decision_exposures``).
    """
    table = table.reset_index(drop=True)
    table[REWARD] = rewards(table[ARM].astype(str), table[s.CONVERTED], catalog)
    if feature_cols is None:
        skip = {s.USER_ID, s.AS_OF, ARM, s.CHANNEL, s.PROPENSITY, s.CONVERTED, s.REVENUE, REWARD, HOLDOUT}
        feature_cols = [c for c in table.columns if c not in skip and not c.startswith("p_")]
    train, test = _split(table, test_share=0.3, seed=config.seed, min_dates=min_split_dates)
    if HOLDOUT in test:
        test = test[~test[HOLDOUT].astype(bool)]
    oc = config.offers
    model = MultiArmUplift(
        learner=oc.learner,
        control=s.CONTROL_ARM,
        n_estimators=oc.n_estimators,
        learning_rate=oc.learning_rate,
        num_leaves=oc.num_leaves,
        min_child_samples=oc.min_child_samples,
        effect_num_leaves=oc.effect_num_leaves,
        effect_n_estimators=oc.effect_n_estimators,
        effect_learning_rate=oc.effect_learning_rate,
        shrink_folds=oc.shrink_folds,
        random_state=config.seed,
    )
    fit_args = (
        train[list(feature_cols)],
        train[ARM].astype(str),
        train[s.CONVERTED].astype(float),
        train[s.PROPENSITY],
    )
    domain = catalog.eligibility(train) if oc.effect_domain == "eligible" else None
    selection: dict[str, float] = {}
    if oc.personalize == "significant" and oc.shrink_folds >= 2:
        oof = model.fit_oof(*fit_args, domain=domain)
        selection = personalization_gain(train, oof, catalog, config, n_boot=n_boot)
    else:
        model.fit(*fit_args, domain=domain)
    bundle = OfferBundle(model=model, feature_names=list(feature_cols))
    test = test.reset_index(drop=True)
    outcomes = bundle.outcomes(test)  # the model's own per-user uplift: Qini and uplift@30% below
    if selection and not selection["personalized"]:
        model.drop_heterogeneity()
    gains = expected_gain(bundle.outcomes(test), catalog)
    learned = served_policy(test, gains, catalog, config)
    greedy = served_policy(test, gains, catalog, config, greedy=True)
    allowed = policy_rules(test, catalog, config) & (_logging_support(test, catalog) > 0)
    q_hat = reward_matrix(outcomes.reindex(columns=learned.columns).fillna(0.0), catalog)
    targets: dict[str, pd.DataFrame] = {"learned": learned, "learned_greedy": greedy}
    targets["none"] = single_arm_policy(allowed, s.CONTROL_ARM)
    for m in catalog.messages:
        targets[f"only_{m.id}"] = single_arm_policy(allowed, m.id)
    targets["uniform_random"] = uniform_policy(allowed)
    values = compare_policies(
        test[ARM].astype(str),
        test[REWARD].to_numpy(),
        test[s.PROPENSITY].to_numpy(),
        targets,
        q_hat,
        n_boot=n_boot,
        seed=config.seed,
    )
    dr = values[values["estimator"] == "dr"].set_index("policy")["value"]
    singles = dr[[f"only_{m.id}" for m in catalog.messages]]
    metrics = {
        "policy_value_ips": _pick(values, "learned", "ips"),
        "policy_value_snips": _pick(values, "learned", "snips"),
        "policy_value_dr": float(dr["learned"]),
        "policy_value_dr_ci_low": _pick(values, "learned", "dr", "ci_low"),
        "policy_value_dr_ci_high": _pick(values, "learned", "dr", "ci_high"),
        "greedy_policy_value_dr": float(dr["learned_greedy"]),
        "logging_policy_value": float(test[REWARD].mean()),
        "best_single_arm_value": float(singles.max()),
        "none_value": float(dr["none"]),
        "rows_train": float(len(train)),
        "rows_test": float(len(test)),
    } | selection
    best = targets[str(singles.idxmax())].reindex(columns=learned.columns).fillna(0.0)
    # better than sending the best single arm to everyone? one paired DR estimate of the difference
    # on the same rows (DR is linear in the target policy), with its bootstrap CI, for the served
    # policy and for its greedy part
    for name, policy in (("learned", learned), ("greedy", greedy)):
        paired = doubly_robust(
            test[ARM].astype(str),
            test[REWARD].to_numpy(),
            test[s.PROPENSITY].to_numpy(),
            policy.reindex(columns=learned.columns).fillna(0.0) - best,
            q_hat,
            n_boot=max(n_boot, 200),
            seed=config.seed,
        )
        key = f"{name}_minus_best_single_arm_dr"
        metrics |= {
            key: float(paired.value),
            f"{key}_ci_low": float(paired.ci_low),
            f"{key}_ci_high": float(paired.ci_high),
        }
    qini: dict[str, pd.DataFrame] = {}
    for m in catalog.messages:
        rows = test[ARM].isin([m.id, s.CONTROL_ARM]).to_numpy()
        if m.id not in outcomes or rows.sum() < 50 or (test.loc[rows, ARM] == m.id).sum() < 10:
            continue
        uplift = (outcomes[m.id] - outcomes[s.CONTROL_ARM]).to_numpy()[rows]
        treated = (test.loc[rows, ARM] == m.id).to_numpy()
        y = test.loc[rows, s.CONVERTED].to_numpy(dtype=float)
        qini[m.id] = qini_curve(y, treated, uplift)
        metrics[f"qini_{m.id}"] = qini_coefficient(y, treated, uplift)
        metrics[f"uplift_at_30_{m.id}"] = uplift_at_k(y, treated, uplift, k=0.3)
    if truth is not None:
        metrics |= true_values(test, truth, targets, allowed, catalog)
    return OfferFit(
        bundle=bundle, metrics=metrics, values=values, qini=qini, test=test, q_hat=q_hat, catalog=catalog
    )


def personalization_gain(
    train: pd.DataFrame, oof: pd.DataFrame, catalog: Catalog, config: EngageConfig, *, n_boot: int
) -> dict[str, float]:
    """Does personalising pay out of fold? DR of the greedy policy minus the average-effect policy.

    On the training rows (holdout rows left out), with the out-of-fold outcomes of ``fit_oof``: the
    greedy policy on the model's per-user gains against the one that serves every arm at its average
    effect (the best single arm among those allowed, what ``drop_heterogeneity`` serves), as one
    paired doubly robust estimate (DR is linear in the target) with its bootstrap 95% CI. The model
    personalises only when the CI lies above 0; else it falls back to the average effects.
    """
    rows = ~train[HOLDOUT].astype(bool).to_numpy() if HOLDOUT in train else np.ones(len(train), bool)
    part, oof = train[rows].reset_index(drop=True), oof[rows].reset_index(drop=True)
    flat = oof.copy()
    for arm in flat.columns.drop(s.CONTROL_ARM):
        flat[arm] = (oof[s.CONTROL_ARM] + (oof[arm] - oof[s.CONTROL_ARM]).mean()).clip(0.0, 1.0)
    greedy = served_policy(part, expected_gain(oof, catalog), catalog, config, greedy=True)
    average = served_policy(part, expected_gain(flat, catalog), catalog, config, greedy=True)
    est = doubly_robust(
        part[ARM].astype(str),
        rewards(part[ARM].astype(str), part[s.CONVERTED], catalog),
        part[s.PROPENSITY].to_numpy(),
        greedy - average.reindex(columns=greedy.columns).fillna(0.0),
        reward_matrix(oof.reindex(columns=greedy.columns).fillna(0.0), catalog),
        n_boot=max(n_boot, 200),
        seed=config.seed,
    )
    return {
        "personalization_gain_oof": float(est.value),
        "personalization_gain_oof_ci_low": float(est.ci_low),
        "personalization_gain_oof_ci_high": float(est.ci_high),
        "personalized": float(est.ci_low > 0),
    }


def _pick(values: pd.DataFrame, policy: str, estimator: str, column: str = "value") -> float:
    row = values[(values["policy"] == policy) & (values["estimator"] == estimator)]
    return float(row[column].iloc[0])


def policy_rules(test: pd.DataFrame, catalog: Catalog, config: EngageConfig) -> pd.DataFrame:
    """Arms the policy may send per row: eligibility, consent and the contact cap, as for the learned one.

    Every comparison policy (oracle, single arms, uniform) is held to these same rules, so the learned
    policy is never judged against an oracle that may send what it may not.
    """
    cap = min(config.policy.max_per_7d, catalog.max_per_7d)
    rules = allowed_arms(test, catalog, history=None, as_of=None, max_per_7d=cap)
    return rules.reindex(columns=catalog.arms).fillna(False).astype(bool)


def _logging_support(test: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Arms the logging policy could have chosen per row: `none` always, a message when consented."""
    support = {s.CONTROL_ARM: np.ones(len(test))}
    for m in catalog.messages:
        consent = s.consent_column(m.channel)
        if consent in test:
            support[m.id] = pd.to_numeric(test[consent], errors="coerce").fillna(0).to_numpy() > 0
        else:
            support[m.id] = np.ones(len(test), bool)
    return pd.DataFrame(support, index=test.index).astype(float)


def true_values(
    test: pd.DataFrame,
    truth: pd.DataFrame,
    targets: dict[str, pd.DataFrame],
    allowed: pd.DataFrame,
    catalog: Catalog,
) -> dict[str, float]:
    """Policy values from the simulator's true conversion probabilities (no estimation error)."""
    keyed = truth.rename(columns={s.TS: s.AS_OF}).copy()
    keyed[s.AS_OF] = pd.to_datetime(keyed[s.AS_OF], utc=True)
    joined = test[[s.USER_ID, s.AS_OF]].merge(keyed, on=[s.USER_ID, s.AS_OF], how="left")
    arms = list(allowed.columns)
    p = pd.DataFrame({a: joined[f"p_{a}"].to_numpy(dtype=float) for a in arms}, index=test.index)
    true_reward = reward_matrix(p, catalog)
    values = {name: true_value(probs[arms], true_reward) for name, probs in targets.items()}
    singles = [values[f"only_{m.id}"] for m in catalog.messages]
    return {
        "true_policy_value": values["learned"],
        "true_greedy_policy_value": values["learned_greedy"],
        "oracle_policy_value": oracle_value(true_reward, allowed),
        "true_best_single_arm_value": float(max(singles)),
        "true_none_value": values["none"],
        "true_logging_policy_value": float(test[REWARD].mean()),
    }


def policy_dr_value(bundle: OfferBundle, fit: OfferFit, config: EngageConfig) -> float:
    """DR value of the policy ``bundle`` would run, on ``fit``'s held-out rows and outcome model.

    Measured exactly as ``fit_offers`` measures its learned policy (the champion gate's yardstick).
    """
    if fit.q_hat is None or fit.catalog is None:
        raise ValueError("this fit carries no outcome model or catalog to re-score a policy with")
    test = fit.test
    probs = served_policy(test, expected_gain(bundle.outcomes(test), fit.catalog), fit.catalog, config)
    est = doubly_robust(
        test[ARM].astype(str),
        test[REWARD].to_numpy(),
        test[s.PROPENSITY].to_numpy(),
        probs,
        fit.q_hat.reindex(columns=probs.columns).fillna(0.0),
        n_boot=1,
        seed=config.seed,
    )
    return float(est.value)


def generic_catalog(arms: Sequence[str], control: str) -> Catalog:
    """A catalog for a campaign table: every non-control arm is a message worth 1 per conversion, free.

    Policy values are then conversion rates, which is what a campaign table measures.
    """
    from engage.offers.catalog import catalog_from_dict

    return catalog_from_dict(
        {
            "messages": [
                {
                    "id": arm,
                    "channel": "email",
                    "template": arm,
                    "cost": 0.0,
                    "value": 1.0,
                    "cooldown_days": 0,
                }
                for arm in sorted(set(arms))
                if arm != control
            ]
        },
        source="campaign table",
    )


def fit_offers_from_table(
    frame: pd.DataFrame,
    config: EngageConfig,
    *,
    arm_col: str,
    outcome_col: str,
    control: str,
    propensity_col: str | None = None,
    feature_cols: Sequence[str] | None = None,
) -> OfferFit:
    """Train on a randomized campaign table with precomputed covariates (no event log needed)."""
    for col in (arm_col, outcome_col, *(feature_cols or ()), *((propensity_col,) if propensity_col else ())):
        if col not in frame.columns:
            raise KeyError(f"column {col!r} not in the table (columns: {', '.join(frame.columns)})")
    table = frame.copy()
    arms = table[arm_col].astype(str).replace({control: s.CONTROL_ARM})
    reserved = {arm_col, outcome_col, *((propensity_col,) if propensity_col else ())}
    if feature_cols is None:
        feature_cols = [
            c for c in table.columns if c not in reserved | {s.USER_ID, "visit", "conversion", "spend"}
        ]
    share = arms.value_counts(normalize=True)
    table = table[list(feature_cols)].assign(
        **{
            ARM: arms,
            s.CONVERTED: table[outcome_col].astype(float),
            s.PROPENSITY: table[propensity_col] if propensity_col else arms.map(share),
        }
    )
    catalog = generic_catalog(arms.unique(), s.CONTROL_ARM)
    return fit_offers(table, config, catalog, feature_cols=list(feature_cols))


def evaluate_logged_policy(
    logs: pd.DataFrame, target: pd.DataFrame, *, n_boot: int = 500, seed: int = 0
) -> pd.DataFrame:
    """IPS, SNIPS and DR (outcome model: per-arm mean outcome) of a target policy on logged rows."""
    for col in (ARM, "outcome", s.PROPENSITY):
        if col not in logs.columns:
            raise KeyError(f"logs: missing column {col!r} (need arm, outcome, propensity)")
    if len(logs) != len(target):
        raise ValueError(
            f"logs have {len(logs):,} rows but actions have {len(target):,}: one row per decision"
        )
    probs = target.reset_index(drop=True).astype(float)
    sums = probs.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        bad = int(np.flatnonzero(~np.isclose(sums, 1.0, atol=1e-6))[0])
        raise ValueError(f"actions: row {bad + 1} probabilities sum to {sums[bad]:.4f}, not 1")
    logs = logs.reset_index(drop=True)
    arm, reward, prop = (
        logs[ARM].astype(str),
        logs["outcome"].to_numpy(float),
        logs[s.PROPENSITY].to_numpy(float),
    )
    means = logs.groupby(logs[ARM].astype(str))["outcome"].mean()
    q_hat = pd.DataFrame({a: np.full(len(logs), means.get(a, reward.mean())) for a in probs.columns})
    values = compare_policies(arm, reward, prop, {"target": probs}, q_hat, n_boot=n_boot, seed=seed)
    return values.drop(columns="policy")
