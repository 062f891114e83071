"""Data commands: simulate, validate, import a real data set, features, training table, report."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from engage.cli.common import (
    ConfigOpt,
    EngineOpt,
    SetOpt,
    Source,
    build_config,
    check_paths,
    console,
    fail,
    file_errors,
    load_events,
    out,
    parse_date,
    parse_days,
    progress_bar,
    read_exposures,
    read_users,
    source,
)
from engage.config import EngageConfig

__all__ = [
    "dataset",
    "features",
    "import_cdnow",
    "import_hillstrom",
    "import_online_retail_ii",
    "report",
    "simulate",
    "validate",
]


@file_errors
def simulate(
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the parquet files (default demo/data; with --resume: WORLD)."),
    ] = None,
    users: Annotated[int | None, typer.Option(help="Number of users.")] = None,
    days: Annotated[int | None, typer.Option(help="Days of history (with --resume: days to add).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same files).")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Carry this simulated world on (a folder simulate wrote).")
    ] = None,
    decisions: Annotated[
        Path | None, typer.Option(help="--resume: the decision log the world's users answer.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Simulate users, events and randomized campaigns with ground truth, or carry a world on."""
    from engage.datasets.simulate import simulate as run_simulation
    from engage.datasets.simulate import write_simulation

    if resume is not None:
        if users is not None or seed is not None:
            raise fail("--users and --seed come from the world itself with --resume")
        _resume_world(resume, decisions, days, out_dir)
        return
    if decisions is not None:
        raise fail("--decisions goes with --resume WORLD")
    out_dir = out_dir or Path("demo/data")
    check_paths(folders={"--out": out_dir})
    cfg = build_config(config, set_, **{"simulate.users": users, "simulate.days": days, "seed": seed})
    started = time.perf_counter()
    with console.status(f"simulating {cfg.simulate.users:,} users x {cfg.simulate.days} days"):
        data = run_simulation(
            cfg.simulate.users,
            cfg.simulate.days,
            seed=cfg.seed,
            start=cfg.simulate.start,
            campaign_every_days=cfg.simulate.campaign_every_days,
            oracle_horizon_days=cfg.labels.horizon_days,
            timing=cfg.simulate.timing,
        )
        paths = write_simulation(data, out_dir)
    _print_tables(paths, f"simulated in {time.perf_counter() - started:.1f} s (seed {cfg.seed})")


def _print_tables(paths: dict[str, Path], title: str) -> None:
    import polars as pl

    table = Table("table", "rows", "file", title=title)
    for name, path in paths.items():
        table.add_row(name, f"{pl.scan_parquet(path).select(pl.len()).collect().item():,}", str(path))
    out.print(table)


def _resume_world(world: Path, decisions: Path | None, days: int | None, out_dir: Path | None) -> None:
    """engage simulate --resume: the world answers the logged decisions for `days` more days."""
    from engage.datasets.resume import resume as run_resume
    from engage.datasets.simulate import read_simulation, write_simulation
    from engage.scoring.decision_log import read_decisions

    if decisions is None or days is None:
        raise fail("--resume needs --decisions DIR (the decision log) and --days N")
    check_paths(sources={"--resume": world, "--decisions": decisions}, folders={"--out": out_dir})
    if not world.is_dir():
        raise fail(f"--resume {world}: is a file; give the folder simulate wrote")
    if not decisions.is_dir():
        raise fail(f"--decisions {decisions}: is a file; give the decision log folder")
    started = time.perf_counter()
    try:
        data = read_simulation(world)
        logged, skipped = read_decisions(decisions)
        resumed, counts = run_resume(data, logged, days)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise fail(f"--resume {world}: {exc}") from exc
    paths = write_simulation(resumed, out_dir or world)
    assert resumed.world is not None
    elapsed = time.perf_counter() - started
    _print_tables(paths, f"resumed {days} days in {elapsed:.1f} s (now day {resumed.world.day})")
    left_out = {
        "lines that are not decisions": skipped,
        "repeated decision_id": counts.duplicate_id,
        "dated before the world's end": counts.before_start,
        "dated after the new end": counts.after_end,
        "unknown or not yet signed-up user": counts.unknown_user,
        "unreadable decided_at": counts.bad_time,
    }
    out.print(
        f"decisions: {counts.rows:,} read, {counts.answered:,} answered "
        f"({counts.treated:,} sent a message, {counts.control:,} holdout or none)"
    )
    for reason, count in left_out.items():
        if count:
            out.print(f"  left out: {count:,} {reason}")


