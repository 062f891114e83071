"""Figures for the engagement analytics tables (``engage.analytics``).

Each helper takes a table and returns a new :class:`matplotlib.figure.Figure` built without pyplot,
so no global state is touched and nothing is shown or saved here (the caller saves or displays it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from engage.analytics.cohorts import CohortTable
from engage.analytics.frames import ALL_SEGMENT
from engage.analytics.segments import SEGMENT_ORDER, TIER_ORDER

_BLUE = "#2b6cb0"
_GREY = "#a0aec0"
_TIER_COLORS = ("#cbd5e0", "#90cdf4", "#4299e1", "#2b6cb0", "#1a365d")
_SEGMENT_COLORS = {
    "Champions": "#1a365d",
    "Loyal": "#2b6cb0",
    "Potential loyalist": "#4299e1",
    "New": "#90cdf4",
    "Needs attention": "#ecc94b",
    "At risk": "#ed8936",
    "Can't lose them": "#c53030",
    "Hibernating": "#a0aec0",
    "Lost": "#4a5568",
}


def _empty(fig: Figure, ax: Axes, message: str) -> Figure:
    """Mark an axis as having no data (so an empty table still gives a readable figure)."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#4a5568")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def cohort_heatmap(table: CohortTable, *, max_cohorts: int = 24, title: str | None = None) -> Figure:
    """Heatmap of retention rates: one row per cohort (latest ``max_cohorts``), one column per period
    since the first; cells show the percent still active, blank where not yet observed."""
    rates = table.rates.tail(max_cohorts)
    n_rows, n_cols = rates.shape
    fig = Figure(figsize=(max(6.0, 0.55 * n_cols + 2.5), max(3.0, 0.38 * n_rows + 1.6)), layout="constrained")
    ax = fig.add_subplot()
    unit = "months" if table.period == "M" else "weeks"
    ax.set_title(title or "Cohort retention (% of cohort active)")
    if rates.empty:
        return _empty(fig, ax, "no activity before as_of")
    values = np.ma.masked_invalid(rates.to_numpy(dtype=float))
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_cols), [str(c) for c in rates.columns])
    ax.set_yticks(range(n_rows), [f"{c} (n={table.sizes[c]:,})" for c in rates.index])
    ax.set_xlabel(f"{unit} since first activity")
    ax.set_ylabel("cohort (first activity)")
    if n_rows * n_cols <= 400:
        for i in range(n_rows):
            for j in range(n_cols):
                v = values[i, j]
                if v is np.ma.masked:
                    continue
                ax.text(
                    j,
                    i,
                    f"{100 * v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > 0.6 else "black",
                )
    fig.colorbar(image, ax=ax, label="share of cohort active", shrink=0.8)
    return fig


def retention_curves(table: CohortTable, *, max_cohorts: int = 12, title: str | None = None) -> Figure:
    """Retention curves: share of each cohort active k periods after its first (thin lines for the
    latest ``max_cohorts`` cohorts) and the pooled curve over all cohorts (thick line)."""
    curves = table.curves()
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    unit = "months" if table.period == "M" else "weeks"
    ax.set_title(title or "Retention curves by cohort")
    if curves.empty:
        return _empty(fig, ax, "no activity before as_of")
    cohorts = list(table.rates.index)[-max_cohorts:]
    for cohort in cohorts:
        part = curves[curves["cohort"] == cohort]
        ax.plot(part["periods_since"], part["rate"], color=_GREY, linewidth=1, alpha=0.8)
    pooled = curves[curves["cohort"] == ALL_SEGMENT]
    ax.plot(
        pooled["periods_since"], pooled["rate"], color=_BLUE, linewidth=2.5, marker="o", label="all cohorts"
    )
    ax.plot([], [], color=_GREY, linewidth=1, label=f"single cohorts (latest {len(cohorts)})")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"{unit} since first activity")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("share of cohort active")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{100 * v:.0f}%")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return fig


