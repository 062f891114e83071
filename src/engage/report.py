"""Engagement report: the analytics tables as CSV, their plots as PNG, and one self-contained HTML page.

Edge module: :func:`build_report` writes files (no network, no clock: ``as_of`` is a parameter).
The computing (:func:`compute_analytics`) and the HTML rendering (:func:`render_html`) are pure so
that notebooks and tests can use them without touching the disk. The HTML page inlines every PNG as
a base64 ``data:`` URI and every table as HTML, so it opens in a browser on its own.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import pandas as pd
import polars as pl
from matplotlib.figure import Figure

from engage import schemas as s
from engage.analytics.cohorts import CohortTable, cohort_retention
from engage.analytics.engagement import engagement_score, engagement_summary
from engage.analytics.frames import ALL_SEGMENT, EventsLike, events_before
from engage.analytics.funnels import DEFAULT_FUNNEL_STEPS, SegmentLike, funnel
from engage.analytics.segments import LoyaltyTiers, loyalty_tiers, rfm, rfm_segment_summary
from engage.atomic import write_text_atomic
from engage.plots import analytics as plots

Progress = Callable[[str], None]
"""Called with a short message before each stage (e.g. to drive a progress bar)."""

DEFAULT_TITLE = "engage: engagement report"


@dataclass(frozen=True)
class AnalyticsTables:
    """Every table the report shows, computed as of one time."""

    as_of: datetime
    overview: pd.DataFrame
    event_types: pd.DataFrame
    cohort: CohortTable
    funnel: pd.DataFrame
    rfm: pd.DataFrame
    rfm_segments: pd.DataFrame
    loyalty: LoyaltyTiers
    engagement: pd.DataFrame
    engagement_bands: pd.DataFrame
    value_segments: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Predicted revenue by value segment (empty when too few users bought to fit a value model)."""


@dataclass(frozen=True)
class Section:
    """One report section: a heading, a plain-words caption, an optional PNG and HTML tables."""

    key: str
    title: str
    caption: str
    png: bytes | None = None
    tables: Sequence[tuple[str, pd.DataFrame]] = field(default_factory=tuple)
    files: Sequence[str] = field(default_factory=tuple)


