"""Monitoring plots as matplotlib Figures (no pyplot state, never shown or saved here): PSI per feature
with the warn and alert lines, reference vs current shares of the worst features, calibration by week.

They draw the tables of ``engage.evaluation.drift`` (``Drift.table``, ``Drift.bins``,
``calibration_by_week``), never raw data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["calibration_weeks_figure", "psi_figure", "shares_figure"]

_COLORS = {"alert": "tab:red", "warn": "tab:orange", "ok": "tab:green", "n/a": "tab:gray"}


def psi_figure(table: pd.DataFrame, *, warn: float, alert: float, top: int = 25) -> Figure:
    """Horizontal bars of the ``top`` largest PSI (worst at the top), coloured by status, with the
    warn and alert thresholds as vertical lines."""
    rows = table[table["psi"].notna()].sort_values("psi", ascending=False).head(top)
    fig = Figure(figsize=(7, 1.2 + 0.28 * max(len(rows), 1)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(f"Drift per feature (PSI, top {len(rows)})")
    y = np.arange(len(rows))[::-1]
    ax.barh(y, rows["psi"], color=[_COLORS.get(st, "tab:gray") for st in rows["status"]])
    ax.set_yticks(y, rows["feature"].astype(str), fontsize=8)
    ax.axvline(warn, ls="--", c="tab:orange", lw=1, label=f"warn {warn:g}")
    ax.axvline(alert, ls="--", c="tab:red", lw=1, label=f"alert {alert:g}")
    ax.set_xlabel("population stability index (current vs reference)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def shares_figure(bins: Mapping[str, pd.DataFrame], features: Sequence[str], *, columns: int = 2) -> Figure:
    """Reference vs current share per bin, one panel per feature (the bins PSI was computed on)."""
    names = [f for f in features if f in bins] or ["(none)"]
    n_rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(5.2 * columns, 2.9 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        frame = bins.get(name)
        if frame is None:
            ax.set_axis_off()
            continue
        x = np.arange(len(frame))
        ax.bar(x - 0.2, frame["reference"], width=0.4, label="reference", color="tab:blue")
        ax.bar(x + 0.2, frame["current"], width=0.4, label="current", color="tab:red")
        ax.set_xticks(x, frame["bin"].astype(str), rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{name} (PSI {frame['psi'].sum():.3f})", fontsize=9)
        ax.set_ylabel("share of rows", fontsize=8)
        ax.legend(fontsize=7)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    return fig


def calibration_weeks_figure(weeks: pd.DataFrame) -> Figure:
    """Mean served risk and realized churn per week (closed weeks), labelled rows as grey bars."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Calibration by week: served risk vs realized churn")
    done = weeks[weeks["complete"].astype(bool)]
    x = np.arange(len(weeks))
    at = x[weeks["complete"].astype(bool).to_numpy()]
    ax.plot(at, done["mean_predicted"], "ko-", label="mean served risk")
    ax.plot(at, done["realized_rate"], "s-", color="tab:red", label="realized churn")
    ax.set_ylabel("churn rate")
    top = np.nanmax(done[["mean_predicted", "realized_rate"]].to_numpy(dtype=float), initial=0.0)
    ax.set_ylim(0, max(1.15 * top, 0.05))  # from zero: a gap reads at its true size
    ax.set_xticks(x, weeks["week"].astype(str), rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("week of the scoring date (open weeks: label window not closed yet)")
    counts = ax.twinx()
    counts.bar(x, weeks["labelled"], color="grey", alpha=0.25, label="labelled users")
    counts.set_ylabel("labelled users")
    ax.set_zorder(counts.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(loc="upper left", fontsize=8)
    return fig
