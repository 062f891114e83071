"""Back-test a past scoring run against what happened after it: risk as served vs realized churn.

Pure: takes the scores file's table and the events, returns tables and figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
from matplotlib.figure import Figure

from engage import schemas as s
from engage.evaluation.classification import classification_metrics, lift_table


@dataclass
class Backtest:
    """Realized outcomes of one scoring run."""

    metrics: dict[str, float]
    deciles: pd.DataFrame
    messages: pd.DataFrame
    figures: dict[str, Figure]


def realized(
    scores: pd.DataFrame, events: pl.DataFrame, *, horizon_days: int, attribution_days: int
) -> pd.DataFrame:
    """Per scored user: churned (no event in [as_of, as_of + horizon)) and converted (a purchase in
    [as_of, as_of + attribution window))."""
    keys = pl.from_pandas(
        scores[[s.USER_ID, s.AS_OF]].assign(**{s.AS_OF: pd.to_datetime(scores[s.AS_OF], utc=True)})
    )
    keys = keys.with_columns(pl.col(s.AS_OF).cast(s.TS_DTYPE))
    joined = keys.join(events.select(s.USER_ID, s.TS, s.EVENT_TYPE), on=s.USER_ID, how="left")
    after = pl.col(s.TS) >= pl.col(s.AS_OF)
    outcome = joined.group_by(s.USER_ID, s.AS_OF).agg(
        (after & (pl.col(s.TS) < pl.col(s.AS_OF) + pl.duration(days=horizon_days))).any().alias("__active"),
        (
            after
            & (pl.col(s.EVENT_TYPE) == "purchase")
            & (pl.col(s.TS) < pl.col(s.AS_OF) + pl.duration(days=attribution_days))
        )
        .any()
        .alias("converted"),
    )
    frame = outcome.with_columns((~pl.col("__active").fill_null(False)).cast(pl.Int64).alias(s.LABEL)).drop(
        "__active"
    )
    out = scores.copy()
    out[s.AS_OF] = pd.to_datetime(out[s.AS_OF], utc=True)
    realized_pd = frame.to_pandas()
    realized_pd[s.AS_OF] = pd.to_datetime(realized_pd[s.AS_OF], utc=True)
    merged = out.merge(realized_pd, on=[s.USER_ID, s.AS_OF], how="left")
    merged["converted"] = merged["converted"].fillna(False).astype(bool)
    return merged


def backtest(
    scores: pd.DataFrame, events: pl.DataFrame, *, horizon_days: int, attribution_days: int = 7
) -> Backtest:
    """AUC, calibration and deciles of the served risk; conversion of treated vs holdout per message."""
    last = events[s.TS].max()  # a datetime, or None without events (polars types it as any scalar)
    last = last if isinstance(last, datetime) else None
    as_of = pd.to_datetime(scores[s.AS_OF], utc=True).max()
    if last is None or pd.Timestamp(last) < as_of + timedelta(days=horizon_days):
        raise ValueError(
            f"the events end at {last}, before the horizon closes ({as_of + timedelta(days=horizon_days)}):"
            " back-test when the outcomes are in"
        )
    data = realized(scores, events, horizon_days=horizon_days, attribution_days=attribution_days)
    y, p = data[s.LABEL].to_numpy(), data["churn_probability"].to_numpy(dtype=float)
    metrics = classification_metrics(y, p, prefix="served_") if 0 < y.mean() < 1 else {}
    metrics |= {
        "users": float(len(data)),
        "realized_churn_rate": float(y.mean()),
        "mean_served_risk": float(p.mean()),
    }
    deciles = lift_table(y, p)
    holdout = data["holdout"].astype(bool) if "holdout" in data else pd.Series(False, index=data.index)
    groups = data.assign(group=np.where(holdout, "holdout", "treated"))
    messages = (
        groups.groupby([s.MESSAGE_ID, "group"])
        .agg(users=(s.USER_ID, "size"), conversion_rate=("converted", "mean"), churn_rate=(s.LABEL, "mean"))
        .reset_index()
    )
    treated_rate = float(data.loc[~holdout & (data[s.MESSAGE_ID] != s.CONTROL_ARM), "converted"].mean())
    holdout_rate = float(data.loc[holdout, "converted"].mean()) if holdout.any() else float("nan")
    metrics |= {"treated_conversion_rate": treated_rate, "holdout_conversion_rate": holdout_rate}
    return Backtest(metrics=metrics, deciles=deciles, messages=messages, figures=_figures(deciles, messages))


def _figures(deciles: pd.DataFrame, messages: pd.DataFrame) -> dict[str, Figure]:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(deciles["decile"], deciles["churn_rate"], color="tab:red", label="realized churn")
    ax.plot(deciles["decile"], deciles["mean_score"], "ko-", label="served risk")
    ax.set_xlabel("risk decile as served (1 = riskiest)")
    ax.set_ylabel("churn rate")
    ax.set_title("Back-test: served risk vs realized churn")
    ax.legend()
    fig2 = Figure(figsize=(7, 4), layout="constrained")
    ax2 = fig2.add_subplot()
    pivot = messages.pivot_table(index=s.MESSAGE_ID, columns="group", values="conversion_rate")
    pivot.plot.bar(ax=ax2)
    ax2.set_ylabel("purchase within the attribution window")
    ax2.set_title("Outcomes per chosen message: treated vs holdout")
    return {"backtest_deciles": fig, "backtest_messages": fig2}
