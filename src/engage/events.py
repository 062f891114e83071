"""Read raw event logs (CSV, Parquet, JSON Lines) into the canonical events table, with validation.

Validation never drops silently: every input row ends up either accepted (canonical columns and
dtypes, UTC timestamps) or in the quarantine with a reason and its 1-based row number, so that
``rows_in == accepted + quarantined`` always holds. A file that cannot be read at all is an
:class:`EventsFileError` naming the file and, where it applies, the column.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from engage import schemas as s

ROW: str = "row"
"""Quarantine column: the row's 1-based position in the input."""

_TS_FORMATS: tuple[str, ...] = (
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d",
)
_FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


class EventsFileError(ValueError):
    """An events file that cannot be read at all (missing, wrong format, missing column)."""


@dataclass(frozen=True)
class ValidationSummary:
    """What validation did to one input, in numbers a person can check."""

    source: str
    rows_in: int
    accepted: int
    quarantined: dict[str, int]
    users: int
    ts_min: datetime | None
    ts_max: datetime | None
    event_types: dict[str, int]
    unknown_event_types: dict[str, int]
    extra_columns: tuple[str, ...] = field(default_factory=tuple)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def lines(self) -> list[str]:
        """The summary as plain text lines (what ``engage validate`` prints)."""
        out = [
            f"source:       {self.source}",
            f"rows in:      {self.rows_in:,}",
            f"accepted:     {self.accepted:,}",
            f"quarantined:  {self.quarantined_total:,}",
        ]
        out += [f"  {reason}: {count:,}" for reason, count in self.quarantined.items()]
        out += [
            f"users:        {self.users:,}",
            f"time range:   {self.ts_min} .. {self.ts_max}",
            "event types:  " + ", ".join(f"{name} {count:,}" for name, count in self.event_types.items()),
        ]
        if self.unknown_event_types:
            out.append(
                "unknown event types (kept): "
                + ", ".join(f"{k} {v:,}" for k, v in self.unknown_event_types.items())
            )
        if self.extra_columns:
            out.append("extra columns folded into properties: " + ", ".join(self.extra_columns))
        return out


@dataclass(frozen=True)
class ValidationResult:
    """Accepted canonical events plus the quarantined rows (as strings, with reason and row)."""

    accepted: pl.DataFrame
    quarantine: pl.DataFrame
    rows_in: int
    source: str
    extra_columns: tuple[str, ...] = ()

    def summary(self) -> ValidationSummary:
        acc = self.accepted
        reasons = (
            self.quarantine.group_by(s.REASON).len().sort("len", descending=True)
            if self.quarantine.height
            else pl.DataFrame({s.REASON: [], "len": []})
        )
        types = acc.group_by(s.EVENT_TYPE).len().sort("len", descending=True)
        type_counts = dict(zip(types[s.EVENT_TYPE].to_list(), types["len"].to_list(), strict=True))
        return ValidationSummary(
            source=self.source,
            rows_in=self.rows_in,
            accepted=acc.height,
            quarantined=dict(zip(reasons[s.REASON].to_list(), reasons["len"].to_list(), strict=True)),
            users=acc[s.USER_ID].n_unique() if acc.height else 0,
            ts_min=acc[s.TS].min() if acc.height else None,  # type: ignore[arg-type]
            ts_max=acc[s.TS].max() if acc.height else None,  # type: ignore[arg-type]
            event_types=type_counts,
            unknown_event_types={k: v for k, v in type_counts.items() if k not in s.KNOWN_EVENT_TYPES},
            extra_columns=self.extra_columns,
        )


def detect_format(path: Path) -> str:
    """File format from the suffix (``.gz`` is looked through), or an EventsFileError."""
    suffixes = [x.lower() for x in path.suffixes if x.lower() not in {".gz", ".gzip"}]
    fmt = _FORMATS_BY_SUFFIX.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise EventsFileError(
            f"{path}: unknown file format (expected one of {', '.join(sorted(_FORMATS_BY_SUFFIX))})"
        )
    return fmt


