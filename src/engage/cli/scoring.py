"""Scoring commands: score every user as of a date with the champion models, back-test past scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from engage import schemas as s
from engage.cli.common import (
    ConfigOpt,
    EngineOpt,
    SetOpt,
    build_config,
    check_paths,
    fail,
    file_errors,
    load_events,
    out,
    parse_date,
    parse_days,
    progress_bar,
    quiet_env,
    read_exposures,
    read_table,
    read_users,
    source,
)
from engage.cli.online import load_snapshot, score_target

__all__ = ["backtest", "score"]


@file_errors
def score(
    events: Annotated[str, typer.Option(help="Events file (a folder or s3://... URI with --engine spark).")],
    as_of: Annotated[
        str, typer.Option("--as-of", help="Score as of this instant (features read before it).")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Scores parquet (written atomically).")],
    users: Annotated[str | None, typer.Option(help="Users table (consents, attributes).")] = None,
    exposures: Annotated[str | None, typer.Option(help="Past exposures (caps, cooldowns, fatigue).")] = None,
    engine: EngineOpt = None,
    explain: Annotated[bool, typer.Option("--explain", help="Reasons for every user.")] = False,
    explain_top: Annotated[
        float | None, typer.Option(help="Reasons only for the riskiest share, e.g. 0.1 (default).")
    ] = None,
    snapshot: Annotated[Path | None, typer.Option(help="Feature snapshot for the service.")] = None,
    decision_log: Annotated[Path | None, typer.Option(help="Decision log folder.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (models@champion).")] = None,
    master: Annotated[
        str | None,
        typer.Option(
            help="Spark master with --engine spark (local[4], spark://host:7077; default spark.master)."
        ),
    ] = None,
    online_store: Annotated[
        str | None,
        typer.Option(
            "--online-store",
            help="Also load the snapshot's latest row per user into this Redis (redis://host:port/db) "
            "for /score; default: serve.online_store when serve.online_features is on; 'local': not loaded.",
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Churn risk, reasons and the chosen message for every user, as of one date.

    With ``--engine spark`` the scores, the snapshot and the quarantine are Parquet data sets (folders)
    written by the executors, and the decisions one batch of the decision log. With ``--online-store``
    the snapshot's latest row per user then goes into Redis as ``engage online load`` puts it there."""
    quiet_env()
    cfg = build_config(
        config, set_, **{"tracking.uri": tracking_uri, "features.engine": engine, "spark.master": master}
    )
    share = 1.0 if explain else (explain_top if explain_top is not None else 0.1)
    moment = parse_date(as_of)
    snapshot = snapshot or Path(cfg.serve.feature_snapshot_path)
    decision_log = decision_log or Path(cfg.serve.decision_log_dir)
    online_url = score_target(online_store, cfg)  # a bad URL is refused before any scoring
    events_in = source(events)  # a remote URI stays text: Spark reads it, the embedded engine refuses it
    users_in = source(users) if users is not None else None
    exposures_in = source(exposures) if exposures is not None else None
    spark = cfg.features.engine == "spark"
    tables = {"--users": users_in, "--exposures": exposures_in}
    datasets = {"--out": out_file, "--snapshot": snapshot}  # Spark writes data sets (folders)
    check_paths(
        read={} if spark else tables,
        # Spark reads a folder too; the polars reader says it needs a file
        sources={"--events": events_in, **(tables if spark else {})},
        write={} if spark else datasets,
        folders={"--decision-log": decision_log, **(datasets if spark else {})},
        remote_ok=spark,
    )
    from engage.scoring.champions import load_champions

    try:
        models = load_champions(cfg)
    except LookupError as exc:
        raise fail(str(exc)) from exc
    if spark:
        from engage.spark import score_spark
        from engage.spark.scoring import quarantine_beside

        summary = score_spark(
            events_in,
            moment,
            models,
            cfg,
            out_file,
            users=users_in,
            exposures=exposures_in,
            explain_share=share,
            snapshot=snapshot,
            decision_log=decision_log,
        )
        if summary.stages.get("quarantined"):
            quarantined, rows_in = int(summary.stages["quarantined"]), int(summary.stages["rows_in"])
            out.print(
                f"{quarantined:,} of {rows_in:,} event rows quarantined -> {quarantine_beside(out_file)}"
            )
    else:
        from engage.scoring.job import score_events

        frame = load_events(events_in, cfg)
        user_table, exposure_table = read_users(users_in), read_exposures(exposures_in)
        with progress_bar("scoring users") as progress:
            summary = score_events(
                frame,
                moment,
                models,
                cfg,
                out_file,
                users=user_table,
                exposures=exposure_table,
                explain_share=share,
                snapshot=snapshot,
                decision_log=decision_log,
                progress=progress,
            )
    out.print(
        f"{summary.users:,} users scored in {summary.seconds:.1f} s "
        f"({summary.users_per_second:,.0f} users/s), {summary.explained:,} with reasons -> {out_file}"
    )
    logged = summary.decisions
    if logged is not None and logged.already_logged:
        out.print(f"decision log: this batch is already in {logged.path} (a re-run): nothing appended")
    elif logged is not None:
        out.print(f"decision log: {logged.rows:,} decisions -> {logged.path}")
    _print_score_summary(out_file)
    if online_url is not None:
        if summary.snapshot is None:
            out.print(f"no users with features: no snapshot written, nothing loaded into {online_url}")
        else:
            load_snapshot(
                summary.snapshot,
                online_url,
                cfg,
                written=f" (the scores {out_file} and the snapshot {summary.snapshot} are written: "
                f"`engage online load --snapshot {summary.snapshot}` loads them once the store answers)",
            )


