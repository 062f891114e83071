"""Loop commands: what followed each logged decision (`engage outcomes`) and the judgement of the log
(`engage evaluate decisions`): lift vs holdout and off-policy values, as Parquet, JSON and HTML."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

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
    parse_days,
    progress_bar,
    quiet_env,
    read_table,
    read_users,
)

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

    from engage.config import EngageConfig

__all__ = ["evaluate_decisions", "outcomes"]

DecisionsOpt = Annotated[Path, typer.Option(help="Decision log folder (as `engage score`/`serve` write it).")]
WindowOpt = Annotated[
    str, typer.Option(help="Outcome window after each decision, e.g. 7d or 2w (events strictly after it).")
]
ActiveOpt = Annotated[
    str | None,
    typer.Option(
        help="still_active: an event from this long after the decision on (default: half the window)."
    ),
]
FeedbackOpt = Annotated[
    Path | None,
    typer.Option(
        help="Feedback: a table (Parquet/CSV: decision_id, event, revenue, ts) of what was reported."
    ),
]


def _check_log(decisions: Path) -> None:
    """Stop the command unless ``decisions`` is a folder holding decision log files."""
    from engage.scoring.decision_log import log_files

    if not decisions.exists():
        raise fail(f"--decisions {decisions}: folder not found")
    if not decisions.is_dir():
        raise fail(f"--decisions {decisions}: is a file; give the decision log folder")
    if not log_files(decisions):
        raise fail(f"--decisions {decisions}: no decision log files in it")


def _read_log(decisions: Path) -> tuple[pd.DataFrame, int]:
    """The decision log and its skipped-line count; no readable decision at all stops the command."""
    from engage.scoring.decision_log import read_decisions

    frame, skipped = read_decisions(decisions)
    if skipped:
        console.print(
            f"[yellow]--decisions {decisions}: {skipped:,} line(s) skipped (cut short or not a decision)[/]"
        )
    if frame.empty:
        raise fail(f"--decisions {decisions}: no readable decisions ({skipped:,} line(s) skipped)")
    return frame, skipped


def _read_feedback(path: Path | None) -> pd.DataFrame | pl.DataFrame | None:
    """The feedback log (a folder, as `/feedback` and `engage feedback import` write it) or a table."""
    if path is None or not path.is_dir():
        return read_table(path, "--feedback", required=("decision_id", "event", "ts"), timestamps=("ts",))
    from engage.scoring.feedback import read_feedback

    frame, skipped = read_feedback(path)
    if skipped:
        console.print(
            f"[yellow]--feedback {escape(str(path))}: {skipped:,} line(s) skipped "
            "(cut short or not a report)[/]",
            soft_wrap=True,
            highlight=False,
        )
    return frame


def _outcomes(
    decisions: Path,
    events: Path | None,
    feedback: Path | None,
    window: str,
    active: str | None,
    cfg: EngageConfig,
    progress: Callable[[int, int], None],
) -> tuple[pl.DataFrame, int, int, pl.DataFrame | None]:
    """(outcomes, skipped log lines, window days, events), stage by stage on ``progress``."""
    from engage.offers.outcomes import decision_outcomes

    window_days = parse_days(window, "--window")
    active_days = None if active is None else parse_days(active, "--active")
    if events is None and feedback is None:
        raise fail("give --events, --feedback or both: outcomes need what followed the decisions")
    progress(0, 4)
    log, skipped = _read_log(decisions)
    progress(1, 4)
    frame = load_events(events, cfg) if events is not None else None
    reports = _read_feedback(feedback)
    progress(2, 4)
    try:
        result = decision_outcomes(
            log, frame, window_days=window_days, active_days=active_days, feedback=reports
        )
    except (KeyError, ValueError) as exc:
        raise fail(str(exc)) from exc
    progress(3, 4)
    return result, skipped, window_days, frame


@file_errors
def outcomes(
    decisions: DecisionsOpt,
    out_path: Annotated[Path, typer.Option("--out", help="Parquet file: one row per decision.")],
    events: Annotated[Path | None, typer.Option(help="Events file (what users did).")] = None,
    window: WindowOpt = "7d",
    active: ActiveOpt = None,
    feedback: FeedbackOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Each logged decision (holdouts and `none` included) with what followed it inside the window."""
    check_paths(read={"--events": events}, sources={"--feedback": feedback}, write={"--out": out_path})
    _check_log(decisions)
    cfg = build_config(config, set_)
    with progress_bar("outcomes") as progress:
        result, skipped, window_days, _ = _outcomes(
            decisions, events, feedback, window, active, cfg, progress
        )
        from engage.atomic import write_parquet_atomic

        metadata = {"engage.skipped_lines": str(skipped), "engage.window_days": str(window_days)}
        write_parquet_atomic(result, out_path, metadata=metadata)
        progress(4, 4)
    converted = float(result["converted"].sum()) / max(result.height, 1)
    out.print(
        f"{result.height:,} decisions -> {out_path} ({converted:.1%} converted within {window_days} days; "
        f"{skipped:,} log line(s) skipped)",
        soft_wrap=True,
        highlight=False,
    )