def read_raw(path: str | Path, *, column_map: Mapping[str, str] | None = None) -> pl.DataFrame:
    """Read a file as it is (CSV columns as strings) and rename columns to canonical names."""
    path = Path(path)
    if not path.exists():
        raise EventsFileError(f"{path}: file not found")
    fmt = detect_format(path)
    try:
        if fmt == "parquet":
            frame = pl.read_parquet(path)
        elif fmt == "csv":
            sep = "\t" if ".tsv" in path.suffixes else ","
            frame = pl.read_csv(path, infer_schema=False, separator=sep)
        else:
            frame = pl.read_ndjson(path, infer_schema_length=None)
    except Exception as exc:  # polars raises many types; the user needs the file and the cause
        raise EventsFileError(f"{path}: cannot be read as {fmt}: {exc}") from exc
    if column_map:
        frame = frame.rename({k: v for k, v in column_map.items() if k in frame.columns})
    missing = [c for c in s.EVENT_REQUIRED if c not in frame.columns]
    if missing:
        raise EventsFileError(
            f"{path}: missing required column '{missing[0]}'"
            + (f" (also: {', '.join(missing[1:])})" if missing[1:] else "")
            + f"; columns found: {', '.join(frame.columns) or 'none'}"
            + ". Map yours with --map THEIRS=OURS, e.g. --map timestamp=ts."
        )
    return frame


def read_events(
    path: str | Path,
    *,
    reference_time: datetime | None = None,
    column_map: Mapping[str, str] | None = None,
) -> ValidationResult:
    """Read and validate one events file."""
    raw = read_raw(path, column_map=column_map)
    return validate_events(raw, source=str(path), reference_time=reference_time)


