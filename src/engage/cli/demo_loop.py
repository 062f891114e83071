"""``engage demo --rounds K``: the closed loop on a simulated world, judged against its ground truth.

Round 0 is the world's randomized campaigns: churn and offers are trained on them (outcomes read
from the events, as a real team would). Each next round: the value the policy about to serve will
realize is forecast from the previous round's logs and every user's features now (``_dr_before``);
every user is scored (the decision log); the world answers for ``round_days`` days
(``datasets.resume``); outcomes are joined (``decision_outcomes``); the round is measured (realized
value, lift vs holdout) and judged by the truth; the offers model is retrained on the randomized
history plus every served log and gated against the champion. Served round k explores with
``policy.epsilon`` decayed by k (``offers.policy.decayed_epsilon``, recorded as ``epsilon``): the DR
estimate before it, its scoring and the gate that picks its model use that rate.

``DIR/loop.json`` holds one object per round. Two scales, said plainly: ``true_value``,
``oracle_value`` and ``none_value`` are the simulator's expected reward per decision of what the
message itself caused (truth, non-holdout decisions of the round); ``realized_value`` and the DR
estimate read every purchase in the window (organic ones too), so they sit above the truth by the
organic purchase value, the same for every arm. Lift is in conversion rate: treated users (sent a
message) minus holdout users whose intended message was one, vs the truth's mean effect on the
treated (``lift_true``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import EngageConfig
from engage.datasets.resume import resume
from engage.datasets.simulate import SimulatedData, simulate, write_simulation
from engage.features import build_features
from engage.models.bundle import OfferBundle
from engage.models.uplift import expected_gain
from engage.offers.catalog import Catalog, load_catalog
from engage.offers.evaluation import bootstrap_difference, doubly_robust
from engage.offers.outcomes import attach_outcomes
from engage.offers.policy import action_probabilities, allowed_arms, decayed_epsilon
from engage.offers.training import (
    HOLDOUT,
    decision_exposures,
    fit_offers,
    offer_table,
    policy_rules,
    reward_matrix,
    rewards,
    served_policy,
)

__all__ = ["LOOP_KEYS", "run_loop"]

LOOP_KEYS: tuple[str, ...] = (
    "round",
    "true_value",
    "oracle_value",
    "none_value",
    "dr_estimate",
    "dr_ci_low",
    "dr_ci_high",
    "lift_measured",
    "lift_ci_low",
    "lift_ci_high",
    "lift_true",
)
_HISTORY = [s.USER_ID, s.TS, s.MESSAGE_ID, s.CHANNEL]
_N_BOOT = 300


def _say(text: str) -> None:
    from engage.cli.common import console

    console.rule(f"[bold]{text}")


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _true_probabilities(rows: pd.DataFrame, truth: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """The truth's conversion probability per arm for each row (joined on user_id and as_of)."""
    keyed = truth.rename(columns={s.TS: s.AS_OF})
    keyed[s.AS_OF] = pd.to_datetime(keyed[s.AS_OF], utc=True)
    keyed = keyed.drop_duplicates([s.USER_ID, s.AS_OF], keep="last")
    joined = rows[[s.USER_ID, s.AS_OF]].merge(keyed, on=[s.USER_ID, s.AS_OF], how="left")
    return pd.DataFrame({a: joined[f"p_{a}"].to_numpy(float) for a in catalog.arms}, index=rows.index)


