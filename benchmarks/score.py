"""Batch scoring throughput: embedded (with and without reasons) next to bare predict_proba.

    .venv/bin/python benchmarks/score.py [--users 1000000] [--spark]

Simulates users, trains small churn and offer models into a temporary MLflow store, then scores
everyone as of one date three ways: no reasons, reasons for the riskiest 10%, reasons for all; and
times bare ``predict_proba`` on the same feature matrix. Targets (1M users, 2 cores): scoring with
messages <= 60 s; reasons for the top 10% add <= 60 s. Peak memory is printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


from engage.catalog import load_catalog
from engage.config import load_config
from engage.datasets.simulate import simulate, write_simulation
from engage.features import build_features
from engage.scoring_job import load_models, score_events
from engage.train import train_churn
from engage.train_offers import fit_offers, offer_table, train_offers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--train-users", type=int, default=20_000)
    parser.add_argument("--spark", action="store_true", help="also time --engine spark")
    args = parser.parse_args()
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
    models = load_models(cfg)

    started = time.perf_counter()
    data = simulate(args.users, 120, seed=2)
    paths = write_simulation(data, root / "data")
    print(
        f"simulated {args.users:,} users, {data.events.height:,} events "
        f"in {time.perf_counter() - started:.0f} s"
    )
    as_of = (data.events["ts"].max() - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)

    features = build_features(
        data.events, [as_of], config=cfg.features, users=data.users, exposures=data.exposures
    )
    start = time.perf_counter()
    models.churn.churn_probability(features)
    bare = time.perf_counter() - start
    print(
        f"bare predict_proba on {len(features):,} users: {bare:.2f} s ({len(features) / bare:,.0f} users/s)"
    )
    results = {}
    for label, share in (
        ("messages, no reasons", None),
        ("reasons for top 10%", 0.1),
        ("reasons for all", 1.0),
    ):
        summary = score_events(
            data.events,
            as_of,
            models,
            cfg,
            root / "scores.parquet",
            users=data.users,
            exposures=data.exposures,
            explain_share=share,
        )
        results[label] = summary.seconds
        print(f"embedded, {label}: {summary.seconds:.1f} s ({summary.users_per_second:,.0f} users/s)")
    base = results["messages, no reasons"]
    top, everyone = results["reasons for top 10%"] - base, results["reasons for all"] - base
    print(f"reasons for the top 10% add {top:.1f} s; for everyone {everyone:.1f} s")
    if args.spark:
        from engage.batch import score_spark

        summary = score_spark(
            paths["events"],
            as_of,
            models,
            cfg,
            root / "spark.parquet",
            users=paths["users"],
            exposures=paths["exposures"],
            explain_share=0.1,
        )
        print(
            f"spark local[2], reasons for top 10%: {summary.seconds:.1f} s "
            f"({summary.users_per_second:,.0f} users/s)"
        )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
