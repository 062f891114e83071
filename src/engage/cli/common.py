"""What every command shares: the consoles, config from file and flags, dates, progress, table loaders.

Heavy libraries are imported inside the functions that need them, so that `engage --help` stays instant.
"""

from __future__ import annotations

import os
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

from engage.config import ConfigError, EngageConfig, load_config

__all__ = [
    "QUIET_ENV",
    "ConfigOpt",
    "SetOpt",
    "build_config",
    "console",
    "fail",
    "load_events",
    "load_optional_table",
    "out",
    "parse_date",
    "parse_days",
    "progress_bar",
    "quiet_env",
]

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


def quiet_env() -> None:
    """Telemetry off before any tracking or serving library is imported."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def build_config(path: Path | None, sets: list[str] | None, **flags: Any) -> EngageConfig:
    """The one config object: file, then ``--set`` overrides, then explicit command flags."""
    overrides: dict[str, Any] = {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise fail(f"--set expects KEY=VALUE, got {item!r}")
        import yaml

        value = yaml.safe_load(raw)
        overrides[key.strip()] = raw if isinstance(value, date) else value  # dates are text in the config
    overrides.update({k: v for k, v in flags.items() if v is not None})
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


def parse_date(value: str, option: str = "--as-of") -> datetime:
    """A date or timestamp from the command line, as an aware UTC datetime."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise fail(f"{option}: cannot read {value!r} as a date (use YYYY-MM-DD)") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_days(value: str, option: str) -> int:
    """'28d', '4w' or '28' -> days."""
    text = value.strip().lower()
    factor = 7 if text.endswith("w") else 1
    try:
        return int(text.rstrip("dw")) * factor
    except ValueError as exc:
        raise fail(f"{option}: cannot read {value!r} as a duration (use e.g. 28d or 4w)") from exc


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


def load_events(path: Path, cfg: EngageConfig) -> Any:
    """Accepted events of a file; a file that can't be read stops the command with its message."""
    from engage.events import EventsFileError, read_events

    reference = parse_date(cfg.validation.reference_time) if cfg.validation.reference_time else None
    try:
        result = read_events(path, reference_time=reference)
    except EventsFileError as exc:
        raise fail(str(exc)) from exc
    quarantined = result.quarantine.height
    if quarantined:
        console.print(
            f"[yellow]{path}: {quarantined:,} of {result.rows_in:,} rows quarantined "
            f"(run `engage validate {path}` for reasons)[/]"
        )
    return result.accepted


def load_optional_table(path: Path | None) -> Any:
    if path is None:
        return None
    import polars as pl

    if not path.exists():
        raise fail(f"{path}: file not found")
    return pl.read_parquet(path) if path.suffix != ".csv" else pl.read_csv(path, try_parse_dates=True)
