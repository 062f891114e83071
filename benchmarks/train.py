"""Churn training time and reason-code throughput, side by side with bare predict_proba.

    .venv/bin/python benchmarks/train.py [--rows 1000000] [--extra-features 30] [--score-rows 50000]

Data: synthetic (seeded) snapshots with the standard feature set of ``engage.features.spec`` (names,
descriptions, units) padded with extra count features to ~100 columns, and a known churn signal
(recency, session trend, engagement). ``--rows`` is the number of rows the model is fitted on
(train + calibration snapshots); one more snapshot of the same size is the out-of-time test.

Prints: fit seconds (target <= 120 s for 1M rows on 2 cores) with the ChurnModelConfig defaults,
then rows/s of bare predict_proba, pred_contrib, explain alone and full reasons (contributions +
plain-word texts) on the same test rows, with ratios to predict_proba.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from engage.config import ChurnModelConfig, FeatureConfig
from engage.evaluation.classification import classification_metrics
from engage.explain import ReasonExplainer
from engage.features.spec import feature_defs
from engage.models.churn import ChurnModel, out_of_time_split

SNAPSHOTS = 5  # 3 train + 1 calibration + 1 out-of-time test


def synthetic(
    fit_rows: int, extra_features: int, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """A stacked snapshot table with the standard feature names and a known churn signal."""
    rng = np.random.default_rng(seed)
    per = fit_rows // (SNAPSHOTS - 1)
    n = per * SNAPSHOTS
    defs = feature_defs(FeatureConfig())
    descriptions = {d.name: d.description for d in defs}
    units = {d.name: d.unit for d in defs if d.unit}
    engagement = rng.gamma(2.0, 1.0, n).astype(np.float32)  # latent activity level per row
    trend = rng.normal(0, 0.6, n).astype(np.float32)  # log session-rate change, recent vs before
    recency = rng.exponential(6.0 / (0.3 + engagement)).astype(np.float32)
    cols: dict[str, np.ndarray] = {}
    for d in defs:
        window = next((int(p[:-1]) for p in d.name.split("_") if p.endswith("d") and p[:-1].isdigit()), 28)
        if d.name.startswith("days_since_last_"):
            noise = rng.exponential(3.0, n).astype(np.float32)
            values = recency + (0 if d.name == "days_since_last_event" else noise)
            never = rng.random(n) < (0.0 if d.name == "days_since_last_event" else 0.15)
            cols[d.name] = np.where(never, np.nan, values).astype(np.float32)
        elif d.kind == "ratio":
            cols[d.name] = np.exp(trend + rng.normal(0, 0.3, n)).astype(np.float32)
        elif d.kind == "category":
            cols[d.name] = rng.choice(np.array(["books", "toys", "garden", "fashion", "tech"]), n)
        elif d.kind == "rate":
            cols[d.name] = rng.beta(2, 3, n).astype(np.float32)
        elif d.kind == "amount":
            cols[d.name] = (rng.gamma(2, 15, n) * (engagement > 0.5)).astype(np.float32)
        else:
            cols[d.name] = rng.poisson(engagement * window / 14).astype(np.float32)
    for i in range(extra_features):
        descriptions[f"extra_{i:02d}_count_28d"] = f"Extra events of kind {i} in the last 28 days"
        cols[f"extra_{i:02d}_count_28d"] = rng.poisson(engagement * (0.5 + i % 5)).astype(np.float32)
    cols["region"] = rng.choice(np.array(["north", "south", "east", "west"]), n)
    cols["plan"] = rng.choice(np.array(["free", "basic", "pro"]), n, p=[0.6, 0.3, 0.1])
    logit = -2.2 + 0.09 * recency - 0.9 * trend - 0.35 * engagement + 0.4 * (cols["plan"] == "free")
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    frame = pd.DataFrame(cols)
    frame.insert(0, "user_id", pd.array([f"u{i % per}" for i in range(n)], dtype="string"))
    dates = np.array([datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=28 * k) for k in range(SNAPSHOTS)])
    frame.insert(1, "as_of", pd.DatetimeIndex(dates[np.arange(n) // per]))
    frame["churned"] = churned
    return frame, descriptions, units


def rows_per_second(fn: Callable[[], object], rows: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs, as rows per second (the machine is shared: best is least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return rows / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows the model is fitted on")
    parser.add_argument("--extra-features", type=int, default=30, help="padding count features")
    parser.add_argument("--score-rows", type=int, default=50_000)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument(
        "--max-depth", type=int, default=None, help="default: ChurnModelConfig; -1 = unlimited"
    )
    parser.add_argument("--num-leaves", type=int, default=None, help="default: ChurnModelConfig")
    args = parser.parse_args()

    started = time.perf_counter()
    table, descriptions, units = synthetic(args.rows, args.extra_features)
    train, calib, test = out_of_time_split(table)
    cols = [c for c in table.columns if c not in ("user_id", "as_of", "churned")]
    print(
        f"data: {len(table):,} rows x {len(cols)} features generated in {time.perf_counter() - started:.1f} s"
    )

    cc = ChurnModelConfig()
    max_depth = cc.max_depth if args.max_depth is None else args.max_depth
    num_leaves = cc.num_leaves if args.num_leaves is None else args.num_leaves
    model = ChurnModel.from_config(cc, seed=0).set_params(
        n_jobs=args.n_jobs, max_depth=max_depth, num_leaves=num_leaves
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    model.fit(train[cols], train["churned"], X_calib=calib[cols], y_calib=calib["churned"])
    fit_s = time.perf_counter() - started
    fit_cpu = time.process_time() - cpu_started  # all threads: the wall time on idle cores is ~cpu/n_jobs
    print(
        f"fit: {len(train) + len(calib):,} rows x {len(cols)} features in {fit_s:.1f} s "
        f"on n_jobs={args.n_jobs}, {fit_cpu:.1f} CPU s (~{fit_cpu / args.n_jobs:.1f} s on idle cores) "
        f"({model.best_iteration_} trees, {num_leaves} leaves, max_depth {max_depth}; "
        f"target <= 120 s for 1M rows; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )
    p_test = model.predict_proba(test[cols])[:, 1]
    m = classification_metrics(test["churned"], p_test)
    print(
        f"quality: oot_auc {m['oot_auc']:.3f}, oot_ece {m['oot_ece']:.4f}, oot_logloss {m['oot_logloss']:.4f}"
    )

    rows = test[cols].head(args.score_rows).reset_index(drop=True)
    n = len(rows)
    explainer = ReasonExplainer(descriptions=descriptions, units=units, top_k=cc.reasons_top_k).fit(
        train[cols].head(100_000), train["churned"].head(100_000)
    )
    contrib = model.contributions(rows)
    proba = rows_per_second(lambda: model.predict_proba(rows), n)
    contrib_rate = rows_per_second(lambda: model.contributions(rows), n, repeat=1)
    explain_rate = rows_per_second(lambda: explainer.explain(contrib, rows), n, repeat=1)
    reasons_rate = rows_per_second(lambda: explainer.explain(model.contributions(rows), rows), n, repeat=1)
    print(f"scoring {n:,} test rows:")
    print(f"  predict_proba          {proba:>12,.0f} rows/s   1.000 x")
    print(
        f"  pred_contrib           {contrib_rate:>12,.0f} rows/s   {contrib_rate / proba:.3f} x predict_proba"
    )
    print(
        f"  explain (texts only)   {explain_rate:>12,.0f} rows/s   {explain_rate / proba:.3f} x predict_proba"
    )
    print(
        f"  reasons (contrib+text) {reasons_rate:>12,.0f} rows/s   {reasons_rate / proba:.3f} x predict_proba"
    )
    need = 100_000 / 60  # batch scoring: reasons for the riskiest 10% of 1M users within 60 s
    verdict = "met" if reasons_rate >= need else "MISSED"
    print(f"  reasons target         {need:>12,.0f} rows/s   (10% of 1M users in 60 s): {verdict}")
    example = explainer.explain(contrib.head(1), rows.head(1))[0]
    print("example reasons: " + " | ".join(r["text"] for r in example))
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