def funnel_bars(table: pd.DataFrame, *, max_segments: int = 6, title: str | None = None) -> Figure:
    """Grouped bars of funnel conversion from the first step, one group per step and one bar per
    segment (``All`` first, then the largest ``max_segments`` segments); labels give the percent."""
    fig = Figure(figsize=(8.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title or "Funnel: share of starters reaching each step (in order, within the window)")
    if table.empty:
        return _empty(fig, ax, "no funnel data")
    steps = list(dict.fromkeys(table["step"]))
    firsts = table[table["step_index"] == 1].set_index("segment")["users"]
    if int(firsts.max()) == 0:
        return _empty(fig, ax, f"nobody has a '{steps[0]}' event before as_of: no one enters the funnel")
    others = [seg for seg in firsts.sort_values(ascending=False).index if seg != ALL_SEGMENT][:max_segments]
    segments = [ALL_SEGMENT, *others] if ALL_SEGMENT in firsts.index else others
    width = 0.8 / max(len(segments), 1)
    cmap = ["#1a365d", "#4299e1", "#ed8936", "#38a169", "#805ad5", "#d53f8c", "#718096"]
    x = np.arange(len(steps))
    for i, seg in enumerate(segments):
        part = table[table["segment"] == seg].set_index("step").reindex(steps)
        conv = part["conversion"].fillna(0.0).to_numpy(dtype=float)
        bars = ax.bar(x + (i - (len(segments) - 1) / 2) * width, conv, width, color=cmap[i % len(cmap)])
        bars.set_label(f"{seg} (n={int(firsts.get(seg, 0)):,})")
        if len(segments) <= 4:
            ax.bar_label(bars, labels=[f"{100 * v:.0f}%" for v in conv], fontsize=7, padding=2)
    ax.set_xticks(x, steps)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("conversion from first step")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{100 * v:.0f}%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="segment", fontsize=8)
    return fig


def rfm_segment_bars(summary: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Horizontal bars of customers per RFM segment (best segment on top), annotated with the share
    of customers and the share of net revenue each segment holds."""
    fig = Figure(figsize=(8.0, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title or "RFM segments: customers (bar) and share of revenue")
    data = summary.set_index("segment").reindex(list(SEGMENT_ORDER))
    users = data["users"].fillna(0).to_numpy(dtype=float)
    if users.sum() == 0:
        return _empty(fig, ax, "no purchases before as_of")
    revenue = data["monetary_total"].fillna(0.0).clip(lower=0).to_numpy(dtype=float)
    rev_share = revenue / revenue.sum() if revenue.sum() > 0 else np.zeros_like(revenue)
    y = np.arange(len(data))[::-1]
    ax.barh(y, users, color=[_SEGMENT_COLORS[seg] for seg in data.index])
    ax.set_yticks(y, list(data.index))
    for yi, u, r in zip(y, users, rev_share, strict=True):
        ax.text(
            u,
            yi,
            f"  {100 * u / users.sum():.0f}% of customers, {100 * r:.0f}% of revenue",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(0, users.max() * 1.6)
    ax.set_xlabel("customers")
    ax.grid(axis="x", alpha=0.3)
    return fig


def loyalty_pyramid(pyramid: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Loyalty pyramid: one centered horizontal bar per tier, base ``New`` at the bottom and
    ``Champions`` at the top, bar width = customers in the tier, labelled with count and share."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title or "Loyalty pyramid (customers per tier)")
    data = pyramid.set_index("tier").reindex(list(TIER_ORDER))
    users = data["users"].fillna(0).to_numpy(dtype=float)
    if users.sum() == 0:
        return _empty(fig, ax, "no purchases before as_of")
    y = np.arange(len(TIER_ORDER))
    ax.barh(y, users, left=-users / 2, color=_TIER_COLORS, edgecolor="white", height=0.9)
    for yi, u in enumerate(users):
        ax.text(
            0,
            yi,
            f"{int(u):,} ({100 * u / users.sum():.0f}%)",
            ha="center",
            va="center",
            fontsize=9,
            color="white" if yi >= 3 else "black",
        )
    ax.set_yticks(y, list(TIER_ORDER))
    half = users.max() / 2
    ax.set_xlim(-half * 1.1, half * 1.1)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return fig


def engagement_histogram(
    scores: pd.DataFrame, *, bins: Sequence[float] | int = 20, title: str | None = None
) -> Figure:
    """Histogram of engagement scores (0..100) with the low/medium/high band limits and the median."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    values = scores["engagement_score"].dropna().to_numpy(dtype=float) if len(scores) else np.array([])
    if values.size == 0:
        ax.set_title(title or "Engagement score distribution")
        return _empty(fig, ax, "no users before as_of")
    edges = np.linspace(0, 100, bins + 1) if isinstance(bins, int) else np.asarray(bins, dtype=float)
    ax.hist(values, bins=edges.tolist(), color=_BLUE, edgecolor="white")
    for limit in (100 / 3, 200 / 3):
        ax.axvline(limit, color=_GREY, linestyle="--", linewidth=1)
    median = float(np.median(values))
    ax.set_title(
        title or f"Engagement score distribution ({values.size:,} users, median {median:.0f} in red)"
    )
    ax.axvline(median, color="#c53030", linewidth=2)
    top = ax.get_ylim()[1] * 1.12
    ax.set_ylim(0, top)
    for x, band in ((100 / 6, "low"), (50, "medium"), (500 / 6, "high")):
        ax.text(x, top * 0.97, band, ha="center", va="top", color="#4a5568")
    ax.set_xlim(0, 100)
    ax.set_xlabel("engagement score (0 = least engaged, 100 = most)")
    ax.set_ylabel("users")
    return fig
