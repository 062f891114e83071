"""Feedback commands: what happened to logged decisions, from a file (the batch side of ``/feedback``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from engage.cli.common import (
    ConfigOpt,
    SetOpt,
    build_config,
    check_paths,
    fail,
    file_errors,
    out,
    read_table,
)

__all__ = ["import_feedback"]

COLUMNS = ("decision_id", "event", "ts", "revenue", "idempotency_key")
SHOWN = 5


@file_errors
def import_feedback(
    path: Annotated[
        Path,
        typer.Argument(
            help="Reports: CSV, JSON Lines (.jsonl) or Parquet with decision_id, event, ts [, revenue]."
        ),
    ],
    decisions: Annotated[
        Path | None, typer.Option(help="Decision log folder (default: serve.decision_log_dir).")
    ] = None,
    feedback_log: Annotated[
        Path | None, typer.Option(help="Feedback log folder (default: serve.feedback_log_dir).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Append reports to the feedback log like POST /feedback: validated, each kept once, unknown
    decisions set aside with the reason; prints accepted, duplicate, aside and rejected counts."""
    cfg = build_config(config, set_)
    decisions = decisions or Path(cfg.serve.decision_log_dir)
    feedback_log = feedback_log or Path(cfg.serve.feedback_log_dir)
    check_paths(read={"PATH": path}, folders={"--decisions": decisions, "--feedback-log": feedback_log})
    rows = _rows(path)
    from datetime import timedelta

    from pydantic import ValidationError

    from engage.scoring.feedback import DecisionIndex, FeedbackBook, FeedbackItem
    from engage.serving.schemas import FeedbackRequest

    items: list[FeedbackItem] = []
    rejected: list[str] = []
    for number, row in enumerate(rows, start=1):
        try:
            report = FeedbackRequest.model_validate({k: v for k, v in row.items() if v is not None})
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            rejected.append(f"row {number}: {'.'.join(map(str, first['loc'])) or 'row'}: {first['msg']}")
            continue
        items.append(
            FeedbackItem(report.decision_id, report.event, report.ts, report.revenue, report.idempotency_key)
        )
    max_age = timedelta(days=cfg.serve.feedback_max_age_days)
    book = FeedbackBook(
        feedback_log,
        DecisionIndex(decisions, max_age=max_age),
        max_age=max_age,
        max_future=timedelta(minutes=cfg.serve.max_future_minutes),
    )
    try:
        verdicts = book.submit(items)
    finally:
        book.close()
    counts = {status: 0 for status in ("accepted", "duplicate", "aside", "rejected")}
    for verdict in verdicts:
        counts[verdict.status] += 1
    counts["rejected"] += len(rejected)
    reasons: dict[str, int] = {}
    for verdict in verdicts:
        if verdict.status == "aside" and verdict.reason:
            reasons[verdict.reason] = reasons.get(verdict.reason, 0) + 1
    late = [v.reason for v in verdicts if v.status == "rejected" and v.reason]
    out.print(
        f"{len(rows):,} reports from {path}: {counts['accepted']:,} accepted, "
        f"{counts['duplicate']:,} duplicate, {counts['aside']:,} aside, {counts['rejected']:,} rejected "
        f"-> {feedback_log}",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    for reason, n in sorted(reasons.items()):
        out.print(f"  aside: {n:,} {reason}", highlight=False, markup=False)
    for line in [*rejected, *late][:SHOWN]:
        out.print(f"  rejected {line}", soft_wrap=True, highlight=False, markup=False)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The file's rows as dicts of the report columns (others are ignored); JSON Lines read here,
    CSV and Parquet through ``read_table``. Times stay as written: the report model reads them."""
    import polars as pl

    if path.suffix.lower() in (".jsonl", ".ndjson"):
        try:
            frame = pl.read_ndjson(path, infer_schema_length=None)
        except Exception as exc:  # polars raises many types; the user needs the file and the cause
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise fail(f"PATH {path}: cannot be read as JSON Lines ({cause})") from exc
    else:
        frame = read_table(path, "PATH")
    missing = [c for c in ("decision_id", "event", "ts") if c not in frame.columns]
    if missing:
        raise fail(
            f"PATH {path}: missing required column(s) {', '.join(missing)}; "
            f"columns found: {', '.join(frame.columns) or 'none'}"
        )
    return frame.select([c for c in COLUMNS if c in frame.columns]).to_dicts()
