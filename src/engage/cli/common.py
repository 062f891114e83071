"""What every command shares: the consoles, config from file and flags, dates, progress, file handling.

Every file a command reads or writes goes through here: ``check_paths`` refuses a missing input, an
output that is a folder, a folder that is a file or a place that cannot be written before any work
starts; ``load_events`` and ``read_table`` turn an unreadable file into a message naming it; and
``file_errors`` ends what slips past (a full disk) the same way: exit code 2, no traceback.
A remote URI (``s3://``, ``gs://``, ``abfss://``, ``hdfs://``) is kept as text, never through
``pathlib.Path`` (which would make ``s3://b/k`` into ``s3:/b/k``): options that Spark may read take
``source()``; the embedded engine and every local-only option refuse a URI naming the option.
Heavy libraries are imported inside the functions that need them, so that `engage --help` stays instant.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal, ParamSpec, TypeVar, overload

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from engage.config import ConfigError, EngageConfig, load_config

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "QUIET_ENV",
    "REMOTE_SCHEMES",
    "ConfigOpt",
    "Engine",
    "EngineOpt",
    "SetOpt",
    "Source",
    "build_config",
    "check_paths",
    "console",
    "fail",
    "file_errors",
    "load_events",
    "out",
    "parse_date",
    "parse_days",
    "progress_bar",
    "quiet_env",
    "read_exposures",
    "read_table",
    "read_users",
    "remote_uri",
    "root",
    "source",
    "version_callback",
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

Engine = Literal["polars", "spark"]
"""The feature engines (``features.engine``); a flag typed with it refuses anything else, listing these."""
EngineOpt = Annotated[
    Engine | None,
    typer.Option(help="polars (default) or spark (which also reads s3://, gs://, abfss://, hdfs:// inputs)."),
]
REMOTE_SCHEMES = ("s3", "s3a", "s3n", "gs", "gcs", "abfs", "abfss", "wasb", "wasbs", "adl", "hdfs", "dbfs")
"""URI schemes of remote storage: read by Spark, kept as written, refused by the embedded engine."""
_REMOTE = re.compile(rf"^({'|'.join(REMOTE_SCHEMES)})://", re.IGNORECASE)
_MANGLED = re.compile(rf"^({'|'.join(REMOTE_SCHEMES)}):/(?!/)", re.IGNORECASE)  # Path("s3://b") == "s3:/b"
Source = Path | str
"""An input Spark may read: a local path, or a remote URI kept as text (see ``source``)."""


def source(value: str) -> Source:
    """A command-line input: a remote URI stays the text given; anything else is a local Path."""
    return value if _REMOTE.match(value) else Path(value)


def remote_uri(path: Source | None) -> str | None:
    """The remote URI ``path`` is (or was, before ``pathlib.Path`` collapsed its ``//``); else None."""
    if path is None:
        return None
    text = str(path)
    if isinstance(path, str):
        return text if _REMOTE.match(text) else None
    return _MANGLED.sub(r"\1://", text, count=1) if _MANGLED.match(text) else None


def version_callback(value: bool) -> None:
    """``engage --version``: the installed package's version (importlib.metadata), then exit."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        out.print(f"engage {version('engage')}", highlight=False)
    except PackageNotFoundError:
        out.print("engage (not installed: no version metadata)", highlight=False)
    raise typer.Exit()


def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Churn risk, reasons and the next-best message from raw customer event logs."""


QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # a tqdm bar per model loaded from the registry (several per command, one per round of the loop)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def quiet_env() -> None:
    """Telemetry and MLflow's download bars off before any tracking or serving library is imported
    (each only where the user's environment leaves it unset)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (as written: no markup, no wrapping) and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


P = ParamSpec("P")
R = TypeVar("R")


def file_errors(command: Callable[P, R]) -> Callable[P, R]:
    """A command whose file-system errors (a full disk, a permission) end as a message naming the file."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except OSError as exc:
            if exc.filename is None:
                raise
            raise fail(f"{exc.filename}: {exc.strerror or exc}") from exc

    return run


_NO_PATHS: Mapping[str, Path | None] = MappingProxyType({})


def check_paths(
    read: Mapping[str, Source | None] = _NO_PATHS,
    write: Mapping[str, Path | None] = _NO_PATHS,
    folders: Mapping[str, Path | None] = _NO_PATHS,
    sources: Mapping[str, Source | None] = _NO_PATHS,
    *,
    remote_ok: bool = False,
) -> None:
    """Stop the command, naming the option and the path, unless each path can be used as meant.

    ``read``: files that must exist; ``write``: files to create or replace (not a folder, in a place
    that can be written); ``folders``: folders to create or fill (not a file); ``sources``: inputs
    that may also be a folder (a Parquet data set, which Spark reads). Keys are option names.
    A remote URI among ``read`` and ``sources`` passes when ``remote_ok`` (the engine reading it is
    Spark) and is refused otherwise; among ``write`` and ``folders`` it is always refused.
    """
    for option, path in {**read, **sources}.items():
        uri = remote_uri(path)
        if uri is None:
            continue
        if not isinstance(path, str):  # an option typed as a local Path
            raise fail(f"{option} {uri}: this option takes a local path, not a remote URI; copy it locally")
        if not remote_ok:
            raise fail(
                f"{option} {uri}: only --engine spark reads remote URIs; use it or copy the file locally"
            )
    for option, path in {**write, **folders}.items():
        uri = remote_uri(path)
        if uri is not None:
            raise fail(
                f"{option} {uri}: engage writes local files only, not remote URIs; write locally, then copy"
            )
    for option, local in {**read, **sources}.items():
        if local is not None and not isinstance(local, str) and not local.exists():
            raise fail(f"{option} {local}: file not found")
    for option, local in read.items():
        if local is not None and not isinstance(local, str) and local.is_dir() and not parquet_parts(local):
            raise fail(f"{option} {local}: is a folder; give a file (or a folder of Parquet parts)")
    for option, target in write.items():
        if target is None:
            continue
        if target.is_dir():
            raise fail(f"{option} {target}: is a folder; give a file name")
        problem = _cannot_write(target.parent) if target.exists() else _cannot_create(target)
        if problem:
            raise fail(f"{option} {target}: {problem}")
    for option, folder in folders.items():
        if folder is None:
            continue
        if folder.exists() and not folder.is_dir():
            raise fail(f"{option} {folder}: is a file; give a folder")
        problem = _cannot_write(folder) if folder.exists() else _cannot_create(folder)
        if problem:
            raise fail(f"{option} {folder}: {problem}")


def _cannot_create(path: Path) -> str | None:
    """Why ``path`` (and the folders above it) cannot be created; None when it can."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot be created: {ancestor} is a file, not a folder"
    return _cannot_write(ancestor)


def _cannot_write(folder: Path) -> str | None:
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be written: no permission to write in {folder}"
    return None


def build_config(path: Path | None, sets: list[str] | None, **flags: Any) -> EngageConfig:
    """The one config object: file, then ``--set`` overrides, then explicit command flags."""
    if path is not None and not path.is_file():
        raise fail(
            f"--config {path}: " + ("is a folder; give a YAML file" if path.exists() else "file not found")
        )
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


def load_events(path: Source, cfg: EngageConfig, option: str = "--events") -> Any:
    """Accepted events of a file; a file that can't be read stops the command with its message.

    The embedded reader reads local files: a remote URI stops the command (``--engine spark`` reads it).
    """
    from engage.events import EventsFileError, read_events

    uri = remote_uri(path)
    if uri is not None:
        raise fail(
            f"{option} {uri}: the embedded engine reads local files; use --engine spark for remote URIs"
        )
    path = Path(path)

    reference = parse_date(cfg.validation.reference_time) if cfg.validation.reference_time else None
    try:
        result = read_events(path, reference_time=reference)
    except EventsFileError as exc:
        raise fail(str(exc)) from exc
    quarantined = result.quarantine.height
    if quarantined:
        console.print(
            f"[yellow]{escape(str(path))}: {quarantined:,} of {result.rows_in:,} rows quarantined "
            f"(run `engage validate {escape(str(path))}` for reasons)[/]"
        )
    return result.accepted


@overload
def read_table(
    path: Source, option: str, required: Sequence[str] = (), timestamps: Sequence[str] = ()
) -> pl.DataFrame: ...
@overload
def read_table(
    path: Source | None, option: str, required: Sequence[str] = (), timestamps: Sequence[str] = ()
) -> pl.DataFrame | None: ...
def read_table(
    path: Source | None, option: str, required: Sequence[str] = (), timestamps: Sequence[str] = ()
) -> pl.DataFrame | None:
    """A Parquet or CSV table given by ``option`` (None when not given), or a folder of Parquet parts
    (a data set written by ``--engine spark``); a file that cannot be read, or lacks a ``required``
    column, stops the command with a message naming the option and the file."""
    if path is None:
        return None
    import polars as pl

    from engage.events import EventsFileError, utc_column

    uri = remote_uri(path)
    if uri is not None:
        raise fail(
            f"{option} {uri}: the embedded engine reads local files; use --engine spark for remote URIs"
        )
    path = Path(path)
    if not path.exists():
        raise fail(f"{option} {path}: file not found")
    parts = parquet_parts(path) if path.is_dir() else []
    if path.is_dir() and not parts:
        raise fail(
            f"{option} {path}: is a folder without Parquet parts; give a .parquet or .csv file "
            "or a Parquet data set folder (what --engine spark writes)"
        )
    fmt = "CSV" if path.suffix.lower() in (".csv", ".tsv") and not parts else "Parquet"
    try:
        if fmt == "CSV":
            separator = "\t" if path.suffix.lower() == ".tsv" else ","
            frame = pl.read_csv(path, try_parse_dates=True, separator=separator)
        else:
            frame = pl.read_parquet(parts or path, hive_partitioning=bool(parts))
    except Exception as exc:  # polars raises many types; the user needs the file and the cause
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(
            f"{option} {path}: cannot be read as {fmt} ({cause}); give a .parquet or .csv table"
        ) from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise fail(
            f"{option} {path}: missing required column(s) {', '.join(missing)}; "
            f"columns found: {', '.join(frame.columns) or 'none'}"
        )
    try:
        for name in (c for c in timestamps if c in frame.columns):
            frame = utc_column(frame, name, source=f"{option} {path}")
    except EventsFileError as exc:
        raise fail(str(exc)) from exc
    return frame


def parquet_parts(folder: Path) -> list[Path]:
    """The Parquet files of a data set folder (Spark's part files, Hive ``key=value`` folders
    included), without the hidden ``_``/``.`` entries writers leave (``_SUCCESS``, temporaries)."""
    return sorted(
        p
        for p in folder.rglob("*.parquet")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts)
    )


@overload
def read_users(path: Source) -> pl.DataFrame: ...
@overload
def read_users(path: Source | None) -> pl.DataFrame | None: ...
def read_users(path: Source | None) -> pl.DataFrame | None:
    """The ``--users`` table (one row per user_id), or None when not given."""
    from engage import schemas as s

    return read_table(path, "--users", required=(s.USER_ID,), timestamps=(s.SIGNUP_TS,))


@overload
def read_exposures(path: Source) -> pl.DataFrame: ...
@overload
def read_exposures(path: Source | None) -> pl.DataFrame | None: ...
def read_exposures(path: Source | None) -> pl.DataFrame | None:
    """The ``--exposures`` table (past messages: user_id, ts, message_id), or None when not given."""
    from engage import schemas as s

    return read_table(path, "--exposures", required=(s.USER_ID, s.TS, s.MESSAGE_ID), timestamps=(s.TS,))
