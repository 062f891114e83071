"""Predicted customer value out of time on CDNOW and Online Retail II, next to a naive baseline,
and the CLV fit and prediction time for 1M customers next to the BG/NBD fit alone.

    .venv/bin/python benchmarks/value.py [--data ../shared/data] [--customers 1000000]

For each data set the value model (``engage.models.value.CustomerValue``: MBG/NBD or BG/NBD counts
x Gamma-Gamma spend) is fitted on the standard features as of a calibration end and predicts the
holdout period (its length is the model's horizon). Actual = purchase days and revenue in the
holdout; the naive baseline says "the same as the period of equal length before the calibration
end". Printed side by side: MAE per customer of purchases and revenue, totals, and the calibration
by decile of predicted revenue (mean predicted vs mean actual, as the BTYD literature plots it).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import FeatureConfig
from engage.datasets.cdnow import load_cdnow
from engage.datasets.online_retail_ii import load_online_retail_ii
from engage.features import build_features
from engage.models.btyd import BGNBD, simulate_bgnbd
from engage.models.value import PREDICTED_PURCHASES, PREDICTED_REVENUE, CustomerValue

SETS = {
    # CDNOW: the literature's split, 39 calibration weeks (from 1997-01-01) then a 39-week holdout
    "cdnow": ("cdnow/CDNOW_master.txt.gz", load_cdnow, datetime(1997, 10, 1, tzinfo=UTC), 273),
    "online_retail_ii": (
        "online_retail_ii/online_retail_II_2009-2010.parquet",
        load_online_retail_ii,
        datetime(2010, 6, 1, tzinfo=UTC),
        190,
    ),
}


def _period(purchases: pl.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    """Purchase days and revenue per user in [start, end)."""
    inside = purchases.filter((pl.col(s.TS) >= start) & (pl.col(s.TS) < end))
    return (
        inside.group_by(s.USER_ID)
        .agg(
            pl.col(s.TS).dt.truncate("1d").n_unique().cast(pl.Float64).alias("purchases"),
            pl.col("amount").sum().alias("revenue"),
        )
        .to_pandas()
        .set_index(s.USER_ID)
    )


def evaluate(events: pl.DataFrame, cutoff: datetime, days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MAE table (model rows next to the naive one) and the decile calibration of the MBG/NBD model."""
    purchases = events.filter(pl.col(s.EVENT_TYPE) == "purchase")
    features = build_features(events.filter(pl.col(s.TS) < cutoff), [cutoff], config=FeatureConfig())
    buyers = features[features["purchase_days_total"] > 0].reset_index(drop=True)
    users = buyers[s.USER_ID].astype(str)
    actual = _period(purchases, cutoff, cutoff + timedelta(days=days)).reindex(users).fillna(0.0)
    before = _period(purchases, cutoff - timedelta(days=days), cutoff).reindex(users).fillna(0.0)
    rows = []
    predictions = {}
    for kind in ("mbgnbd", "bgnbd"):
        started = time.perf_counter()
        value = CustomerValue(horizon_days=days, model=kind).fit(buyers).predict(buyers)
        predictions[kind] = value
        rows.append((f"{kind} + gamma-gamma", value, time.perf_counter() - started))
    naive = pd.DataFrame(
        {PREDICTED_PURCHASES: before["purchases"].to_numpy(), PREDICTED_REVENUE: before["revenue"].to_numpy()}
    )
    rows.append(("naive: same as last period", naive, 0.0))
    table = []
    for name, pred, seconds in rows:
        table.append(
            {
                "model": name,
                "mae_purchases": float(
                    np.mean(np.abs(pred[PREDICTED_PURCHASES] - actual["purchases"].to_numpy()))
                ),
                "mae_revenue": float(np.mean(np.abs(pred[PREDICTED_REVENUE] - actual["revenue"].to_numpy()))),
                "total_purchases": float(pred[PREDICTED_PURCHASES].sum()),
                "total_revenue": float(pred[PREDICTED_REVENUE].sum()),
                "fit_predict_s": seconds,
            }
        )
    table.append(
        {
            "model": "actual",
            "mae_purchases": 0.0,
            "mae_revenue": 0.0,
            "total_purchases": float(actual["purchases"].sum()),
            "total_revenue": float(actual["revenue"].sum()),
            "fit_predict_s": 0.0,
        }
    )
    best = predictions["mbgnbd"]
    decile = pd.qcut(best[PREDICTED_REVENUE].rank(method="first"), 10, labels=False) + 1
    calibration = (
        pd.DataFrame(
            {
                "decile": decile,
                "predicted_revenue": best[PREDICTED_REVENUE],
                "actual_revenue": actual["revenue"].to_numpy(),
                "naive_revenue": before["revenue"].to_numpy(),
                "predicted_purchases": best[PREDICTED_PURCHASES],
                "actual_purchases": actual["purchases"].to_numpy(),
            }
        )
        .groupby("decile")
        .mean()
    )
    return pd.DataFrame(table), calibration


def timing(n: int, seed: int) -> dict[str, float]:
    """Seconds to fit BG/NBD alone, and to fit and predict the whole value model, on n customers."""
    rfm = simulate_bgnbd(n, 52.0, r=0.25, alpha=4.0, a=0.8, b=2.5, seed=seed)
    rfm["recency"] = np.floor(rfm["recency"] * 7) / 7  # whole days, as features give them
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(
        {
            "purchase_days_total": rfm["frequency"] + 1,
            "days_since_first_purchase": rfm["T"] * 7,
            "days_since_last_purchase": np.round((rfm["T"] - rfm["recency"]) * 7),
            "purchase_day_amount_mean": rng.gamma(3.0, 12.0, n),
        }
    )
    started = time.perf_counter()
    BGNBD().fit(rfm["frequency"], rfm["recency"], rfm["T"])
    bg = time.perf_counter() - started
    started = time.perf_counter()
    model = CustomerValue(horizon_days=365).fit(features)
    fit = time.perf_counter() - started
    started = time.perf_counter()
    model.predict(features)
    predict = time.perf_counter() - started
    return {"bgnbd_fit_s": bg, "value_fit_s": fit, "value_predict_s": predict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pd.set_option("display.width", 160)
    pd.set_option("display.float_format", lambda v: f"{v:,.3f}")
    for name, (relative, loader, cutoff, days) in SETS.items():
        events = loader(args.data / relative).accepted
        table, calibration = evaluate(events, cutoff, days)
        print(f"\n{name}: calibration end {cutoff:%Y-%m-%d}, holdout {days} days")
        print(table.to_string(index=False))
        print(f"{name}: by decile of predicted revenue (MBG/NBD), means per customer")
        print(calibration.to_string())
    t = timing(args.customers, args.seed)
    print(
        f"\n{args.customers:,} customers: BG/NBD fit alone {t['bgnbd_fit_s']:.1f} s; value model "
        f"(MBG/NBD + Gamma-Gamma) fit {t['value_fit_s']:.1f} s, predict {t['value_predict_s']:.1f} s "
        f"(fit ratio {t['value_fit_s'] / t['bgnbd_fit_s']:.1f}x)"
    )


if __name__ == "__main__":
    main()