def _candidate(
    uri: str, frame: pd.DataFrame, events: pl.DataFrame, users: pl.DataFrame | None, cfg: EngageConfig
) -> pd.DataFrame:
    """The candidate offers model's policy on every logged decision, from features as of its ``as_of``.

    The contact history is the log itself: messages sent (not `none`) before each ``as_of``.
    """
    import pandas as pd
    import polars as pl

    from engage import schemas as s
    from engage import tracking
    from engage.evaluation.judge import candidate_policy
    from engage.features import build_features
    from engage.models.bundle import OfferBundle
    from engage.offers.catalog import load_catalog

    try:
        tracking.configure(cfg.tracking.uri)
        bundle = tracking.load_estimator(uri)
    except Exception as exc:  # MLflow raises many kinds; the user needs the URI and the cause
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(f"--candidate {uri}: cannot be loaded ({cause})") from exc
    if not isinstance(bundle, OfferBundle):
        raise fail(f"--candidate {uri}: is a {type(bundle).__name__}, not an offers model")
    decided = pd.to_datetime(frame["decided_at"], utc=True)
    as_of = pd.to_datetime(frame.get(s.AS_OF), utc=True, format="ISO8601", errors="coerce")
    keys = pd.DataFrame({s.USER_ID: frame[s.USER_ID].astype(str), s.AS_OF: as_of.fillna(decided)})
    sent = frame[s.MESSAGE_ID].astype(str) != s.CONTROL_ARM
    contacts = pl.from_pandas(
        pd.DataFrame(
            {
                s.USER_ID: keys[s.USER_ID][sent],
                s.TS: decided[sent],
                s.MESSAGE_ID: frame[s.MESSAGE_ID][sent].astype(str),
                s.CHANNEL: frame[s.CHANNEL][sent].astype("string") if s.CHANNEL in frame else None,
            }
        )
    )
    dates = [d.to_pydatetime() for d in sorted(keys[s.AS_OF].unique())]
    with console.status(f"candidate: features as of {len(dates):,} decision time(s)"):
        features = build_features(events, dates, config=cfg.features, users=users, exposures=contacts)
    features[s.AS_OF] = pd.to_datetime(features[s.AS_OF], utc=True)
    features = features.drop(columns=[c for c in (s.CHANNEL, s.MESSAGE_ID) if c in features.columns])
    table = keys.merge(features, on=[s.USER_ID, s.AS_OF], how="left")
    try:
        return candidate_policy(bundle, table, load_catalog(cfg.offers.catalog_path), cfg)
    except (KeyError, ValueError) as exc:
        raise fail(f"--candidate {uri}: {exc}") from exc


