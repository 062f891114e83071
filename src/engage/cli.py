"""The `engage` command line: the edge where files, flags and config meet the pure layers.

Heavy libraries are imported inside each command so that `engage --help` stays instant.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from engage import schemas as s
from engage.config import ConfigError, EngageConfig, load_config

app = typer.Typer(
    name="engage",
    help="Churn risk, reasons and the next-best message from raw customer event logs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
import_app = typer.Typer(help="Convert a real data set into engage's tables.", no_args_is_help=True)
train_app = typer.Typer(help="Train models (tracked in MLflow).", no_args_is_help=True)
evaluate_app = typer.Typer(help="Judge models and policies offline.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")

console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: the packaged defaults).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one config value, e.g. --set labels.horizon_days=14."),
]

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def _quiet_env() -> None:
    """Telemetry off before any tracking or serving library is imported."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def build_config(path: Path | None, sets: list[str] | None, **flags: Any) -> EngageConfig:
    """The one config object: file, then ``--set`` overrides, then explicit command flags."""
    overrides: dict[str, Any] = {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise _fail(f"--set expects KEY=VALUE, got {item!r}")
        import yaml

        value = yaml.safe_load(raw)
        overrides[key.strip()] = raw if isinstance(value, date) else value  # dates are text in the config
    overrides.update({k: v for k, v in flags.items() if v is not None})
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc


def parse_date(value: str, option: str = "--as-of") -> datetime:
    """A date or timestamp from the command line, as an aware UTC datetime."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _fail(f"{option}: cannot read {value!r} as a date (use YYYY-MM-DD)") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_days(value: str, option: str) -> int:
    """'28d', '4w' or '28' -> days."""
    text = value.strip().lower()
    factor = 7 if text.endswith("w") else 1
    try:
        return int(text.rstrip("dw")) * factor
    except ValueError as exc:
        raise _fail(f"{option}: cannot read {value!r} as a duration (use e.g. 28d or 4w)") from exc


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar exposed as a ``progress(done, total)`` callback."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _load_events(path: Path, cfg: EngageConfig) -> Any:
    """Accepted events of a file; a file that can't be read stops the command with its message."""
    from engage.events import EventsFileError, read_events

    reference = parse_date(cfg.validation.reference_time) if cfg.validation.reference_time else None
    try:
        result = read_events(path, reference_time=reference)
    except EventsFileError as exc:
        raise _fail(str(exc)) from exc
    quarantined = result.quarantine.height
    if quarantined:
        console.print(
            f"[yellow]{path}: {quarantined:,} of {result.rows_in:,} rows quarantined "
            f"(run `engage validate {path}` for reasons)[/]"
        )
    return result.accepted


def _load_optional_table(path: Path | None) -> Any:
    if path is None:
        return None
    import polars as pl

    if not path.exists():
        raise _fail(f"{path}: file not found")
    return pl.read_parquet(path) if path.suffix != ".csv" else pl.read_csv(path, try_parse_dates=True)


# ---------------------------------------------------------------------------------------------
@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the four parquet files.")] = Path(
        "demo/data"
    ),
    users: Annotated[int | None, typer.Option(help="Number of users.")] = None,
    days: Annotated[int | None, typer.Option(help="Days of history.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same files).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Simulate users, events and randomized campaigns with ground truth."""
    from engage.datasets.simulate import simulate as run_simulation
    from engage.datasets.simulate import write_simulation

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
        )
        paths = write_simulation(data, out_dir)
    elapsed = time.perf_counter() - started
    table = Table("table", "rows", "file", title=f"simulated in {elapsed:.1f} s (seed {cfg.seed})")
    for name, path in paths.items():
        table.add_row(name, f"{getattr(data, name).height:,}", str(path))
    out.print(table)


@app.command()
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

    cfg = build_config(config, set_, **{"validation.reference_time": reference_time})
    column_map = dict(item.split("=", 1) for item in map_ or [] if "=" in item)
    when = cfg.validation.reference_time
    reference = parse_date(when, "--reference-time") if when else None
    started = time.perf_counter()
    try:
        result = read_events(path, reference_time=reference, column_map=column_map)
    except EventsFileError as exc:
        raise _fail(str(exc)) from exc
    elapsed = time.perf_counter() - started
    for line in result.summary().lines():
        out.print(line, highlight=False)
    out.print(f"validated in {elapsed:.2f} s ({result.rows_in / max(elapsed, 1e-9):,.0f} rows/s)")
    if out_dir is not None:
        accepted, quarantine = write_validation(result, out_dir)
        out.print(f"wrote {accepted} and {quarantine}")


@import_app.command("online-retail-ii")
def import_online_retail_ii(
    path: Annotated[Path, typer.Argument(help="online_retail_II_*.parquet (or .csv)")],
    out_file: Annotated[Path, typer.Option("--out", help="Canonical events parquet.")],
) -> None:
    """UCI Online Retail II invoice lines -> purchase / refund events (guests quarantined)."""
    _import_events("online-retail-ii", path, out_file)


@import_app.command("cdnow")
def import_cdnow(
    path: Annotated[Path, typer.Argument(help="CDNOW_master.txt(.gz) or CDNOW_sample.txt(.gz)")],
    out_file: Annotated[Path, typer.Option("--out", help="Canonical events parquet.")],
) -> None:
    """CDNOW purchase log -> purchase events."""
    _import_events("cdnow", path, out_file)


@import_app.command("hillstrom")
def import_hillstrom(
    path: Annotated[Path, typer.Argument(help="hillstrom.csv(.gz)")],
    out_file: Annotated[Path, typer.Option("--out", help="Campaign table parquet.")],
) -> None:
    """Hillstrom e-mail campaign -> a randomized campaign table (arm, outcomes, propensity)."""
    from engage.datasets.hillstrom import load_hillstrom
    from engage.events import EventsFileError

    if not path.exists():
        raise _fail(f"{path}: file not found")
    try:
        table = load_hillstrom(path)
    except EventsFileError as exc:
        raise _fail(str(exc)) from exc
    _write_pandas(table, out_file)
    out.print(f"{len(table):,} rows, arms: {', '.join(sorted(table['arm'].unique()))} -> {out_file}")


def _import_events(name: str, path: Path, out_file: Path) -> None:
    from engage.datasets.registry import ADAPTERS
    from engage.events import EventsFileError, write_parquet_atomic

    if not path.exists():
        raise _fail(f"{path}: file not found")
    try:
        result = ADAPTERS[name](path)
    except EventsFileError as exc:
        raise _fail(str(exc)) from exc
    write_parquet_atomic(result.accepted, out_file)
    for line in result.summary().lines():
        out.print(line, highlight=False)
    if result.quarantine.height:
        qpath = out_file.with_name(out_file.stem + ".quarantine.parquet")
        write_parquet_atomic(result.quarantine, qpath)
        out.print(f"quarantine -> {qpath}")
    out.print(f"events -> {out_file}")


@app.command()
def features(
    events: Annotated[Path, typer.Option(help="Events file.")],
    as_of: Annotated[list[str], typer.Option("--as-of", help="Snapshot date(s); repeat for several.")],
    out_file: Annotated[Path, typer.Option("--out", help="Features parquet.")],
    users: Annotated[Path | None, typer.Option(help="Users table (attributes, consents).")] = None,
    exposures: Annotated[Path | None, typer.Option(help="Campaign exposures (message fatigue).")] = None,
    engine: Annotated[str | None, typer.Option(help="polars (default) or spark.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Point-in-time features per (user, as_of): only events before as_of are read."""
    cfg = build_config(config, set_, **{"features.engine": engine})
    dates = [parse_date(d) for d in as_of]
    table = _compute_features(events, dates, cfg, users, exposures)
    _write_pandas(table, out_file)
    out.print(f"{len(table):,} rows x {table.shape[1] - 2} features -> {out_file}")


def _compute_features(
    events: Path, dates: list[datetime], cfg: EngageConfig, users: Path | None, exposures: Path | None
) -> Any:
    user_table, exposure_table = _load_optional_table(users), _load_optional_table(exposures)
    if cfg.features.engine == "spark":
        from engage.spark import build_features_spark

        return build_features_spark(
            events, dates, config=cfg.features, users=user_table, exposures=exposure_table
        )
    from engage.features import build_features

    frame = _load_events(events, cfg)
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

    from engage.events import write_parquet_atomic

    write_parquet_atomic(pl.from_pandas(table), path)


@app.command()
def dataset(
    events: Annotated[Path, typer.Option(help="Events file.")],
    start: Annotated[str, typer.Option(help="First snapshot date.")],
    end: Annotated[str, typer.Option(help="Last snapshot date (inclusive).")],
    out_file: Annotated[Path, typer.Option("--out", help="Training table parquet.")],
    every: Annotated[str, typer.Option(help="Days between snapshots, e.g. 28d.")] = "28d",
    horizon: Annotated[str, typer.Option(help="Churn horizon, e.g. 30d.")] = "30d",
    users: Annotated[Path | None, typer.Option(help="Users table.")] = None,
    exposures: Annotated[Path | None, typer.Option(help="Campaign exposures.")] = None,
    engine: Annotated[str | None, typer.Option(help="polars (default) or spark.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Stacked snapshots: features as of each date + churn label over the horizon after it."""
    from engage.labels import InsufficientDataError, build_training_table, check_sufficiency

    cfg = build_config(
        config,
        set_,
        **{
            "features.engine": engine,
            "labels.every_days": parse_days(every, "--every"),
            "labels.horizon_days": parse_days(horizon, "--horizon"),
        },
    )
    frame = _load_events(events, cfg)
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
            users=_load_optional_table(users),
            exposures=_load_optional_table(exposures),
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


@app.command()
def report(
    events: Annotated[Path, typer.Option(help="Events file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for CSV, PNG and report.html.")],
    as_of: Annotated[
        str | None, typer.Option(help="Report as of this date (default: just after the last event).")
    ] = None,
    period: Annotated[str, typer.Option(help="Cohort period: M (months) or W (weeks).")] = "M",
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

    frame = _load_events(events, build_config(config, set_))
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


@train_app.command("churn")
def train_churn_command(
    events: Annotated[Path, typer.Option(help="Events file.")],
    users: Annotated[Path | None, typer.Option(help="Users table (attributes, consents).")] = None,
    exposures: Annotated[Path | None, typer.Option(help="Campaign exposures (message fatigue).")] = None,
    states: Annotated[
        Path | None, typer.Option(help="Simulator states.parquet: adds oracle_auc to the metrics.")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Out-of-time churn model (LightGBM + calibration) vs logistic and recency baselines, in MLflow."""
    _quiet_env()
    from engage.labels import InsufficientDataError
    from engage.training.churn import train_churn

    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri, "tracking.experiment": experiment})
    frame = _load_events(events, cfg)
    try:
        with progress_bar("snapshots") as progress:
            result = train_churn(
                frame,
                cfg,
                users=_load_optional_table(users),
                exposures=_load_optional_table(exposures),
                states=_load_optional_table(states),
                progress=progress,
            )
    except (InsufficientDataError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    _print_churn_result(result, cfg)


def _print_churn_result(result: Any, cfg: EngageConfig) -> None:
    metrics = result.metrics
    table = Table("model", "AUC", "PR AUC", "log loss", "Brier", "ECE", "lift@10%", title="out-of-time test")
    for label, suffix in (
        ("LightGBM (calibrated)", ""),
        ("logistic regression", "_logreg"),
        ("recency rule", "_recency"),
    ):
        table.add_row(
            label,
            *(
                f"{metrics.get(f'oot_{key}{suffix}', float('nan')):.4f}"
                for key in ("auc", "pr_auc", "logloss", "brier", "ece", "lift_top_decile")
            ),
        )
    out.print(table)
    if "oracle_auc" in metrics:
        out.print(f"oracle AUC (true churn probability, same rows): {metrics['oracle_auc']:.4f}")
    drivers = Table("driver", "direction", "importance", title="what marks churners")
    for _, row in result.drivers.head(8).iterrows():
        drivers.add_row(
            str(row["feature"]), str(row.get("direction", "")), f"{row.get('importance', float('nan')):.3f}"
        )
    out.print(drivers)
    status = "promoted to @champion" if result.promoted else "kept as @challenger (champion not beaten)"
    out.print(f"registered {cfg.tracking.churn_model_name} v{result.version}: {status}")
    out.print(f"run {result.run_id}; see it with: mlflow ui --backend-store-uri {cfg.tracking.uri}")


@train_app.command("offers")
def train_offers_command(
    events: Annotated[Path | None, typer.Option(help="Events file (with --exposures).")] = None,
    exposures: Annotated[
        Path | None, typer.Option(help="Campaign exposures (arm, propensity, outcomes).")
    ] = None,
    users: Annotated[Path | None, typer.Option(help="Users table (consents, attributes).")] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Simulator truth.parquet: adds true policy values.")
    ] = None,
    table: Annotated[
        Path | None, typer.Option(help="Or: a randomized campaign table with covariates (e.g. Hillstrom).")
    ] = None,
    arm_col: Annotated[str, typer.Option(help="--table: the column holding the arm.")] = "arm",
    outcome_col: Annotated[str, typer.Option(help="--table: the 0/1 outcome column.")] = "converted",
    control: Annotated[str, typer.Option(help="--table: the control arm's value.")] = "none",
    propensity_col: Annotated[str | None, typer.Option(help="--table: assignment probabilities.")] = None,
    feature_cols: Annotated[
        list[str] | None,
        typer.Option("--feature-cols", help="--table: covariates (repeat; default: all others)."),
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Multi-arm uplift model and its policy, judged off-policy (IPS, SNIPS, DR) before launch."""
    _quiet_env()
    from engage.events import fingerprint
    from engage.offers.catalog import load_catalog
    from engage.offers.training import fit_offers, fit_offers_from_table, offer_table
    from engage.training.offers import train_offers

    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri, "tracking.experiment": experiment})
    if table is not None:
        frame = _load_optional_table(table).to_pandas()
        fit = fit_offers_from_table(
            frame,
            cfg,
            arm_col=arm_col,
            outcome_col=outcome_col,
            control=control,
            propensity_col=propensity_col,
            feature_cols=feature_cols,
        )
        stamp: dict[str, str | int] = {"rows": len(frame), "source": str(table)}
    elif events is not None and exposures is not None:
        frame = _load_events(events, cfg)
        logged = _load_optional_table(exposures)
        with progress_bar("features at each campaign") as progress:
            data = offer_table(frame, logged, cfg, users=_load_optional_table(users), progress=progress)
        truth_table = _load_optional_table(truth)
        fit = fit_offers(
            data,
            cfg,
            load_catalog(cfg.offers.catalog_path),
            truth=truth_table.to_pandas() if truth_table is not None else None,
        )
        stamp = fingerprint(frame)
    else:
        raise _fail("give --events with --exposures, or --table")
    result = train_offers(fit, cfg, fingerprint=stamp)
    _print_offer_result(result, cfg)


def _print_offer_result(result: Any, cfg: EngageConfig) -> None:
    values = result.fit.values
    table = Table("policy", "estimator", "value", "95% CI", title="policy values on held-out campaigns")
    for _, row in values.iterrows():
        table.add_row(
            row["policy"],
            row["estimator"],
            f"{row['value']:.4f}",
            f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]",
        )
    out.print(table)
    m = result.fit.metrics
    if "true_policy_value" in m:
        truth = Table("policy", "true value", "incremental over none", title="simulator truth (same rows)")
        for label, key in (
            ("learned", "true_policy_value"),
            ("learned (no exploration)", "true_greedy_policy_value"),
            ("oracle", "oracle_policy_value"),
            ("best single arm", "true_best_single_arm_value"),
            ("logging (random)", "true_logging_policy_value"),
            ("none for all", "true_none_value"),
        ):
            truth.add_row(label, f"{m[key]:.4f}", f"{m[key] - m['true_none_value']:+.4f}")
        out.print(truth)
    status = "promoted to @champion" if result.promoted else "kept as @challenger"
    out.print(f"registered {cfg.tracking.offer_model_name} v{result.version}: {status}")


@evaluate_app.command("policy")
def evaluate_policy(
    logs: Annotated[Path, typer.Option(help="Logged decisions: columns arm, outcome, propensity.")],
    actions: Annotated[Path, typer.Option(help="Target policy: one probability column per arm, same rows.")],
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 500,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Off-policy value of a candidate policy from logged data: IPS, SNIPS and DR with 95% CIs."""
    from engage.offers.training import evaluate_logged_policy

    logged, target = _load_optional_table(logs).to_pandas(), _load_optional_table(actions).to_pandas()
    try:
        values = evaluate_logged_policy(logged, target, n_boot=n_boot, seed=seed)
    except (KeyError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    table = Table(
        "estimator", "value", "95% CI", title=f"target policy value over {len(logged):,} logged rows"
    )
    for _, row in values.iterrows():
        table.add_row(row["estimator"], f"{row['value']:.4f}", f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]")
    out.print(table)


@app.command()
def score(
    events: Annotated[Path, typer.Option(help="Events file.")],
    as_of: Annotated[
        str, typer.Option("--as-of", help="Score as of this instant (features read before it).")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Scores parquet (written atomically).")],
    users: Annotated[Path | None, typer.Option(help="Users table (consents, attributes).")] = None,
    exposures: Annotated[Path | None, typer.Option(help="Past exposures (caps, cooldowns, fatigue).")] = None,
    engine: Annotated[str | None, typer.Option(help="polars (default) or spark.")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Reasons for every user.")] = False,
    explain_top: Annotated[
        float | None, typer.Option(help="Reasons only for the riskiest share, e.g. 0.1 (default).")
    ] = None,
    snapshot: Annotated[Path | None, typer.Option(help="Feature snapshot for the service.")] = None,
    decision_log: Annotated[Path | None, typer.Option(help="Decision log folder.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (models@champion).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Churn risk, reasons and the chosen message for every user, as of one date."""
    _quiet_env()
    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri, "features.engine": engine})
    share = 1.0 if explain else (explain_top if explain_top is not None else 0.1)
    moment = parse_date(as_of)
    snapshot = snapshot or Path(cfg.serve.feature_snapshot_path)
    decision_log = decision_log or Path(cfg.serve.decision_log_dir)
    from engage.scoring.champions import load_champions

    try:
        models = load_champions(cfg)
    except LookupError as exc:
        raise _fail(str(exc)) from exc
    if cfg.features.engine == "spark":
        from engage.spark import score_spark

        summary = score_spark(
            events, moment, models, cfg, out_file, users=users, exposures=exposures, explain_share=share
        )
    else:
        from engage.scoring.job import score_events

        frame = _load_events(events, cfg)
        with progress_bar("scoring users") as progress:
            summary = score_events(
                frame,
                moment,
                models,
                cfg,
                out_file,
                users=_load_optional_table(users),
                exposures=_load_optional_table(exposures),
                explain_share=share,
                snapshot=snapshot,
                decision_log=decision_log,
                progress=progress,
            )
    out.print(
        f"{summary.users:,} users scored in {summary.seconds:.1f} s "
        f"({summary.users_per_second:,.0f} users/s), {summary.explained:,} with reasons -> {out_file}"
    )
    _print_score_summary(out_file)


def _print_score_summary(path: Path) -> None:
    import polars as pl

    scores = pl.read_parquet(path)
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


@app.command()
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
    import polars as pl

    from engage.evaluation.backtest import backtest as run_backtest

    cfg = build_config(
        config,
        set_,
        **{
            "labels.horizon_days": parse_days(horizon, "--horizon") if horizon else None,
            "offers.attribution_days": parse_days(attribution, "--attribution") if attribution else None,
        },
    )
    frame = _load_events(events, cfg)
    served = pl.read_parquet(scores).to_pandas()
    try:
        result = run_backtest(
            served,
            frame,
            horizon_days=cfg.labels.horizon_days,
            attribution_days=cfg.offers.attribution_days,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
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


@app.command()
def build(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (models@champion).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Import the champion models into the Bento store and build the scoring Bento."""
    _quiet_env()
    from engage.serving.service import build_bento

    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri})
    try:
        tag = build_bento(cfg)
    except LookupError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"built Bento {tag}; serve it with: engage serve --target {tag}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 3000).")] = None,
    target: Annotated[
        str, typer.Option(help="Service path or a built Bento tag.")
    ] = "engage.serving.service:EngageService",
    model_source: Annotated[str, typer.Option(help="bento (store) or mlflow (registry).")] = "bento",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve POST /score and /explain (BentoML) on loopback by default."""
    _quiet_env()
    from engage.serving.process import serve as run_server

    cfg = build_config(config, set_)
    raise typer.Exit(run_server(cfg, host, port, target=target, model_source=model_source))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Working folder for the demo.")] = Path("demo"),
    users: Annotated[int | None, typer.Option(help="Simulated users.")] = None,
    days: Annotated[int | None, typer.Option(help="Simulated days.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The whole loop on simulated data: simulate, validate, train churn and offers, score, back-test."""
    _quiet_env()
    from datetime import timedelta

    import polars as pl

    cfg = build_config(config, set_, **{"simulate.users": users, "simulate.days": days, "seed": seed})
    data = out_dir / "data"
    tracking = f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
    common: dict[str, Any] = {"config": config, "set_": [*(set_ or []), f"tracking.uri={tracking}"]}
    console.rule("[bold]1. simulate users, events and randomized campaigns (with ground truth)")
    simulate(
        out_dir=data,
        users=cfg.simulate.users,
        days=cfg.simulate.days,
        seed=cfg.seed,
        config=config,
        set_=set_,
    )
    console.rule("[bold]2. validate the event log")
    validate(
        path=data / "events.parquet",
        out_dir=out_dir / "validated",
        reference_time=None,
        map_=None,
        config=config,
        set_=set_,
    )
    events = data / "events.parquet"
    last = pl.read_parquet(events, columns=["ts"])["ts"].max()
    if not isinstance(last, datetime):
        raise _fail(f"{events}: no events were simulated")
    scoring_date = (last - timedelta(days=cfg.labels.horizon_days)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    history = out_dir / "history"
    for name in ("events", "exposures"):
        frame = pl.read_parquet(data / f"{name}.parquet")
        history.mkdir(parents=True, exist_ok=True)
        frame.filter(pl.col("ts") < scoring_date).write_parquet(history / f"{name}.parquet")
    console.rule(f"[bold]3. train the churn model on history before {scoring_date:%Y-%m-%d}")
    train_churn_command(
        events=history / "events.parquet",
        users=data / "users.parquet",
        exposures=history / "exposures.parquet",
        states=data / "states.parquet",
        tracking_uri=None,
        experiment=None,
        **common,
    )
    console.rule("[bold]4. train the next-best-offer model on the randomized campaigns")
    train_offers_command(
        events=history / "events.parquet",
        exposures=history / "exposures.parquet",
        users=data / "users.parquet",
        truth=data / "truth.parquet",
        table=None,
        tracking_uri=None,
        experiment=None,
        **common,
    )
    console.rule(f"[bold]5. score every user as of {scoring_date:%Y-%m-%d}")
    scores = out_dir / "scores.parquet"
    score(
        events=history / "events.parquet",
        as_of=scoring_date.isoformat(),
        out_file=scores,
        users=data / "users.parquet",
        exposures=history / "exposures.parquet",
        engine=None,
        explain=False,
        explain_top=0.1,
        snapshot=out_dir / "feature_snapshot.parquet",
        decision_log=out_dir / "decisions",
        tracking_uri=None,
        **common,
    )
    console.rule(f"[bold]6. back-test: what happened in the {cfg.labels.horizon_days} days after scoring")
    backtest(
        scores=scores,
        events=events,
        horizon=None,
        out_dir=out_dir / "backtest",
        attribution=None,
        config=config,
        set_=set_,
    )
    console.rule("[bold]done")
    out.print(f"everything is under {out_dir}/; see the runs with:")
    out.print(f"  .venv/bin/mlflow ui --backend-store-uri {tracking}")


def main() -> None:  # pragma: no cover - console entry point convenience
    app(prog_name="engage")


if __name__ == "__main__":  # pragma: no cover
    main()
