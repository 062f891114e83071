"""Adapter: CDNOW transaction logs -> canonical ``purchase`` events.

Two whitespace-separated layouts are recognised from the number of fields on the first data
line (an optional header line such as ``customer_id date number_of_cds dollar_value`` is
skipped and not counted as a row):

- ``CDNOW_master`` (4 fields): customer_id, date (YYYYMMDD), number_of_cds, dollar_value;
- ``CDNOW_sample`` (5 fields): customer_id (the master file's id), sample index, date,
  number_of_cds, dollar_value.

Mapping: ``user_id`` = customer_id as written (zero-padded, so sample and master ids agree),
``ts`` = 00:00 UTC of the date (the log has day resolution), ``event_type`` = ``purchase``,
``amount`` = dollar_value, ``properties`` = JSON with ``cds`` (number of CDs), ``line`` (the
1-based data line) and, for the sample, ``sample_id``. CDNOW has no order id and a customer can
place several identical orders on one day; the line number keeps such orders distinct so that
validation does not mistake them for duplicated rows (the BTYD literature counts them all).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Final

import polars as pl

from engage import schemas
from engage.events import EventsFileError, ValidationResult, validate_events

PURCHASE: Final = "purchase"
MASTER_FIELDS: Final[tuple[str, ...]] = ("customer_id", "date", "number_of_cds", "dollar_value")
SAMPLE_FIELDS: Final[tuple[str, ...]] = ("customer_id", "sample_id", "date", "number_of_cds", "dollar_value")


def _read_lines(path: Path) -> list[str]:
    """Non-blank lines of a plain or gzipped text file."""
    if not path.exists():
        raise EventsFileError(f"{path}: file not found")
    opener = gzip.open if path.suffix.lower() in {".gz", ".gzip"} else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            return [line for line in handle.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise EventsFileError(f"{path}: cannot be read as a CDNOW text file: {exc}") from exc


def read_cdnow(path: str | Path) -> pl.DataFrame:
    """The raw CDNOW table as strings, columns named after the detected layout."""
    path = Path(path)
    lines = _read_lines(path)
    if lines and not lines[0].split()[0].isdigit():
        lines = lines[1:]  # header line
    if not lines:
        raise EventsFileError(f"{path}: no data lines")
    n_fields = len(lines[0].split())
    if n_fields not in (len(MASTER_FIELDS), len(SAMPLE_FIELDS)):
        raise EventsFileError(
            f"{path}: line 1 has {n_fields} fields; expected 4 (CDNOW_master: {' '.join(MASTER_FIELDS)}) "
            f"or 5 (CDNOW_sample: {' '.join(SAMPLE_FIELDS)})"
        )
    names = MASTER_FIELDS if n_fields == len(MASTER_FIELDS) else SAMPLE_FIELDS
    # Collapse runs of spaces/tabs so that aligned columns split cleanly; a line with another
    # number of fields gets nulls, which validation quarantines with a reason.
    tokens = pl.Series("line", lines).str.strip_chars().str.replace_all(r"\s+", " ").str.split(by=" ")
    frame = pl.DataFrame({"tokens": tokens}).select(
        pl.when(pl.col("tokens").list.len() == n_fields)
        .then(pl.col("tokens").list.get(i, null_on_oob=True))
        .alias(name)
        for i, name in enumerate(names)
    )
    return frame


def to_events(raw: pl.DataFrame) -> pl.DataFrame:
    """Map the raw CDNOW table to canonical event columns (not yet validated)."""
    extra = [pl.col("sample_id")] if "sample_id" in raw.columns else []
    properties = pl.struct(
        pl.col("number_of_cds").cast(pl.Int64, strict=False).alias("cds"),
        pl.int_range(1, pl.len() + 1).alias("line"),
        *extra,
    ).struct.json_encode()
    return raw.select(
        pl.col("customer_id").alias(schemas.USER_ID),
        pl.col("date").str.to_date("%Y%m%d", strict=False).alias(schemas.TS),
        pl.lit(PURCHASE).alias(schemas.EVENT_TYPE),
        pl.col("dollar_value").alias("amount"),
        properties.alias("properties"),
    )


def load_cdnow(path: str | Path) -> ValidationResult:
    """Read and validate a CDNOW master or sample file into purchase events."""
    raw = read_cdnow(path)
    return validate_events(to_events(raw), source=str(path))
