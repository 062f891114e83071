"""Churn training time and reason-code throughput, side by side with bare predict_proba.

    .venv/bin/python benchmarks/train.py [--rows 1000000] [--features 100]

Prints: fit seconds for N snapshot rows x F features (target <= 120 s for 1M rows), then rows/s of
bare predict_proba, of pred_contrib, and of full reasons (contributions + plain-word texts), with
the ratios. Data are synthetic (seeded) with a known churn signal.
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from engage.explain import ReasonExplainer
from engage.models.churn import ChurnModel, out_of_time_split


def synthetic(rows: int, n_features: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    snapshots = 5
    per = rows // snapshots
    x = rng.normal(size=(per * snapshots, n_features)).astype(np.float32)
    recency = rng.exponential(15, per * snapshots)
    logit = -2.0 + 0.1 * recency - 0.6 * x[:, 0] + 0.4 * x[:, 1] * x[:, 2]
    y = (rng.random(len(logit)) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(x, columns=[f"f{i:03d}_count_28d" for i in range(n_features)])
    frame["days_since_last_event"] = recency
    frame["user_id"] = [f"u{i % per}" for i in range(len(frame))]
    frame["as_of"] = [
        datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=28 * (i // per)) for i in range(len(frame))
    ]
    frame["churned"] = y
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--score-rows", type=int, default=20_000)
    args = parser.parse_args()
    table = synthetic(args.rows, args.features)
    train, calib, test = out_of_time_split(table)
    cols = [c for c in table.columns if c not in ("user_id", "as_of", "churned")]
    started = time.perf_counter()
    model = ChurnModel(n_estimators=300, random_state=0).fit(
        train[cols], train["churned"], X_calib=calib[cols], y_calib=calib["churned"]
    )
    fit_s = time.perf_counter() - started
    print(
        f"fit: {len(train) + len(calib):,} rows x {len(cols)} features in {fit_s:.1f} s "
        f"({model.best_iteration_} trees; 1M-row target <= 120 s)"
    )
    rows = test[cols].head(args.score_rows)
    explainer = ReasonExplainer({c: c.replace("_", " ") for c in cols}).fit(train[cols].head(50_000))

    def rate(fn) -> float:
        start = time.perf_counter()
        fn()
        return len(rows) / (time.perf_counter() - start)

    proba = rate(lambda: model.predict_proba(rows))
    contrib = rate(lambda: model.contributions(rows))
    reasons = rate(lambda: explainer.explain(model.contributions(rows), rows))
    print(f"predict_proba: {proba:,.0f} rows/s")
    print(f"pred_contrib:  {contrib:,.0f} rows/s ({contrib / proba:.3f} x predict_proba)")
    print(f"reasons:       {reasons:,.0f} rows/s ({reasons / proba:.3f} x predict_proba)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