def _round_figures(
    rows: pd.DataFrame,
    truth: pd.DataFrame,
    catalog: Catalog,
    cfg: EngageConfig,
    *,
    seed: int,
    history: pd.DataFrame | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """Truth and measurement of one round's decisions (``rows``: features, arm, converted, holdout).

    The oracle is held to the rules the served policy met: eligibility, consent and, with
    ``history`` (messages before ``as_of``), the cooldowns and the contact cap; the oracle that
    ignores contact history is reported too (``oracle_value_no_contact_rules``).
    """
    held = rows[HOLDOUT].astype(bool).to_numpy() if HOLDOUT in rows else np.zeros(len(rows), bool)
    p_conv = _true_probabilities(rows, truth, catalog)
    true_r = reward_matrix(p_conv, catalog)
    arm = rows["arm"].astype(str).to_numpy()
    col = true_r.columns.get_indexer(arm)
    served = true_r.to_numpy()[np.arange(len(rows)), col]
    free = policy_rules(rows, catalog, cfg)
    cap = min(cfg.policy.max_per_7d, catalog.max_per_7d)
    allowed = (
        free
        if history is None or as_of is None
        else allowed_arms(rows, catalog, history=history, as_of=as_of, max_per_7d=cap)
        .reindex(columns=catalog.arms)
        .fillna(False)
        .astype(bool)
        & free
    )
    on = ~held
    best = true_r.where(allowed.astype(bool), -np.inf).max(axis=1).to_numpy()
    best_free = true_r.where(free.astype(bool), -np.inf).max(axis=1).to_numpy()
    treated = on & (arm != s.CONTROL_ARM)
    intended = rows.get(s.INTENDED_MESSAGE_ID, pd.Series([None] * len(rows), index=rows.index))
    control = held & intended.notna().to_numpy() & (intended.astype(str).to_numpy() != s.CONTROL_ARM)
    if not held.any():  # round 0: the randomized control arm is the control group
        control = arm == s.CONTROL_ARM
    y = rows[s.CONVERTED].astype(float).to_numpy()
    lift = bootstrap_difference(y[treated], y[control], n_boot=_N_BOOT, seed=seed)
    effect = p_conv.to_numpy()[np.arange(len(rows)), col] - p_conv[s.CONTROL_ARM].to_numpy()
    realized = rewards(pd.Series(arm[on]), pd.Series(y[on]), catalog)
    value, none, oracle = (
        float(served[on].mean()),
        float(true_r[s.CONTROL_ARM].to_numpy()[on].mean()),
        float(best[on].mean()),
    )
    return {
        "true_value": value,
        "share_of_oracle": (value - none) / (oracle - none) if oracle > none else float("nan"),
        "oracle_value": oracle,
        "oracle_value_no_contact_rules": float(best_free[on].mean()),
        "none_value": none,
        "lift_measured": lift.value,
        "lift_ci_low": lift.ci_low,
        "lift_ci_high": lift.ci_high,
        "lift_true": float(effect[treated].mean()) if treated.any() else float("nan"),
        "realized_value": float(realized.mean()),
        "decisions": len(rows),
        "treated": int(treated.sum()),
        "holdout_control": int(control.sum()),
    }


def _policy_shares(
    bundles: dict[str, OfferBundle],
    rows: pd.DataFrame,
    truth: pd.DataFrame,
    catalog: Catalog,
    cfg: EngageConfig,
    *,
    history: pd.DataFrame | None,
    as_of: datetime,
    figures: dict[str, Any],
) -> dict[str, float]:
    """Share of the oracle's gain each model's greedy policy would have had on the round's rows.

    The truth's value of the policy each bundle runs without exploration, under the same rules the
    served policy met (``history`` before ``as_of``), as ``share_of_oracle`` is: the served model's
    greedy share minus the served share is what exploring cost; a rejected challenger's greedy share
    above the champion's is a better model the gate turned down.
    """
    held = rows[HOLDOUT].astype(bool).to_numpy() if HOLDOUT in rows else np.zeros(len(rows), bool)
    true_r = reward_matrix(_true_probabilities(rows, truth, catalog), catalog)
    none, oracle = figures["none_value"], figures["oracle_value"]
    greedy = cfg.policy.model_copy(update={"holdout_pct": 0.0, "exploration": "none"})
    cap = min(cfg.policy.max_per_7d, catalog.max_per_7d)
    out: dict[str, float] = {}
    for name, bundle in bundles.items():
        gains = expected_gain(bundle.outcomes(rows), catalog)
        probs, _ = action_probabilities(
            rows, gains, catalog, config=greedy, history=history, as_of=as_of, max_per_7d=cap
        )
        value = float((probs[true_r.columns].to_numpy() * true_r.to_numpy()).sum(axis=1)[~held].mean())
        out[f"{name}_greedy_share_of_oracle"] = (value - none) / (oracle - none) if oracle > none else np.nan
    return out


def _direct(
    bundle: OfferBundle,
    rows: pd.DataFrame,
    catalog: Catalog,
    cfg: EngageConfig,
    contacts: tuple[pd.DataFrame | None, datetime] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The serving policy's probabilities on ``rows`` and its outcome model's reward per arm.

    ``contacts`` (the messages before the rows' decision time, and that time): the policy keeps
    the cooldowns and the contact cap it serves with; without, it may send what serving may not.
    """
    outcomes = bundle.outcomes(rows)
    gains = expected_gain(outcomes, catalog)
    if contacts is None:
        target = served_policy(rows, gains, catalog, cfg)
    else:
        policy = cfg.policy.model_copy(update={"holdout_pct": 0.0})
        cap = min(cfg.policy.max_per_7d, catalog.max_per_7d)
        history, moment = contacts
        target, _ = action_probabilities(
            rows, gains, catalog, config=policy, history=history, as_of=moment, max_per_7d=cap
        )
    return target, reward_matrix(outcomes.reindex(columns=target.columns).fillna(0.0), catalog)


def _dr_before(
    bundle: OfferBundle,
    rows: pd.DataFrame,
    catalog: Catalog,
    cfg: EngageConfig,
    current: pd.DataFrame,
    *,
    contacts: tuple[pd.DataFrame | None, datetime] | None = None,
    current_contacts: tuple[pd.DataFrame | None, datetime] | None = None,
) -> dict[str, Any]:
    """The value the policy ``bundle`` runs will realize on the round about to be served, forecast
    before it from the previous round's logged rows (``rows``) and every user's features now
    (``current``, before anything is served).

    The estimate is doubly robust with the direct part on ``current``: mean(sum_a pi q)_now +
    mean(w (r - q_logged))_previous. The population moves between rounds (users lapse, the base rate
    falls); the direct part follows it through the features, the residual corrects the outcome
    model's bias. The 95% interval is for the value the round will *realize*, a mean over its
    users' draws: a bootstrap of both parts plus that mean's own noise, normal with the target
    policy's reward variance (self-normalized importance weights on the logged rows) over the
    round's non-holdout users. The plain DR on the logged rows (what the previous population would
    have realized) is reported as ``dr_logged*``.
    """
    rows = rows[~rows[HOLDOUT].astype(bool)].reset_index(drop=True) if HOLDOUT in rows else rows
    target, q_hat = _direct(bundle, rows, catalog, cfg, contacts)
    arm = rows["arm"].astype(str)
    reward = np.asarray(rewards(arm, rows[s.CONVERTED], catalog), dtype=float)
    propensity = rows[s.PROPENSITY].to_numpy(float)
    est = doubly_robust(arm, reward, propensity, target, q_hat, n_boot=_N_BOOT, seed=cfg.seed)
    out = {"dr_logged": est.value, "dr_logged_ci_low": est.ci_low, "dr_logged_ci_high": est.ci_high}
    col = target.columns.get_indexer(arm.to_numpy())
    logged = np.arange(len(rows)), np.maximum(col, 0)
    weight = np.where(col >= 0, target.to_numpy()[logged] / propensity, 0.0)
    residual = weight * (reward - np.where(col >= 0, q_hat.to_numpy()[logged], 0.0))
    now_target, now_q = _direct(bundle, current.reset_index(drop=True), catalog, cfg, current_contacts)
    direct = (now_target.to_numpy() * now_q[now_target.columns].to_numpy()).sum(axis=1)
    mean = float((weight * reward).sum() / weight.sum())
    spread = float(np.sqrt(max((weight * reward**2).sum() / weight.sum() - mean**2, 0.0)))
    served = max(1, round(len(direct) * (1.0 - cfg.policy.holdout_pct)))
    rng = np.random.default_rng(cfg.seed)
    reps = np.array(
        [
            direct[rng.integers(0, len(direct), len(direct))].mean()
            + residual[rng.integers(0, len(residual), len(residual))].mean()
            + rng.normal(0.0, spread / np.sqrt(served))
            for _ in range(_N_BOOT)
        ]
    )
    low, high = np.quantile(reps, [0.025, 0.975])
    value = float(direct.mean() + residual.mean())
    return out | {"dr_estimate": value, "dr_ci_low": float(low), "dr_ci_high": float(high)}


def _round_config(cfg: EngageConfig, batch: int) -> EngageConfig:
    """The config the policy serves batch ``batch`` with: exploration decayed (``decayed_epsilon``)."""
    policy = cfg.policy.model_copy(update={"epsilon": decayed_epsilon(cfg.policy, batch)})
    return cfg.model_copy(update={"policy": policy})


def _delivered(served: pl.DataFrame) -> pl.DataFrame:
    return served.filter(pl.col(s.MESSAGE_ID) != s.CONTROL_ARM).select(_HISTORY)


def run_loop(out_dir: Path, cfg: EngageConfig, *, rounds: int, round_days: int) -> list[dict[str, Any]]:
    """Run round 0 and `rounds` served rounds; write ``out_dir/loop.json``; return its rounds."""
    from engage.scoring.champions import load_champions
    from engage.scoring.decision_log import read_decisions
    from engage.scoring.job import exposure_history, score_events
    from engage.training.churn import train_churn
    from engage.training.offers import train_offers

    catalog = load_catalog(cfg.offers.catalog_path)
    _say(f"round 0: simulate {cfg.simulate.users:,} users x {cfg.simulate.days} days of randomized campaigns")
    world: SimulatedData = simulate(
        cfg.simulate.users,
        cfg.simulate.days,
        seed=cfg.seed,
        start=cfg.simulate.start,
        campaign_every_days=cfg.simulate.campaign_every_days,
        oracle_horizon_days=cfg.labels.horizon_days,
    )
    assert world.world is not None
    _say("round 0: train churn and offers on the randomized campaigns (outcomes read from the events)")
    train_churn(world.events, cfg, users=world.users, exposures=world.exposures)
    randomized = attach_outcomes(
        world.exposures.drop(s.CONVERTED, s.REVENUE),
        world.events,
        attribution_days=cfg.offers.attribution_days,
    ).with_columns(pl.lit(False).alias(HOLDOUT))
    table0 = offer_table(world.events, randomized, cfg, users=world.users)
    fit = fit_offers(table0, _round_config(cfg, 1), catalog, n_boot=50)  # judged as it will serve
    result = train_offers(fit, _round_config(cfg, 1), run_name="offers-round-0")
    last = table0[table0[s.AS_OF] == table0[s.AS_OF].max()].reset_index(drop=True)
    last_at = pd.Timestamp(last[s.AS_OF].iloc[0]).to_pydatetime()
    before = exposure_history(world.exposures.select(_HISTORY), last_at, catalog.history_days)
    truth0 = world.truth.to_pandas()
    first = {
        "round": 0,
        **_round_figures(last, truth0, catalog, cfg, seed=cfg.seed, history=before, as_of=last_at),
    }
    first |= {"dr_estimate": None, "dr_ci_low": None, "dr_ci_high": None}
    first |= {"offers_version": result.version, "promoted": result.promoted}
    loop = [first]
    previous, served_logs, rejected = last, [], None
    previous_contacts: tuple[pd.DataFrame | None, datetime] = (before, last_at)
    history = world.exposures.select(_HISTORY)
    for r in range(1, rounds + 1):
        state = world.world
        if state is None:
            raise ValueError("the simulated world lost its state")
        as_of = datetime.fromisoformat(state.start).replace(tzinfo=UTC) + timedelta(days=state.day)
        serving = _round_config(cfg, r)
        models = load_champions(cfg)
        if models.offers is None:
            raise ValueError("no offers champion to serve with")
        _say(f"round {r}: DR of the serving policy on round {r - 1}'s logs; score as of {as_of:%Y-%m-%d}")
        current = build_features(
            world.events, [as_of], config=cfg.features, users=world.users, exposures=history
        )
        contacts = exposure_history(history, as_of, catalog.history_days)  # what the policy's rules see
        dr = _dr_before(
            models.offers,
            previous,
            catalog,
            serving,
            current=current,
            contacts=previous_contacts,
            current_contacts=(contacts, as_of),
        )
        log_dir = out_dir / "decisions" / f"round-{r}"
        score_events(
            world.events,
            as_of,
            models,
            serving,
            out_dir / f"scores-round-{r}.parquet",
            users=world.users,
            exposures=history,
            explain_share=0,
            decision_log=log_dir,
        )
        decisions, _ = read_decisions(log_dir)
        _say(f"round {r}: the world answers {len(decisions):,} decisions over {round_days} days")
        world, _counts = resume(world, decisions, round_days)
        assert world.world is not None
        served = decision_exposures(decisions, world.events, cfg)
        served_logs.append(served)
        history = pl.concat([history, _delivered(served)], how="vertical_relaxed")
        rows = offer_table(world.events, served, cfg, users=world.users, history=history)
        if s.INTENDED_MESSAGE_ID in decisions:  # rows keep the log's order
            rows[s.INTENDED_MESSAGE_ID] = decisions[s.INTENDED_MESSAGE_ID].to_numpy()
        truth = world.truth.to_pandas()
        figures = _round_figures(rows, truth, catalog, cfg, seed=cfg.seed + r, history=contacts, as_of=as_of)
        judged = {"champion": models.offers} | ({"rejected_challenger": rejected} if rejected else {})
        figures |= _policy_shares(
            judged, rows, truth, catalog, cfg, history=contacts, as_of=as_of, figures=figures
        )
        _say(f"round {r}: retrain offers on the randomized history and {r} served log(s), then the gate")
        both = pl.concat([randomized.select(served.columns), *served_logs], how="vertical_relaxed")
        table = offer_table(world.events, both, cfg, users=world.users, history=history)
        fit = fit_offers(table, _round_config(cfg, r + 1), catalog, n_boot=50)
        result = train_offers(fit, _round_config(cfg, r + 1), run_name=f"offers-round-{r}")
        rejected = None if result.promoted else fit.bundle
        loop.append(
            {"round": r, **figures, **dr, "epsilon": serving.policy.epsilon}
            | {"offers_version": result.version, "promoted": result.promoted}
        )
        previous, previous_contacts = rows, (contacts, as_of)
        _print_round(loop[-1])
    write_simulation(world, out_dir / "world")
    clean = [{k: (_nan_to_none(v) if isinstance(v, float) else v) for k, v in row.items()} for row in loop]
    path = out_dir / "loop.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=1) + "\n")
    tmp.replace(path)
    return clean


def _print_round(row: dict[str, Any]) -> None:
    from engage.cli.common import out

    share = (row["true_value"] - row["none_value"]) / max(row["oracle_value"] - row["none_value"], 1e-12)
    out.print(
        f"round {row['round']}: true {row['true_value']:.3f} (oracle {row['oracle_value']:.3f}, none "
        f"{row['none_value']:.3f}, {share:.0%} of the oracle's gain); realized {row['realized_value']:.3f}, "
        f"DR before {row['dr_estimate']:.3f} [{row['dr_ci_low']:.3f}, {row['dr_ci_high']:.3f}]; lift "
        f"{row['lift_measured']:+.4f} [{row['lift_ci_low']:+.4f}, {row['lift_ci_high']:+.4f}] vs true "
        f"{row['lift_true']:+.4f}; DR on round {row['round'] - 1}'s population {row['dr_logged']:.3f} "
        f"[{row['dr_logged_ci_low']:.3f}, {row['dr_logged_ci_high']:.3f}]"
    )