def _parse_ts(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Any supported timestamp representation -> Datetime(us, UTC); null when unparseable."""
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return col.dt.cast_time_unit("us").dt.replace_time_zone(s.UTC)
        return col.dt.cast_time_unit("us").dt.convert_time_zone(s.UTC)
    if isinstance(dtype, pl.Date):
        return col.cast(pl.Datetime("us")).dt.replace_time_zone(s.UTC)
    if dtype.is_numeric():
        # Epoch numbers: seconds, or milliseconds when too large to be seconds.
        as_float = col.cast(pl.Float64)
        micros = pl.when(as_float.abs() > 1e11).then(as_float * 1e3).otherwise(as_float * 1e6)
        return micros.cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone(s.UTC)
    text = col.cast(pl.String).str.strip_chars().str.replace(r"[Zz]$", "+00:00")
    return pl.coalesce(
        [text.str.to_datetime(f, strict=False, time_unit="us", time_zone=s.UTC) for f in _TS_FORMATS]
    )


def _parse_amount(col: pl.Expr, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """(parsed Float64 amount, mask of values present but not a finite number)."""
    if dtype.is_numeric():
        parsed = col.cast(pl.Float64)
        return parsed, col.is_not_null() & ~parsed.is_finite()
    text = col.cast(pl.String).str.strip_chars()
    present = text.is_not_null() & (text != "")
    parsed = text.cast(pl.Float64, strict=False)
    bad = present & (parsed.is_null() | ~parsed.is_finite())
    return pl.when(present).then(parsed).otherwise(None), bad


def validate_events(
    raw: pl.DataFrame,
    *,
    source: str,
    reference_time: datetime | None = None,
    missing_user_reason: str = s.REASON_MISSING_USER,
) -> ValidationResult:
    """Split a raw frame with canonical column names into accepted events and quarantined rows.

    One reason per quarantined row, the first that applies in this order: missing user, missing
    event type, unparseable timestamp, timestamp after ``reference_time``, non-numeric amount,
    exact duplicate of an earlier accepted row (the first copy is kept).
    """
    missing = [c for c in s.EVENT_REQUIRED if c not in raw.columns]
    if missing:
        raise EventsFileError(f"{source}: missing required column '{missing[0]}'")
    if reference_time is not None and reference_time.tzinfo is None:
        raise ValueError("reference_time must be timezone-aware")
    extra = tuple(c for c in raw.columns if c not in s.EVENT_SCHEMA and c != ROW)
    frame = raw.with_row_index("__row", offset=1)

    user = pl.col(s.USER_ID).cast(pl.String).str.strip_chars()
    etype = pl.col(s.EVENT_TYPE).cast(pl.String).str.strip_chars()
    ts = _parse_ts(pl.col(s.TS), raw.schema[s.TS])
    if "amount" in raw.columns:
        amount, bad_amount = _parse_amount(pl.col("amount"), raw.schema["amount"])
    else:
        amount, bad_amount = pl.lit(None, dtype=pl.Float64), pl.lit(False)

    canonical: list[pl.Expr] = [
        user.alias(s.USER_ID),
        ts.alias(s.TS),
        etype.alias(s.EVENT_TYPE),
    ]
    for name, dtype in s.EVENT_OPTIONAL.items():
        if name == "amount":
            canonical.append(amount.alias(name))
        elif name == "properties" and name not in raw.columns and extra:
            canonical.append(pl.struct(list(extra)).struct.json_encode().alias(name))
        elif name in raw.columns:
            value = _as_text(name, raw.schema[name]).str.strip_chars()
            canonical.append(pl.when(value != "").then(value).otherwise(None).cast(dtype).alias(name))
        else:
            canonical.append(pl.lit(None, dtype=dtype).alias(name))

    reason = (
        pl.when(user.is_null() | (user == ""))
        .then(pl.lit(missing_user_reason))
        .when(etype.is_null() | (etype == ""))
        .then(pl.lit(s.REASON_MISSING_EVENT_TYPE))
        .when(ts.is_null())
        .then(pl.lit(s.REASON_BAD_TS))
    )
    if reference_time is not None:
        reason = reason.when(ts > pl.lit(reference_time).dt.convert_time_zone(s.UTC)).then(
            pl.lit(s.REASON_FUTURE_TS)
        )
    first_reason = reason.when(bad_amount).then(pl.lit(s.REASON_BAD_AMOUNT)).otherwise(None)

    staged = frame.select("__row", *canonical, first_reason.alias("__reason"))
    clean = staged.filter(pl.col("__reason").is_null())
    first = pl.struct(s.EVENT_COLUMNS).is_first_distinct()
    accepted = clean.filter(first).select(s.EVENT_COLUMNS)
    flagged = pl.concat(
        [
            staged.filter(pl.col("__reason").is_not_null()).select("__row", "__reason"),
            clean.filter(~first).select("__row", pl.lit(s.REASON_DUPLICATE).alias("__reason")),
        ]
    )
    # only the quarantined rows are turned back into text: the input values, nothing lost
    quarantine = (
        frame.join(flagged, on="__row", how="inner")
        .sort("__row")
        .select(pl.col("__row").alias(ROW), _raw_struct(raw), pl.col("__reason").alias(s.REASON))
        .unnest("__raw")
    )
    return ValidationResult(
        accepted=accepted, quarantine=quarantine, rows_in=raw.height, source=source, extra_columns=extra
    )


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A column as strings; nested values (JSON objects, lists) as JSON text."""
    if isinstance(dtype, pl.Struct):
        return pl.col(name).struct.json_encode()
    if isinstance(dtype, pl.List | pl.Array):
        return pl.struct(pl.col(name)).struct.json_encode().str.slice(len(name) + 4).str.head(-1)
    return pl.col(name).cast(pl.String)


def _raw_struct(raw: pl.DataFrame) -> pl.Expr:
    """The input row as strings, kept for the quarantine file so nothing is lost."""
    return pl.struct([_as_text(c, dt).alias(c) for c, dt in raw.schema.items()]).alias("__raw")


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> Path:
    """Write next to the target, then rename, so a killed run never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        frame.write_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_validation(result: ValidationResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``accepted.parquet`` and ``quarantine.parquet`` (with its ``reason`` column)."""
    out = Path(out_dir)
    return (
        write_parquet_atomic(result.accepted, out / "accepted.parquet"),
        write_parquet_atomic(result.quarantine, out / "quarantine.parquet"),
    )


def fingerprint(events: pl.DataFrame) -> dict[str, str | int]:
    """Rows, users, time range and a content hash: enough to tell two training inputs apart."""
    import hashlib

    digest = hashlib.sha256()
    if events.height:
        digest.update(events.select(sorted(events.columns)).hash_rows(seed=0).sort().to_numpy().tobytes())
    ts = events[s.TS] if s.TS in events.columns else pl.Series([], dtype=s.TS_DTYPE)
    return {
        "rows": events.height,
        "users": events[s.USER_ID].n_unique() if s.USER_ID in events.columns else 0,
        "ts_min": str(ts.min()),
        "ts_max": str(ts.max()),
        "sha256": digest.hexdigest()[:16],
    }
