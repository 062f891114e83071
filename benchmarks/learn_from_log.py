"""Learn from the served log vs from randomized campaigns, judged by the simulator's truth.

Run once: ``.venv/bin/python benchmarks/learn_from_log.py [--users N] [--days D] [--resume-days R]``.
Simulates a world with randomized campaigns, trains churn and offers on it (the offers champion;
a second offers fit reads the campaigns' outcomes from the events instead of the simulator's),
scores every user at the world's end (the decision log), resumes the world over those decisions,
trains the offers model again from the log alone (gated against the champion), then prints, on the
same held-out decisions, the true value of each model's policy, of ``none`` and of the oracle, and
each policy's share of the oracle's incremental value over ``none``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import load_config
from engage.datasets.resume import resume
from engage.datasets.simulate import simulate
from engage.models.uplift import expected_gain
from engage.offers.catalog import load_catalog
from engage.offers.evaluation import oracle_value, true_value
from engage.offers.training import (
    decision_exposures,
    fit_offers,
    offer_table,
    policy_rules,
    reward_matrix,
    served_policy,
)
from engage.scoring.champions import load_champions
from engage.scoring.decision_log import read_decisions
from engage.scoring.job import score_events
from engage.training.churn import train_churn
from engage.training.offers import train_offers


def main() -> None:
    """Run the comparison once and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--resume-days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = load_config(overrides={"seed": args.seed, "tracking.uri": f"sqlite:///{root / 'mlflow.db'}"})
        catalog = load_catalog(cfg.offers.catalog_path)
        data = simulate(args.users, args.days, seed=args.seed)
        train_churn(data.events, cfg, users=data.users, exposures=data.exposures)
        table = offer_table(data.events, data.exposures, cfg, users=data.users)
        randomized = fit_offers(table, cfg, catalog, truth=data.truth.to_pandas())
        train_offers(randomized, cfg)
        from_events = fit_offers(
            offer_table(data.events, data.exposures.drop(s.CONVERTED, s.REVENUE), cfg, users=data.users),
            cfg,
            catalog,
        )
        end = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=args.days)
        score_events(
            data.events,
            end,
            load_champions(cfg),
            cfg,
            root / "scores.parquet",
            users=data.users,
            exposures=data.exposures,
            explain_share=0,
            decision_log=root / "decisions",
        )
        log, _ = read_decisions(root / "decisions")
        world, counts = resume(data, log, args.resume_days)
        served = decision_exposures(log, world.events, cfg)
        cols = [s.USER_ID, s.TS, s.MESSAGE_ID, s.CHANNEL]
        history = pl.concat([data.exposures.select(cols), served.select(cols)], how="vertical_relaxed")
        logged = offer_table(world.events, served, cfg, users=data.users, history=history)
        from_log = fit_offers(logged, cfg, catalog, truth=world.truth.to_pandas(), min_split_dates=2)
        result = train_offers(from_log, cfg, run_name="offers-from-decisions")

    test = from_log.test
    keyed = world.truth.filter(pl.col("decision_id").is_not_null()).to_pandas()
    keyed = keyed.rename(columns={s.TS: s.AS_OF})
    joined = test[[s.USER_ID, s.AS_OF]].merge(keyed, on=[s.USER_ID, s.AS_OF], how="left")
    arms = catalog.arms
    truth_p = pd.DataFrame({a: joined[f"p_{a}"].to_numpy(float) for a in arms}, index=test.index)
    true_reward = reward_matrix(truth_p, catalog)
    allowed = policy_rules(test, catalog, cfg)
    none = float(true_reward[s.CONTROL_ARM].mean())
    oracle = oracle_value(true_reward, allowed)
    served_arm = joined["served_arm"].to_numpy()
    realized = float(
        pd.Series([true_reward.at[i, a] for i, a in zip(test.index, served_arm, strict=True)]).mean()
    )
    print(f"users={args.users} days={args.days} resume_days={args.resume_days} seed={args.seed}")
    print(
        f"decisions={counts.answered} treated={counts.treated} control={counts.control} "
        f"rows_train_log={len(logged) - len(test)} rows_test={len(test)} rows_randomized={len(table)}"
    )
    print(f"true value per decision: none={none:.4f} oracle={oracle:.4f} (incremental {oracle - none:+.4f})")
    print(
        f"served (randomized-trained champion, as logged): {realized:.4f} "
        f"share={_share(realized, none, oracle)}"
    )
    for label, fit in (
        ("randomized exposures (the simulator's campaign conversions)", randomized),
        ("randomized exposures (any purchase in the window, from the events)", from_events),
        ("own decision log (any purchase in the window)", from_log),
    ):
        gains = expected_gain(fit.bundle.outcomes(test), catalog)
        for greedy in (False, True):
            value = true_value(served_policy(test, gains, catalog, cfg, greedy=greedy), true_reward)
            mode = "greedy" if greedy else "with exploration"
            print(f"trained on {label} ({mode}): {value:.4f} share={_share(value, none, oracle)}")
    print(
        f"gate: log-trained challenger promoted={result.promoted} metrics="
        + str({k: round(v, 4) for k, v in from_log.metrics.items() if k.startswith("policy_value_dr")})
    )
    print(f"total_s={time.perf_counter() - started:.0f}")


def _share(value: float, none: float, oracle: float) -> str:
    return f"{(value - none) / (oracle - none):.1%}" if oracle > none else "n/a"


if __name__ == "__main__":
    main()
