"""Batch scoring throughput: embedded (with and without reasons) next to bare predict_proba.

    .venv/bin/python benchmarks/score.py [--users 1000000] [--sim-chunk 100000] [--spark-users 100000]
                                         [--no-timing]

Trains small churn and offer models into a temporary MLflow store, simulates the scored population
in user chunks (distinct seeds, distinct user-id prefixes; each chunk written to Parquet and
dropped, so memory stays bounded), then scores everyone as of one date from a lazy Parquet scan:
no reasons, reasons for the riskiest 10%, reasons for all (``--explain-all``). Prints per-stage
times (features, predict, score = offers + policy + render, write), the scoring stages measured
alone on the same feature matrix, users/s, the ratio to bare ``predict_proba`` on that matrix, the
1-row ``score_features`` time and peak RSS, each next to ``os.getloadavg()`` (the cores are shared),
after a CPU reference that tells a slow machine from slow code (``benchmarks/machine.py``).
With a timing model (fitted on the training world, registered as champion; ``--no-timing`` skips
it) the no-reasons run is repeated with send times: each user's timing features from the same
events, the snapshot's ``timing_*`` columns and ``send_at``, side by side with the run without:
what send times add end to end, and in the stages they touch (timing, plus score and write over the
run without), which the noise of the shared cores in features and predict does not blur.
Targets (1M users, 2 cores): scoring with messages <= 60 s; reasons for the top 10% add <= 60 s;
send times add <= 30 s (issue 17).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np
import pandas as pd
import polars as pl
from machine import describe, load  # a sibling script (benchmarks/ is the script's path[0])

from engage import schemas as s
from engage.config import load_config
from engage.datasets.simulate import simulate
from engage.hashing import decision_keys
from engage.models.uplift import expected_gain
from engage.offers.catalog import load_catalog
from engage.offers.policy import action_probabilities
from engage.offers.templates import render_many
from engage.offers.training import fit_offers, offer_table
from engage.scoring.champions import load_champions
from engage.scoring.core import score_features, to_storable
from engage.scoring.job import exposure_history, score_events
from engage.training.churn import train_churn
from engage.training.offers import train_offers
from engage.training.timing import fit_timing, train_timing


def _rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def simulate_chunks(users: int, chunk: int, days: int, out: Path) -> dict[str, Path]:
    """Simulate ``users`` in chunks (seed 2 + k, ids prefixed ``c<k>-``) into Parquet folders."""
    for name in ("events", "users", "exposures"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, users, chunk)):
        data = simulate(min(chunk, users - start), days, seed=2 + k)
        rename = pl.lit(f"c{k:03d}-") + pl.col(s.USER_ID)
        for name in ("events", "users", "exposures"):
            frame: pl.DataFrame = getattr(data, name)
            frame.with_columns(rename.alias(s.USER_ID)).write_parquet(out / name / f"part-{k:04d}.parquet")
        del data
    return {name: out / name for name in ("events", "users", "exposures")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sim-chunk", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--train-users", type=int, default=20_000)
    parser.add_argument("--explain-all", action="store_true", help="also time reasons for everyone")
    parser.add_argument("--spark-users", type=int, default=0, help="also time --engine spark on this many")
    parser.add_argument("--no-timing", action="store_true", help="skip the run with send times")
    args = parser.parse_args()
    print(describe())  # the machine's speed today, next to the figures below
    root = Path(tempfile.mkdtemp(prefix="engage-bench-"))
    cfg = load_config(
        overrides={
            "tracking.uri": f"sqlite:///{root / 'mlflow.db'}",
            "labels.every_days": 14,
            "labels.min_churned": 200,
            "labels.min_retained": 200,
        }
    )
    small = simulate(args.train_users, 150, seed=1)
    train_churn(small.events, cfg, users=small.users, exposures=small.exposures)
    table = offer_table(small.events, small.exposures, cfg, users=small.users)
    train_offers(fit_offers(table, cfg, load_catalog(cfg.offers.catalog_path), n_boot=20), cfg)
    models = load_champions(cfg)
    timed_models = None
    if not args.no_timing:
        train_timing(fit_timing(small.events, cfg, users=small.users, exposures=small.exposures), cfg)
        timed_models = load_champions(cfg)  # the same churn and offers models, and the timing one
    del small, table

    started = time.perf_counter()
    paths = simulate_chunks(args.users, args.sim_chunk, args.days, root / "data")
    events = pl.scan_parquet(paths["events"] / "*.parquet")
    users = pl.read_parquet(paths["users"] / "*.parquet")
    exposures = pl.read_parquet(paths["exposures"] / "*.parquet")
    n_events = events.select(pl.len()).collect().item()
    print(f"simulated {args.users:,} users, {n_events:,} events in {time.perf_counter() - started:.0f} s")
    print(f"  peak RSS so far {_rss():.2f} GB; {load()}")
    ts_max = events.select(pl.col(s.TS).max()).collect().item()
    as_of = (ts_max - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)

    shares = [("messages, no reasons", None, models), ("reasons for top 10%", 0.1, models)]
    if args.explain_all:
        shares.append(("reasons for all", 1.0, models))
    if timed_models is not None:
        shares.append(("messages + send times", None, timed_models))
    results = {}
    for label, share, scoring_models in shares:
        snapshot = "features.parquet" if scoring_models is not models else "features-timing.parquet"
        summary = score_events(
            events,
            as_of,
            scoring_models,
            cfg,
            root / "scores.parquet",
            users=users,
            exposures=exposures,
            explain_share=share,
            snapshot=root / snapshot if share is None else None,
            decision_log=root / "decisions",
        )
        results[label] = summary
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in summary.stages.items())
        print(
            f"embedded, {label}: {summary.seconds:.1f} s ({summary.users_per_second:,.0f} users/s); "
            f"{stages}; peak RSS {_rss():.2f} GB; {load()}"
        )
    base = results["messages, no reasons"]
    top = results["reasons for top 10%"].seconds - base.seconds
    print(f"reasons for the top 10% add {top:.1f} s")
    if "reasons for all" in results:
        print(
            f"reasons for everyone (--explain) add {results['reasons for all'].seconds - base.seconds:.1f} s"
        )
    if "messages + send times" in results:
        with_times = results["messages + send times"]
        sent = pl.read_parquet(with_times.out).filter(pl.col(s.MESSAGE_ID) != s.CONTROL_ARM)
        # the stages send times touch: their own, and score (send_at per decision) and write (the
        # snapshot's timing columns) over the run without; features and predict are the same work
        # in both runs, so their difference is the machine's noise (shared cores, a cold first run)
        touched = with_times.stages["timing"] + sum(
            with_times.stages[k] - base.stages[k] for k in ("score", "write")
        )
        print(
            f"send times add {with_times.seconds - base.seconds:.1f} s end to end, {touched:.1f} s in the "
            f"stages they touch (timing {with_times.stages['timing']:.1f} s, score "
            f"{with_times.stages['score'] - base.stages['score']:+.1f} s, write "
            f"{with_times.stages['write'] - base.stages['write']:+.1f} s); "
            f"{sent[s.SEND_AT].is_not_null().sum():,} of {sent.height:,} sends timed; target <= 30 s at 1M "
            f"users; {load()}"
        )

    features = pd.read_parquet(root / "features.parquet")
    n = len(features)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        tick = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - tick
        return value

    p = timed("bare churn predict_proba", lambda: models.churn.churn_probability(features))
    gains = timed(
        "offers expected gains", lambda: expected_gain(models.offers.outcomes(features), models.catalog)
    )
    history = exposure_history(exposures, as_of, models.catalog.history_days)
    probs, _ = timed(
        "policy (rules, caps, cooldowns, holdout)",
        lambda: action_probabilities(
            features, gains, models.catalog, config=cfg.policy, history=history, as_of=as_of
        ),
    )
    arms = np.asarray(probs.columns, dtype=object)[probs.to_numpy().argmax(axis=1)]
    timed("render", lambda: render_many(models.catalog, arms, features))
    timed(
        "draws and decision ids (hash)",
        lambda: decision_keys(features[s.USER_ID], features[s.AS_OF], models.versions, cfg.seed),
    )
    scored = timed(
        "score_features total (no reasons)",
        lambda: score_features(
            features,
            models,
            policy=cfg.policy,
            seed=cfg.seed,
            history=history,
            reasons_top_k=None,
            churn_probability=p,
        ),
    )
    timed("to_storable", lambda: to_storable(scored))
    bare = timings["bare churn predict_proba"]
    print(f"stages alone on the same {n:,}-user feature matrix ({load()}):")
    for name, seconds in timings.items():
        print(f"  {name:<42} {seconds:7.2f} s  {n / seconds:>12,.0f} users/s  x{seconds / bare:5.2f} of bare")
    print(f"  embedded end-to-end (no reasons) / bare predict_proba: x{base.seconds / bare:.1f}")

    one = features.iloc[:1].copy()
    h1 = history[history[s.USER_ID] == one[s.USER_ID].iloc[0]]
    runs = []
    for _ in range(30):
        tick = time.perf_counter()
        score_features(one, models, policy=cfg.policy, seed=cfg.seed, history=h1, reasons_top_k=None)
        runs.append(time.perf_counter() - tick)
    print(f"1-row score_features: median {np.median(runs[5:]) * 1e3:.1f} ms ({load()})")

    if args.spark_users:
        from engage.spark import score_spark

        part = root / "spark"
        keep = pl.col(s.USER_ID).is_in(users[s.USER_ID].head(args.spark_users).implode())
        for name, frame in (
            ("events", events.filter(keep).collect()),
            ("users", users.filter(keep)),
            ("exposures", exposures.filter(keep)),
        ):
            part.mkdir(exist_ok=True)
            frame.write_parquet(part / f"{name}.parquet")
        for label, share in (("no reasons", None), ("reasons for top 10%", 0.1)):
            summary = score_spark(
                part / "events.parquet",
                as_of,
                models,
                cfg,
                root / "spark.parquet",
                users=part / "users.parquet",
                exposures=part / "exposures.parquet",
                explain_share=share,
            )
            print(
                f"spark local[2], {summary.users:,} users, {label}: {summary.seconds:.1f} s "
                f"({summary.users_per_second:,.0f} users/s); {load()}"
            )
    print(f"peak RSS: {_rss():.2f} GB")


if __name__ == "__main__":
    main()
