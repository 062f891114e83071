"""Plots of the loop's judgement as matplotlib Figures (no pyplot state, never shown or saved here).

Lift vs holdout per group with its 95% interval; policy values per estimator with their intervals
(one estimator alone is ``plots.uplift.policy_values_figure``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from engage.evaluation.lift import LIFT_COLUMNS
from engage.offers.evaluation import VALUE_COLUMNS
from engage.plots.intervals import ci_whiskers

__all__ = ["lift_figure", "policy_values_by_estimator_figure"]


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{name}: missing column(s) {', '.join(missing)}")


def lift_figure(lift: pd.DataFrame, *, metric: str, title: str) -> Figure:
    """Horizontal bars: treated minus holdout mean of ``metric`` per group, with 95% CI whiskers.

    Groups without a measurable lift (no treated or no holdout decisions) are left out.
    """
    _require(lift, LIFT_COLUMNS, "lift")
    rows = lift[(lift["metric"] == metric) & lift["lift"].notna()].sort_values("lift")
    fig = Figure(figsize=(6.5, 0.45 * max(len(rows), 3) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    y = np.arange(len(rows))
    v = rows["lift"].to_numpy(dtype=float)
    err = ci_whiskers(v, rows["ci_low"], rows["ci_high"])
    colors = [
        "tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray"
        for lo, hi in zip(rows["ci_low"], rows["ci_high"], strict=True)
    ]
    ax.barh(y, v, xerr=err, color=colors, alpha=0.75, capsize=3)
    labels = [
        f"{g} (n={t:,}/{h:,})"
        for g, t, h in zip(rows["group"], rows["treated_n"], rows["holdout_n"], strict=True)
    ]
    ax.set_yticks(y, labels)
    ax.axvline(0, c="black", lw=0.6)
    ax.set_xlabel(f"{metric}: treated minus holdout (95% CI)")
    return fig


def policy_values_by_estimator_figure(
    values: pd.DataFrame, *, title: str = "Policy value (95% CI)"
) -> Figure:
    """One horizontal bar per (policy, estimator) in table order, colored by estimator, with 95% CIs."""
    _require(values, VALUE_COLUMNS, "values")
    rows = values.iloc[::-1]  # the first row on top
    estimators = list(dict.fromkeys(values["estimator"].astype(str)))
    palette = {est: f"C{k}" for k, est in enumerate(estimators)}
    fig = Figure(figsize=(6.5, 0.35 * max(len(rows), 4) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    y = np.arange(len(rows))
    v = rows["value"].to_numpy(dtype=float)
    err = ci_whiskers(v, rows["ci_low"], rows["ci_high"])
    colors = [palette[str(e)] for e in rows["estimator"]]
    ax.barh(y, np.nan_to_num(v), xerr=err, color=colors, alpha=0.8, capsize=3)
    ax.set_yticks(y, [f"{p} ({e})" for p, e in zip(rows["policy"], rows["estimator"], strict=True)])
    ax.axvline(0, c="black", lw=0.6)
    ax.set_xlabel("value per decision (conversion value minus message cost)")
    return fig