def overview_tables(events: pl.DataFrame, as_of: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Key figures of the events before ``as_of`` (events, users, time span) and counts per type."""
    n = events.height
    ts = events.get_column(s.TS)
    overview = pd.DataFrame(
        {
            "measure": ["as_of", "events", "users", "first event", "last event"],
            "value": [
                str(as_of),
                f"{n:,}",
                f"{events.get_column(s.USER_ID).n_unique():,}",
                str(ts.min()) if n else "",
                str(ts.max()) if n else "",
            ],
        }
    )
    counts = (
        events.group_by(s.EVENT_TYPE)
        .agg(pl.len().alias("events"), pl.col(s.USER_ID).n_unique().alias("users"))
        .sort("events", descending=True)
        .to_pandas()
    )
    return overview, counts


def compute_analytics(
    events: EventsLike,
    *,
    as_of: datetime,
    cohort_period: Literal["M", "W"] = "M",
    activity_types: Sequence[str] | None = None,
    funnel_steps: Sequence[str] = DEFAULT_FUNNEL_STEPS,
    funnel_window_days: float = 7.0,
    funnel_segment: SegmentLike = None,
    engagement_window_days: int = 28,
    purchase_type: str = "purchase",
    value_horizon_days: int = 365,
    progress: Progress | None = None,
) -> AnalyticsTables:
    """All report tables from events before ``as_of`` (pure; see ``engage.analytics``)."""
    say = progress or (lambda _msg: None)
    frame = events_before(events, as_of)
    overview, event_types = overview_tables(frame, as_of)
    say("cohort retention")
    cohort = cohort_retention(frame, as_of=as_of, activity_types=activity_types, period=cohort_period)
    say("funnel")
    fun = funnel(frame, funnel_steps, as_of=as_of, window_days=funnel_window_days, segment=funnel_segment)
    say("RFM and loyalty tiers")
    rfm_table = rfm(frame, as_of=as_of, purchase_type=purchase_type)
    say("engagement score")
    scores = engagement_score(frame, as_of=as_of, window_days=engagement_window_days)
    return AnalyticsTables(
        as_of=as_of,
        overview=overview,
        event_types=event_types,
        cohort=cohort,
        funnel=fun,
        rfm=rfm_table,
        rfm_segments=rfm_segment_summary(rfm_table),
        loyalty=loyalty_tiers(rfm_table),
        engagement=scores,
        engagement_bands=engagement_summary(scores),
        value_segments=value_segments(frame, as_of, value_horizon_days),
    )


def value_segments(events: pl.DataFrame, as_of: datetime, horizon_days: int) -> pd.DataFrame:
    """Predicted revenue per value segment: the value model (BTYD + Gamma-Gamma) fitted on the
    standard features as of ``as_of`` (events before it only); empty with fewer than 50 buyers."""
    from engage.config import FeatureConfig
    from engage.features import build_features
    from engage.models.value import CustomerValue, value_segment_summary

    frame = events.with_columns(
        pl.lit(None, dtype).alias(name)
        for name, dtype in s.EVENT_OPTIONAL.items()
        if name not in events.columns
    )
    features = build_features(frame, [as_of], config=FeatureConfig())
    if int((features["purchase_days_total"] > 0).sum()) < 50:
        return pd.DataFrame()
    model = CustomerValue(horizon_days=horizon_days).fit(features)
    return value_segment_summary(model.predict(features))


def figure_png(fig: Figure, *, dpi: int = 110) -> bytes:
    """The figure rendered as PNG bytes (Agg, no pyplot)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _pct(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.0f}%"


def _captions(t: AnalyticsTables) -> dict[str, str]:
    """Plain-words captions with the headline figure of each plot."""
    unit = "month" if t.cohort.period == "M" else "week"
    curves = t.cohort.curves()
    pooled = curves[(curves["cohort"] == ALL_SEGMENT) & (curves["periods_since"] == 1)]
    month1 = _pct(float(pooled["rate"].iloc[0])) if len(pooled) else "n/a"
    f_all = t.funnel[t.funnel["segment"] == ALL_SEGMENT]
    starters = int(f_all["users"].iloc[0]) if len(f_all) else 0
    end_conv = _pct(float(f_all["conversion"].iloc[-1])) if len(f_all) else "n/a"
    first_step = str(f_all["step"].iloc[0]) if len(f_all) else ""
    worst = f_all.iloc[1:].sort_values("drop_off", ascending=False).head(1)
    worst_text = (
        f" The largest drop-off is into '{worst['step'].iloc[0]}' ({_pct(float(worst['drop_off'].iloc[0]))})."
        if len(worst) and pd.notna(worst["drop_off"].iloc[0])
        else ""
    )
    seg = t.rfm_segments.set_index("segment")
    customers = int(seg["users"].sum())
    champs = _pct(seg.at["Champions", "share"]) if customers else "n/a"
    pyr = t.loyalty.pyramid.set_index("tier")
    new_share = _pct(pyr.at["New", "share"]) if customers else "n/a"
    median = float(t.engagement["engagement_score"].median()) if len(t.engagement) else float("nan")
    return {
        "cohort_heatmap": (
            f"Each row is a cohort: the users whose first activity fell in that {unit} (cohort size in "
            f"brackets). Each column counts {unit}s since that first activity; a cell is the percent of "
            f"the cohort active again in that {unit} (darker = more retained, blank = not yet observed). "
            f"Reading down a column compares cohorts at the same age."
        ),
        "retention_curves": (
            f"The same retention as lines: thin grey lines are single cohorts, the thick blue line pools "
            f"all cohorts observed that far. On average {month1} of a cohort is active again one {unit} "
            f"after its first {unit}; a curve that flattens marks a core of retained users. The first "
            f"cohort also holds customers already active before the log begins, so it retains better "
            f"and dominates the pooled line at long ages."
        ),
        "funnel": (
            f"Of {starters:,} users who started the funnel, the bars show the share reaching each later "
            f"step in order within the window; {end_conv} reached the last step.{worst_text} Bars per "
            f"segment compare where each segment loses users; steps with no such events read 0%."
            if starters
            else f"No user has a '{first_step}' event before as_of (a purchase-only log, for example), so "
            f"nobody enters the funnel and every bar reads 0%."
        ),
        "rfm_segments": (
            f"{customers:,} customers with a purchase, placed in named segments by recency (R), frequency "
            f"(F) and monetary (M) scores from 1 to 5. Champions ({champs} of customers) bought recently "
            f"and often; At risk and Can't lose them bought often but not lately; Lost bought once or "
            f"twice, long ago. Labels give each segment's share of customers and of net revenue."
        ),
        "loyalty_pyramid": (
            f"Customers by loyalty tier, base (New: one purchase occasion, {new_share}) to top (Champions: "
            f"frequent and recent buyers). Bar width is the number of customers; a narrow top over a wide "
            f"base means most customers never come back for a second purchase."
        ),
        "engagement_histogram": (
            f"Engagement score per user (0 to 100): a weighted percentile rank of recency (35%), "
            f"frequency (25%), breadth of activity (20%) and recent trend (20%). Dashed lines split the "
            f"low, medium and high bands; the red line is the median ({median:.0f}). Scores rank users "
            f"within this snapshot."
        ),
    }


def _fmt_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """A rates table as percent text (blank where unobserved), for display."""
    return frame.apply(lambda col: col.map(lambda v: "" if pd.isna(v) else f"{100 * v:.0f}%"))


def build_sections(t: AnalyticsTables) -> list[Section]:
    """Sections of the report (PNG bytes rendered here; the tables are for display)."""
    cap = _captions(t)
    rates = _fmt_rates(t.cohort.rates)
    rates.insert(0, "size", t.cohort.sizes)
    top_users = t.engagement.sort_values("engagement_score", ascending=False).head(10)
    return [
        Section(
            "event_types",
            "Event types",
            "Events and distinct users per event type before as_of. Types a log lacks (a purchase-only "
            "log has no sessions or views) simply read zero in the sections below.",
            None,
            (("Events per type", t.event_types),),
            ("event_types.csv",),
        ),
        Section(
            "cohort_heatmap",
            "Cohort retention",
            cap["cohort_heatmap"],
            figure_png(plots.cohort_heatmap(t.cohort)),
            (("Retention rate by cohort", rates.reset_index()),),
            ("cohort_counts.csv", "cohort_rates.csv"),
        ),
        Section(
            "retention_curves",
            "Retention curves",
            cap["retention_curves"],
            figure_png(plots.retention_curves(t.cohort)),
            (),
            ("retention_curves.csv",),
        ),
        Section(
            "funnel",
            "Funnel",
            cap["funnel"],
            figure_png(plots.funnel_bars(t.funnel)),
            (("Funnel by segment", t.funnel),),
            ("funnel.csv",),
        ),
        Section(
            "rfm_segments",
            "RFM segments",
            cap["rfm_segments"],
            figure_png(plots.rfm_segment_bars(t.rfm_segments)),
            (("Customers per segment", t.rfm_segments),),
            ("rfm.csv", "rfm_segments.csv"),
        ),
        Section(
            "loyalty_pyramid",
            "Loyalty pyramid",
            cap["loyalty_pyramid"],
            figure_png(plots.loyalty_pyramid(t.loyalty.pyramid)),
            (("Customers per tier", t.loyalty.pyramid),),
            ("loyalty_tiers.csv", "loyalty_pyramid.csv"),
        ),
        Section(
            "engagement_histogram",
            "Engagement score",
            cap["engagement_histogram"],
            figure_png(plots.engagement_histogram(t.engagement)),
            (("Users per band", t.engagement_bands), ("Most engaged users", top_users)),
            ("engagement_scores.csv", "engagement_bands.csv"),
        ),
        *_value_section(t),
    ]


def _value_section(t: AnalyticsTables) -> list[Section]:
    """The value segments section, when the log has enough buyers to fit a value model."""
    if t.value_segments.empty:
        return []
    table = t.value_segments
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    ax.bar(table["segment"], 100 * table["revenue_share"].fillna(0.0), color="#2b6cb0")
    ax.set_ylabel("% of predicted revenue")
    ax.set_title("Predicted revenue by value segment")
    fig.tight_layout()
    top = table.iloc[0]
    caption = (
        "Users ranked by predicted revenue over the next months (BTYD purchase counts times "
        f"Gamma-Gamma spend per purchase). The top 10% ({int(top['users']):,} users) hold "
        f"{_pct(float(top['revenue_share']))} of the predicted revenue: the customers whose loss costs most."
    )
    return [
        Section(
            "value_segments",
            "Value segments",
            caption,
            figure_png(fig),
            (("Predicted revenue per segment", table),),
            ("value_segments.csv",),
        )
    ]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1a202c;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #e2e8f0;padding-bottom:.3rem;margin-top:2.5rem}
p.caption{color:#2d3748;max-width:60rem;line-height:1.45}p.meta,p.files{color:#718096;font-size:.9rem}
img{max-width:100%;height:auto;border:1px solid #edf2f7}
table{border-collapse:collapse;font-size:.85rem;margin:.6rem 0 1rem}
th,td{padding:.25rem .6rem;border-bottom:1px solid #e2e8f0;text-align:right}
th{background:#f7fafc}caption{text-align:left;font-weight:600;padding:.3rem 0}
nav a{margin-right:1rem}
"""


def _table_html(name: str, frame: pd.DataFrame) -> str:
    """One table as escaped HTML with a caption."""
    body = frame.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:,.3f}", escape=True)
    return body.replace("<table", f'<table data-name="{html.escape(name)}"', 1).replace(
        ">", f"><caption>{html.escape(name)}</caption>", 1
    )


def render_html(title: str, as_of: datetime, overview: pd.DataFrame, sections: Sequence[Section]) -> str:
    """The self-contained report page: PNGs as base64 data URIs, tables as HTML, no external links
    except the CSV files written next to it."""
    nav = " ".join(f'<a href="#{html.escape(sec.key)}">{html.escape(sec.title)}</a>' for sec in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">Computed from events before {html.escape(str(as_of))}.</p>',
        f"<nav>{nav}</nav>",
        '<section id="overview"><h2>Overview</h2>',
        _table_html("Overview", overview),
        "</section>",
    ]
    for sec in sections:
        parts.append(f'<section id="{html.escape(sec.key)}"><h2>{html.escape(sec.title)}</h2>')
        if sec.png is not None:
            data = base64.b64encode(sec.png).decode("ascii")
            parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(sec.title)}">')
        parts.append(f'<p class="caption">{html.escape(sec.caption)}</p>')
        parts.extend(_table_html(name, frame) for name, frame in sec.tables)
        if sec.files:
            links = ", ".join(f'<a href="{html.escape(f)}">{html.escape(f)}</a>' for f in sec.files)
            parts.append(f'<p class="files">Full tables: {links}</p>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _csv_tables(t: AnalyticsTables) -> dict[str, pd.DataFrame]:
    """File name -> table for every CSV the report writes."""
    return {
        "overview.csv": t.overview,
        "event_types.csv": t.event_types,
        "cohort_counts.csv": t.cohort.counts.reset_index(),
        "cohort_rates.csv": t.cohort.rates.reset_index(),
        "retention_curves.csv": t.cohort.curves(),
        "funnel.csv": t.funnel,
        "rfm.csv": t.rfm,
        "rfm_segments.csv": t.rfm_segments,
        "loyalty_tiers.csv": t.loyalty.users,
        "loyalty_pyramid.csv": t.loyalty.pyramid,
        "engagement_scores.csv": t.engagement,
        "engagement_bands.csv": t.engagement_bands,
        "value_segments.csv": t.value_segments,
    }


def build_report(
    events: EventsLike,
    *,
    as_of: datetime,
    out_dir: str | Path,
    title: str = DEFAULT_TITLE,
    cohort_period: Literal["M", "W"] = "M",
    activity_types: Sequence[str] | None = None,
    funnel_steps: Sequence[str] = DEFAULT_FUNNEL_STEPS,
    funnel_window_days: float = 7.0,
    funnel_segment: SegmentLike = None,
    engagement_window_days: int = 28,
    purchase_type: str = "purchase",
    progress: Progress | None = None,
) -> Path:
    """Write the tables (CSV), plots (PNG) and ``report.html`` into ``out_dir``; return the HTML path.

    Uses only events with ``ts < as_of``. ``out_dir`` is created when missing; files of the same
    names are overwritten. The HTML is written last, so its presence means the report is complete.
    """
    say = progress or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = compute_analytics(
        events,
        as_of=as_of,
        cohort_period=cohort_period,
        activity_types=activity_types,
        funnel_steps=funnel_steps,
        funnel_window_days=funnel_window_days,
        funnel_segment=funnel_segment,
        engagement_window_days=engagement_window_days,
        purchase_type=purchase_type,
        progress=say,
    )
    say("writing tables")
    for name, frame in _csv_tables(tables).items():
        frame.to_csv(out / name, index=False)
    say("rendering plots")
    sections = build_sections(tables)
    for sec in sections:
        if sec.png is not None:
            (out / f"{sec.key}.png").write_bytes(sec.png)
    say("writing report.html")
    page = render_html(title, as_of, tables.overview, sections)
    return write_text_atomic(out / "report.html", page)
