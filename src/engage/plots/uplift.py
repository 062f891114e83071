"""Uplift and policy plots as matplotlib Figures (no pyplot state, never shown or saved here)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from engage.offers.evaluation import VALUE_COLUMNS
from engage.plots.intervals import ci_whiskers


def qini_figure(curves: Mapping[str, pd.DataFrame], *, title: str = "Qini curves (held-out rows)") -> Figure:
    """One Qini curve per arm (from ``evaluation.uplift.qini_curve``) with its random-targeting line.

    Curves are drawn per treated-plus-control population of each arm, so the y axis is incremental
    outcomes in that arm's comparison.
    """
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    for name, curve in curves.items():
        frac = curve["fraction"].to_numpy(dtype=float)
        q = curve["qini"].to_numpy(dtype=float)
        (line,) = ax.plot(frac, q, label=str(name))
        ax.plot([0, 1], [0, q[-1]], ls="--", lw=0.8, c=line.get_color())
    ax.axhline(0, c="grey", lw=0.5)
    ax.set_xlabel("fraction targeted (by predicted uplift)")
    ax.set_ylabel("incremental outcomes")
    if curves:
        ax.legend()
    return fig


def policy_values_figure(values: pd.DataFrame, *, estimator: str = "dr") -> Figure:
    """Horizontal bars of one estimator's policy values with their 95% intervals."""
    missing = [c for c in VALUE_COLUMNS if c not in values.columns]
    if missing:
        raise KeyError(f"values: missing column(s) {', '.join(missing)}")
    rows = values[values["estimator"] == estimator].sort_values("value")
    fig = Figure(figsize=(6, 0.4 * max(len(rows), 3) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(f"Policy value ({estimator.upper()}, 95% CI)")
    y = np.arange(len(rows))
    v = rows["value"].to_numpy(dtype=float)
    err = ci_whiskers(v, rows["ci_low"], rows["ci_high"])
    ax.barh(y, v, xerr=err, color="tab:blue", alpha=0.7, capsize=3)
    ax.set_yticks(y, rows["policy"].astype(str).tolist())
    ax.set_xlabel("value per decision")
    return fig