@file_errors
def evaluate_decisions(
    decisions: DecisionsOpt,
    events: Annotated[Path, typer.Option(help="Events file (what users did after each decision).")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for summary.json, report.html, PNG and CSV.")
    ],
    candidate: Annotated[
        str | None, typer.Option(help="Candidate offers model URI (e.g. models:/engage-offers/3) to judge.")
    ] = None,
    feedback: FeedbackOpt = None,
    users: Annotated[
        Path | None, typer.Option(help="Users table (consents) for --candidate's features.")
    ] = None,
    window: WindowOpt = "7d",
    active: ActiveOpt = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for every CI.")] = 500,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI: log the page, plots and figures there.")
    ] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Did the messages work (lift vs holdout) and would a candidate do better (IPS, SNIPS, DR)?"""
    quiet_env()
    from engage.evaluation.judge import judge_decisions
    from engage.loop_report import judgement_html
    from engage.offers.catalog import load_catalog

    check_paths(
        read={"--events": events, "--users": users},
        sources={"--feedback": feedback},
        folders={"--out": out_dir},
    )
    _check_log(decisions)
    if n_boot < 1:
        raise fail(f"--n-boot must be at least 1, got {n_boot}")
    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri, "tracking.experiment": experiment})
    with progress_bar("evaluate decisions") as progress:
        result, skipped, window_days, event_frame = _outcomes(
            decisions, events, feedback, window, active, cfg, lambda done, total: progress(done, total + 2)
        )
        frame = result.to_pandas()
        candidates: dict[str, pd.DataFrame] = {}
        if candidate is not None and event_frame is not None:
            candidates["candidate"] = _candidate(candidate, frame, event_frame, read_users(users), cfg)
        progress(4, 6)
        try:
            judgement = judge_decisions(
                frame,
                load_catalog(cfg.offers.catalog_path),
                candidates=candidates,
                risk_thresholds=cfg.churn.risk_bands,
                n_boot=n_boot,
                seed=seed,
                skipped_lines=skipped,
            )
        except (KeyError, ValueError) as exc:
            raise fail(str(exc)) from exc
        progress(5, 6)
        summary = judgement.summary() | {"window_days": window_days, "candidate": candidate}
        latest: datetime = result["decided_at"].dt.max()  # type: ignore[assignment]
        as_of = latest + timedelta(days=window_days)
        page, figures = judgement_html(judgement, as_of=as_of)
        _write_judgement(out_dir, summary, page, figures, judgement)
        progress(6, 6)
    if tracking_uri is not None or os.environ.get("MLFLOW_TRACKING_URI"):
        _log_mlflow(out_dir, summary, figures, judgement, cfg)
    _print_judgement(summary, out_dir)


def _write_judgement(
    out_dir: Path, summary: dict[str, Any], page: str, figures: dict[str, Any], judgement: Any
) -> None:
    from engage.atomic import write_text_atomic
    from engage.report import figure_png

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        (out_dir / f"{name}.png").write_bytes(figure_png(fig))
    for name, table in _tables(judgement).items():
        table.to_csv(out_dir / name, index=False)
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    # written last, whole: its presence means the judgement is complete
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def _tables(judgement: Any) -> dict[str, pd.DataFrame]:
    tables = {
        "lift_overall.csv": judgement.lift_overall,
        "lift_per_risk_band.csv": judgement.lift_by_band,
        "policy_values.csv": judgement.values.merge(judgement.overlap, on="policy", how="left"),
    }
    if judgement.lift_by_message is not None:
        tables["lift_per_message.csv"] = judgement.lift_by_message
    return tables


def _log_mlflow(
    out_dir: Path, summary: dict[str, Any], figures: dict[str, Any], judgement: Any, cfg: EngageConfig
) -> None:
    """The page, its figures and tables, and the headline numbers as one MLflow run."""
    from engage import tracking

    tracking.configure(cfg.tracking.uri)
    metrics: dict[str, float] = {
        "rows": float(summary["rows"]),
        "skipped_lines": float(summary["skipped_lines"]),
    }
    for metric, row in summary["overall_lift"].items():
        for key in ("lift", "ci_low", "ci_high"):
            if row[key] is not None:
                metrics[f"lift_{metric}_{key}"] = float(row[key])
    for row in summary["policies"]:
        if row["value"] is not None:
            metrics[f"value_{row['policy']}_{row['estimator']}"] = float(row["value"])
    with tracking.run(cfg.tracking.experiment, "evaluate-decisions"):
        tracking.log_metrics(metrics)
        tracking.log_figures(figures)
        for name, table in _tables(judgement).items():
            tracking.log_frame(table, f"tables/{name}")
        tracking.log_file(out_dir / "report.html")
        tracking.log_file(out_dir / "summary.json")
    out.print(f"logged to MLflow: {cfg.tracking.uri} (experiment {cfg.tracking.experiment})")


def _print_judgement(summary: dict[str, Any], out_dir: Path) -> None:
    from rich.table import Table

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:+.4f}"

    lift = Table(
        "metric", "lift vs holdout", "95% CI", "treated", "holdout", title="measured lift (all decisions)"
    )
    for metric, row in summary["overall_lift"].items():
        lift.add_row(
            metric,
            fmt(row["lift"]),
            f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]",
            f"{row['treated_n']:,}",
            f"{row['holdout_n']:,}",
        )
    out.print(lift)
    values = Table("policy", "estimator", "value", "95% CI", "ESS", "max weight", title="policy values")
    for row in summary["policies"]:
        values.add_row(
            row["policy"],
            row["estimator"],
            fmt(row["value"]),
            f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]",
            f"{row['ess']:,.0f}" if row["ess"] is not None else "n/a",
            f"{row['max_weight']:,.1f}" if row["max_weight"] is not None else "n/a",
        )
    out.print(values)
    for line in [*summary["warnings"], *summary["notes"]]:
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True, highlight=False)
    out.print(f"judgement -> {out_dir / 'summary.json'} and {out_dir / 'report.html'}")
