"""Out-of-time churn AUC on the real purchase logs: models, baselines and BTYD, side by side.

    .venv/bin/python benchmarks/churn_real.py [--data ../shared/data] [--sets cdnow,online_retail_ii]

For each data set the churn table is built as ``engage train churn`` builds it (default config,
with the sufficiency minimums lowered for these small logs), split out of time the same way, and
on the test snapshots this prints the AUC of LightGBM, the logistic and recency baselines, the
BG/NBD and MBG/NBD churn baselines (1 - P(alive), and P(no purchase in the label horizon), each
fitted on purchases before each as_of), and LightGBM and logistic with the BTYD outputs as extra
features (``churn.btyd_features``, ``engage.training.value.add_btyd_features``). Each AUC
difference to LightGBM comes with a DeLong 95% interval.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from sklearn.metrics import roc_auc_score

from engage import schemas as s
from engage.config import EngageConfig, load_config
from engage.datasets.cdnow import load_cdnow
from engage.datasets.online_retail_ii import load_online_retail_ii
from engage.evaluation.delong import delong_difference
from engage.models.churn import ChurnModel, LogisticBaseline, RecencyBaseline, out_of_time_split
from engage.training.churn import btyd_scores, build_churn_table, feature_columns
from engage.training.value import add_btyd_features

SETS = {
    "cdnow": ("cdnow/CDNOW_master.txt.gz", load_cdnow),
    "online_retail_ii": ("online_retail_ii/online_retail_II_2009-2010.parquet", load_online_retail_ii),
}


def evaluate(
    events: pl.DataFrame, name: str, config: EngageConfig, cache: Path | None
) -> list[tuple[str, float, str]]:
    """(model, AUC, difference to LightGBM with its DeLong interval) on the out-of-time test rows."""
    cached = cache / f"churn_table_{name}.parquet" if cache is not None else None
    if cached is not None and cached.exists():
        table = pd.read_parquet(cached)
    else:
        table = build_churn_table(events, config)
        if cached is not None:
            table.to_parquet(cached)
    with_btyd = add_btyd_features(table, events, config)
    train, calib, test = out_of_time_split(table, validation_snapshots=config.churn.validation_snapshots)
    train_b, calib_b, test_b = out_of_time_split(
        with_btyd, validation_snapshots=config.churn.validation_snapshots
    )
    cols, cols_b = feature_columns(table), feature_columns(with_btyd)
    y = test[s.LABEL].to_numpy()
    scores: dict[str, np.ndarray] = {}

    def lgbm(tr: pd.DataFrame, ca: pd.DataFrame, te: pd.DataFrame, c: list[str]) -> np.ndarray:
        model = ChurnModel.from_config(config.churn, seed=config.seed)
        model.fit(tr[c], tr[s.LABEL], X_calib=ca[c], y_calib=ca[s.LABEL])
        return np.asarray(model.predict_proba(te[c])[:, 1])

    scores["lightgbm"] = lgbm(train, calib, test, cols)
    scores["logreg"] = LogisticBaseline().fit(train[cols], train[s.LABEL]).predict_proba(test[cols])[:, 1]
    scores["recency"] = RecencyBaseline().fit(train[cols], train[s.LABEL]).predict_proba(test[cols])[:, 1]
    horizon = config.labels.horizon_days
    for kind in ("bgnbd", "mbgnbd"):
        for score in ("p_alive", "no_purchase"):
            btyd = btyd_scores(events, test, kind=kind, horizon_days=horizon, score=score)
            if btyd is not None:
                scores[f"{kind}_{score}"] = btyd
    scores["lightgbm+btyd"] = lgbm(train_b, calib_b, test_b, cols_b)
    logreg_b = LogisticBaseline().fit(train_b[cols_b].fillna(0.0), train_b[s.LABEL])
    scores["logreg+btyd"] = logreg_b.predict_proba(test_b[cols_b].fillna(0.0))[:, 1]
    print(f"{name}: {len(table)} rows, {table[s.AS_OF].nunique()} snapshots, test {len(test)} rows")
    rows = []
    for model_name, score in scores.items():
        auc = float(roc_auc_score(y, score))
        if model_name == "lightgbm":
            rows.append((model_name, auc, ""))
            continue
        diff, lo, hi = delong_difference(y, score, scores["lightgbm"])
        rows.append((model_name, auc, f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sets", default="cdnow,online_retail_ii")
    parser.add_argument("--cache", type=Path, default=None, help="folder to keep the churn tables in")
    args = parser.parse_args()
    overrides = {"labels.min_churned": 50, "labels.min_retained": 50, "churn.btyd_features": False}
    config = load_config(overrides=overrides)
    results = {}
    for name in args.sets.split(","):
        relative, loader = SETS[name]
        started = time.perf_counter()
        events = loader(args.data / relative).accepted
        results[name] = evaluate(events, name, config, args.cache)
        print(f"  ({time.perf_counter() - started:.1f} s)", results[name])
    for name, rows in results.items():
        print(f"\n{name}: out-of-time AUC (minus LightGBM's, DeLong 95% interval)")
        for model_name, auc, diff in rows:
            print(f"  {model_name:<16} {auc:.3f}  {diff}")


if __name__ == "__main__":
    main()