@file_errors
def validate(
    path: Annotated[Path, typer.Argument(help="Events file: CSV, Parquet or JSON Lines (.gz ok).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Write accepted.parquet and quarantine.parquet here.")
    ] = None,
    reference_time: Annotated[
        str | None,
        typer.Option(help="Quarantine events stamped after this instant (validation.reference_time)."),
    ] = None,
    map_: Annotated[
        list[str] | None, typer.Option("--map", help="Rename a column: THEIRS=OURS, e.g. timestamp=ts.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check an events file against the contract; print a summary; split accepted / quarantined."""
    from engage.events import EventsFileError, read_events, write_validation

    check_paths(read={"PATH": path}, folders={"--out-dir": out_dir})
    cfg = build_config(config, set_, **{"validation.reference_time": reference_time})
    column_map = dict(item.split("=", 1) for item in map_ or [] if "=" in item)
    when = cfg.validation.reference_time
    reference = parse_date(when, "--reference-time") if when else None
    started = time.perf_counter()
    try:
        result = read_events(path, reference_time=reference, column_map=column_map)
    except EventsFileError as exc:
        raise fail(str(exc)) from exc
    elapsed = time.perf_counter() - started
    for line in result.summary().lines():
        out.print(line, highlight=False)
    out.print(f"validated in {elapsed:.2f} s ({result.rows_in / max(elapsed, 1e-9):,.0f} rows/s)")
    if out_dir is not None:
        accepted, quarantine = write_validation(result, out_dir)
        out.print(f"wrote {accepted} and {quarantine}")


@file_errors
def import_online_retail_ii(
    path: Annotated[Path, typer.Argument(help="online_retail_II_*.parquet (or .csv)")],
    out_file: Annotated[Path, typer.Option("--out", help="Canonical events parquet.")],
) -> None:
    """UCI Online Retail II invoice lines -> purchase / refund events (guests quarantined)."""
    _import_events("online-retail-ii", path, out_file)


@file_errors
def import_cdnow(
    path: Annotated[Path, typer.Argument(help="CDNOW_master.txt(.gz) or CDNOW_sample.txt(.gz)")],
    out_file: Annotated[Path, typer.Option("--out", help="Canonical events parquet.")],
) -> None:
    """CDNOW purchase log -> purchase events."""
    _import_events("cdnow", path, out_file)


@file_errors
def import_hillstrom(
    path: Annotated[Path, typer.Argument(help="hillstrom.csv(.gz)")],
    out_file: Annotated[Path, typer.Option("--out", help="Campaign table parquet.")],
) -> None:
    """Hillstrom e-mail campaign -> a randomized campaign table (arm, outcomes, propensity)."""
    from engage.datasets.hillstrom import load_hillstrom
    from engage.events import EventsFileError

    check_paths(read={"PATH": path}, write={"--out": out_file})
    try:
        table = load_hillstrom(path)
    except EventsFileError as exc:
        raise fail(str(exc)) from exc
    _write_pandas(table, out_file)
    out.print(f"{len(table):,} rows, arms: {', '.join(sorted(table['arm'].unique()))} -> {out_file}")


def _import_events(name: str, path: Path, out_file: Path) -> None:
    from engage.atomic import write_parquet_atomic
    from engage.datasets.registry import ADAPTERS
    from engage.events import EventsFileError

    check_paths(read={"PATH": path}, write={"--out": out_file})
    try:
        result = ADAPTERS[name](path)
    except EventsFileError as exc:
        raise fail(str(exc)) from exc
    write_parquet_atomic(result.accepted, out_file)
    for line in result.summary().lines():
        out.print(line, highlight=False)
    if result.quarantine.height:
        qpath = out_file.with_name(out_file.stem + ".quarantine.parquet")
        write_parquet_atomic(result.quarantine, qpath)
        out.print(f"quarantine -> {qpath}")
    out.print(f"events -> {out_file}")


@file_errors
def features(
    events: Annotated[str, typer.Option(help="Events file (a folder or s3://... URI with --engine spark).")],
    as_of: Annotated[list[str], typer.Option("--as-of", help="Snapshot date(s); repeat for several.")],
    out_file: Annotated[Path, typer.Option("--out", help="Features parquet.")],
    users: Annotated[Path | None, typer.Option(help="Users table (attributes, consents).")] = None,
    exposures: Annotated[Path | None, typer.Option(help="Campaign exposures (message fatigue).")] = None,
    engine: EngineOpt = None,
    master: Annotated[str | None, typer.Option(help="Spark master with --engine spark.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Point-in-time features per (user, as_of): only events before as_of are read.

    With ``--engine spark`` the table is a Parquet data set (a folder) written by the executors."""
    cfg = build_config(config, set_, **{"features.engine": engine})
    events_in = source(events)  # a remote URI stays text: Spark reads it, the embedded engine refuses it
    spark = cfg.features.engine == "spark"
    check_paths(
        read={} if spark else {"--users": users, "--exposures": exposures},
        write={} if spark else {"--out": out_file},
        folders={"--out": out_file} if spark else {},
        # Spark reads a folder too; the polars reader says it needs a file
        sources={"--events": events_in, **({"--users": users, "--exposures": exposures} if spark else {})},
        remote_ok=spark,
    )
    dates = [parse_date(d) for d in as_of]
    if cfg.features.engine == "spark":
        from engage.spark.scoring import write_features
        from engage.spark.session import spark_session

        reference = cfg.validation.reference_time
        run = write_features(
            spark_session(cfg.spark, master=master),
            events_in,
            dates,
            cfg,
            out_file,
            users=users,
            exposures=exposures,
            reference_time=parse_date(reference) if reference else None,
        )
        if run.quarantined:
            out.print(f"{run.quarantined:,} of {run.rows_in:,} event rows quarantined -> {run.quarantine}")
        out.print(f"{run.users:,} rows -> {out_file} (a Parquet data set)")
        return
    table = _compute_features(events_in, dates, cfg, users, exposures)
    _write_pandas(table, out_file)
    out.print(f"{len(table):,} rows x {table.shape[1] - 2} features -> {out_file}")


def _compute_features(
    events: Source, dates: list[datetime], cfg: EngageConfig, users: Path | None, exposures: Path | None
) -> Any:
    user_table, exposure_table = read_users(users), read_exposures(exposures)
    from engage.features import build_features

    frame = load_events(events, cfg)
    with progress_bar("features") as progress:
        return build_features(
            frame,
            dates,
            config=cfg.features,
            users=user_table,
            exposures=exposure_table,
            engine=cfg.features.engine,
            progress=progress,
        )


def _write_pandas(table: Any, path: Path) -> None:
    import polars as pl

    from engage.atomic import write_parquet_atomic

    write_parquet_atomic(pl.from_pandas(table), path)


@file_errors
def dataset(
    events: Annotated[Path, typer.Option(help="Events file.")],
    start: Annotated[str, typer.Option(help="First snapshot date.")],
    end: Annotated[str, typer.Option(help="Last snapshot date (inclusive).")],
    out_file: Annotated[Path, typer.Option("--out", help="Training table parquet.")],
    every: Annotated[str, typer.Option(help="Days between snapshots, e.g. 28d.")] = "28d",
    horizon: Annotated[str, typer.Option(help="Churn horizon, e.g. 30d.")] = "30d",
    users: Annotated[Path | None, typer.Option(help="Users table.")] = None,
    exposures: Annotated[Path | None, typer.Option(help="Campaign exposures.")] = None,
    engine: EngineOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Stacked snapshots: features as of each date + churn label over the horizon after it."""
    from engage.labels import InsufficientDataError, build_training_table, check_sufficiency

    check_paths(
        read={"--events": events, "--users": users, "--exposures": exposures}, write={"--out": out_file}
    )
    cfg = build_config(
        config,
        set_,
        **{
            "features.engine": engine,
            "labels.every_days": parse_days(every, "--every"),
            "labels.horizon_days": parse_days(horizon, "--horizon"),
        },
    )
    frame = load_events(events, cfg)
    user_table, exposure_table = read_users(users), read_exposures(exposures)
    builder: Callable[..., Any] | None = None
    if cfg.features.engine == "spark":
        from engage.spark import build_features_spark

        builder = build_features_spark
    with progress_bar("snapshots") as progress:
        table = build_training_table(
            frame,
            parse_date(start, "--start"),
            parse_date(end, "--end"),
            feature_config=cfg.features,
            label_config=cfg.labels,
            users=user_table,
            exposures=exposure_table,
            progress=progress,
            feature_builder=builder,
        )
    _write_pandas(table, out_file)
    rates = table.groupby("as_of")["churned"].agg(["size", "mean"])
    summary = Table("as_of", "users", "churn rate", title=f"{len(table):,} rows -> {out_file}")
    for as_of_value, row in rates.iterrows():
        summary.add_row(str(as_of_value)[:10], f"{int(row['size']):,}", f"{row['mean']:.1%}")
    out.print(summary)
    try:
        check_sufficiency(table, cfg.labels)
    except InsufficientDataError as exc:
        console.print(f"[yellow]warning:[/] {exc}")


@file_errors
def report(
    events: Annotated[Path, typer.Option(help="Events file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for CSV, PNG and report.html.")],
    as_of: Annotated[
        str | None, typer.Option(help="Report as of this date (default: just after the last event).")
    ] = None,
    period: Annotated[Literal["M", "W"], typer.Option(help="Cohort period: M (months) or W (weeks).")] = "M",
    activity: Annotated[
        list[str] | None,
        typer.Option(help="Event types that count as activity for cohorts (repeat; default: all)."),
    ] = None,
    segment: Annotated[str | None, typer.Option(help="Events column that splits the funnel.")] = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Cohort retention, funnel, RFM segments, loyalty tiers and engagement scores as one HTML page."""
    from datetime import timedelta

    from engage.report import build_report

    check_paths(read={"--events": events}, folders={"--out": out_dir})
    frame = load_events(events, build_config(config, set_))
    moment = frame["ts"].max() + timedelta(microseconds=1) if as_of is None else parse_date(as_of)
    extra: dict[str, Any] = {"cohort_period": period, "activity_types": activity, "funnel_segment": segment}
    if title:
        extra["title"] = title
    with console.status("report") as status:
        path = build_report(
            frame,
            as_of=moment,
            out_dir=out_dir,
            progress=lambda msg: status.update(f"report: {msg}"),
            **extra,
        )
    out.print(f"report -> {path}")
