"""The watch command: drift of features and scores (PSI) and calibration by week, for a scheduler.

Exit codes: 0 when no alert threshold is crossed (warnings are printed), 1 when one is (so the job
that runs it after each batch can alert), 2 for a file or setting that cannot be used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from engage import schemas as s
from engage.cli.common import (
    ConfigOpt,
    SetOpt,
    build_config,
    check_paths,
    console,
    fail,
    file_errors,
    load_events,
    out,
    read_table,
)

if TYPE_CHECKING:
    import pandas as pd

    from engage.config import EngageConfig
    from engage.evaluation.drift import Monitor

__all__ = ["monitor"]

ALERT_EXIT_CODE = 1
"""``engage monitor`` exits with this code when an alert threshold is crossed."""
HISTOGRAMS = 6
"""At most this many features get reference vs current histograms on the page."""
_STYLE = {"alert": "bold red", "warn": "yellow", "ok": "green", "n/a": "dim"}


@file_errors
def monitor(
    reference: Annotated[
        Path, typer.Option(help="Feature snapshot (or training table) the model learned on.")
    ],
    current: Annotated[Path, typer.Option(help="Feature snapshot scored now (`engage score --snapshot`).")],
    scores: Annotated[
        Path | None,
        typer.Option(help="Served scores (user_id, as_of, churn_probability), one or more dates."),
    ] = None,
    events: Annotated[
        Path | None,
        typer.Option(help="Events through today: realized churn for calibration (needs --scores)."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for monitor.html and monitor.json.")] = Path(
        "monitor"
    ),
    top: Annotated[
        int, typer.Option(min=1, help="Features in the printed table (histograms: the 6 worst at most).")
    ] = 10,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Drift (PSI) of features and scores, calibration by week; exit code 1 on an alert, 0 otherwise.

    Exit codes: 0 no alert threshold crossed (warnings are printed), 1 an alert (a feature or the
    score at PSI >= monitor.psi_alert, a feature missing from the current snapshot, the latest judged
    week's ECE >= monitor.ece_alert), 2 a file or setting that cannot be used. The scores' reference
    is those dated like the reference snapshot, else the earliest scored date.
    """
    cfg = build_config(config, set_)
    check_paths(
        read={"--reference": reference, "--current": current, "--scores": scores, "--events": events},
        folders={"--out": out_dir},
    )
    if events is not None and scores is None:
        raise fail("--events: calibration compares served scores with what followed; give --scores too")
    from engage.atomic import write_text_atomic
    from engage.evaluation.drift import SCORE_COLUMN
    from engage.evaluation.drift import monitor as run_monitor

    ref = _snapshot(reference, "--reference")
    cur = _snapshot(current, "--current")
    served = None
    if scores is not None:
        table = read_table(
            scores, "--scores", required=(s.USER_ID, s.AS_OF, SCORE_COLUMN), timestamps=(s.AS_OF,)
        )
        served = table.to_pandas()
        _check_scores(served, scores, SCORE_COLUMN)
    frame = load_events(events, cfg) if events is not None else None
    try:
        result = run_monitor(ref, cur, config=cfg.monitor, labels=cfg.labels, scores=served, events=frame)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    _print(result, top)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = result.summary(cfg.monitor) | {"reference": str(reference), "current": str(current)}
    write_text_atomic(out_dir / "monitor.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    write_text_atomic(out_dir / "monitor.html", _page(result, cfg, cur, top))
    out.print(f"monitor.html and monitor.json -> {out_dir}")
    if result.alerts:
        raise typer.Exit(ALERT_EXIT_CODE)


def _snapshot(path: Path, option: str) -> pd.DataFrame:
    table = read_table(path, option, required=(s.USER_ID, s.AS_OF), timestamps=(s.AS_OF,))
    if table.height == 0:
        raise fail(f"{option} {path}: no rows")
    return table.to_pandas()


def _check_scores(served: pd.DataFrame, path: Path, column: str) -> None:
    """Probabilities in [0, 1], none missing: else the first bad row is named."""
    import numpy as np
    import pandas as pd

    p = pd.to_numeric(served[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = np.flatnonzero(~(np.isfinite(p) & (p >= 0) & (p <= 1)))
    if len(bad):
        row = int(bad[0])
        raise fail(
            f"--scores {path}: row {row + 1}, column {column}: {served[column].iloc[row]!r} is not a "
            f"probability in [0, 1] ({len(bad):,} such rows)"
        )


def _print(result: Monitor, top: int) -> None:
    table = Table("feature", "kind", "PSI", "status", "note", title=f"drift: the {top} worst features")
    for row in result.features.table.head(top).itertuples(index=False):
        style = _STYLE.get(str(row.status), "")
        psi = "" if row.psi != row.psi else f"{row.psi:.3f}"
        table.add_row(
            escape(str(row.feature)), str(row.kind), psi, f"[{style}]{row.status}[/]", escape(row.note)
        )
    out.print(table)
    if result.scores is not None and result.score_dates is not None:
        row = result.scores.table.iloc[0]
        ref_dates, cur_dates = (", ".join(d[:10] for d in dates) for dates in result.score_dates)
        style = _STYLE.get(str(row["status"]), "")
        out.print(
            f"score churn_probability: PSI {row['psi']:.3f} [{style}]{row['status']}[/] "
            f"(scores of {ref_dates} vs {cur_dates})"
        )
    if result.calibration is not None:
        weeks = Table(
            "week",
            "scored",
            "labelled",
            "mean risk",
            "realized churn",
            "ECE",
            "status",
            title="calibration by week (open: the label horizon has not closed yet)",
        )
        for w in result.calibration.itertuples(index=False):
            if not w.complete:
                weeks.add_row(str(w.week), f"{w.scored:,}", "", "", "", "", "[dim]open[/]")
                continue
            style = _STYLE.get(str(w.status), "")
            weeks.add_row(
                str(w.week),
                f"{w.scored:,}",
                f"{w.labelled:,}",
                f"{w.mean_predicted:.1%}" if w.labelled else "",
                f"{w.realized_rate:.1%}" if w.labelled else "",
                f"{w.ece:.3f}" if w.labelled else "",
                f"[{style}]{w.status}[/]",
            )
        out.print(weeks)
    for line in result.warnings:
        console.print(f"[yellow]warn:[/] {escape(line)}", soft_wrap=True, highlight=False)
    for line in result.alerts:
        console.print(f"[bold red]alert:[/] {escape(line)}", soft_wrap=True, highlight=False)
    out.print(f"status: {result.status} ({len(result.alerts)} alerts, {len(result.warnings)} warnings)")


def _page(result: Monitor, cfg: EngageConfig, current: pd.DataFrame, top: int) -> str:
    """monitor.html: the overview, PSI bars, the worst features' shares, scores and calibration."""
    import pandas as pd

    from engage.plots import monitor as plots
    from engage.report import Section, figure_png, render_html

    mc = cfg.monitor
    features = result.features.table
    worst = features[features["psi"].notna()].head(min(top, HISTOGRAMS))["feature"].tolist()
    overview = pd.DataFrame(
        {
            "item": [
                "status",
                "alerts",
                "warnings",
                "features compared",
                "PSI warn / alert",
                "ECE warn / alert",
            ],
            "value": [
                result.status,
                "; ".join(result.alerts) or "none",
                "; ".join(result.warnings) or "none",
                f"{int(features['psi'].notna().sum()):,}",
                f"{mc.psi_warn:g} / {mc.psi_alert:g}",
                f"{mc.ece_warn:g} / {mc.ece_alert:g}",
            ],
        }
    )
    sections: list[Section] = [
        Section(
            "drift",
            "Drift per feature",
            "Population stability index of each feature, current snapshot against the reference: under "
            f"{mc.psi_warn:g} no real shift, from {mc.psi_alert:g} a shift worth acting on (retrain, or find "
            "the broken pipeline). A feature missing from the current snapshot is an alert.",
            figure_png(plots.psi_figure(features, warn=mc.psi_warn, alert=mc.psi_alert)),
            (("PSI per feature", features),),
        ),
        Section(
            "shares",
            "Reference vs current, worst features",
            "Share of rows per bin (reference quantile bins; values outside the reference range and "
            "missing values have bins of their own) for the features that moved most.",
            figure_png(plots.shares_figure(result.features.bins, worst)),
        ),
    ]
    if result.scores is not None and result.score_dates is not None:
        ref_dates, cur_dates = (", ".join(d[:10] for d in dates) for dates in result.score_dates)
        sections.append(
            Section(
                "scores",
                "Drift of the served risk",
                f"Churn probability served on {ref_dates} against {cur_dates}.",
                figure_png(plots.shares_figure(result.scores.bins, list(result.scores.bins), columns=1)),
                (("PSI of the score", result.scores.table),),
            )
        )
    if result.calibration is not None and len(result.calibration):
        sections.append(
            Section(
                "calibration",
                "Calibration by week",
                "Mean served risk against realized churn (no activity in the label horizon) per week of "
                "scoring dates, over users the churn label covers. Weeks whose horizon has not closed by "
                "the last event are open and not judged; the latest judged week with at least "
                f"{mc.min_week_rows:,} labelled users alerts at ECE {mc.ece_alert:g}.",
                figure_png(plots.calibration_weeks_figure(result.calibration)),
                (("Calibration by week", result.calibration),),
            )
        )
    as_of = pd.to_datetime(current[s.AS_OF], utc=True).max()
    return render_html("engage: model monitor", as_of.to_pydatetime(), overview, sections)