def _print_score_summary(path: Path) -> None:
    import polars as pl

    # a Spark run writes a data set (a folder of part files)
    scores = pl.read_parquet(path / "*.parquet" if path.is_dir() else path)
    if scores.is_empty():
        return
    bands = scores.group_by("risk_band").agg(
        pl.len().alias("users"), pl.col("churn_probability").mean().alias("risk")
    )
    messages = scores.group_by("message_id").agg(
        pl.len().alias("users"), pl.col(s.EXPECTED_GAIN).mean().alias("gain")
    )
    table = Table("risk band", "users", "mean risk", title="risk")
    for row in bands.sort("risk").iter_rows(named=True):
        table.add_row(row["risk_band"], f"{row['users']:,}", f"{row['risk']:.1%}")
    out.print(table)
    table = Table("message", "users", "mean expected gain", title="messages chosen")
    for row in messages.sort("users", descending=True).iter_rows(named=True):
        table.add_row(row["message_id"], f"{row['users']:,}", f"{row['gain']:.3f}")
    out.print(table)


@file_errors
def backtest(
    scores: Annotated[Path, typer.Option(help="A past `engage score` output.")],
    events: Annotated[Path, typer.Option(help="Events, including those after the scoring date.")],
    horizon: Annotated[
        str | None, typer.Option(help="Churn horizon, e.g. 30d (default: labels.horizon_days).")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for tables and PNG plots.")] = Path(
        "backtest"
    ),
    attribution: Annotated[
        str | None,
        typer.Option(help="Conversion window after scoring, e.g. 7d (default: offers.attribution_days)."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """How the served risk and messages played out: realized churn by decile, AUC, calibration."""

    from engage.evaluation.backtest import backtest as run_backtest

    cfg = build_config(
        config,
        set_,
        **{
            "labels.horizon_days": parse_days(horizon, "--horizon") if horizon else None,
            "offers.attribution_days": parse_days(attribution, "--attribution") if attribution else None,
        },
    )
    check_paths(read={"--scores": scores, "--events": events}, folders={"--out": out_dir})
    served = read_table(scores, "--scores").to_pandas()
    frame = load_events(events, cfg)
    try:
        result = run_backtest(
            served,
            frame,
            horizon_days=cfg.labels.horizon_days,
            attribution_days=cfg.offers.attribution_days,
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    result.deciles.to_csv(out_dir / "deciles.csv", index=False)
    result.messages.to_csv(out_dir / "messages.csv", index=False)
    for name, figure in result.figures.items():
        figure.savefig(out_dir / f"{name}.png", dpi=110)
    table = Table("metric", "value", title=f"back-test of {scores}")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    out.print(table)
    out.print(f"tables and plots -> {out_dir}")
