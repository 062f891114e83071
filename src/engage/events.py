"""Read raw event logs (CSV, Parquet, JSON Lines) into the canonical events table, with validation.

Validation never drops silently: every input row ends up either accepted (canonical columns and
dtypes, UTC timestamps) or in the quarantine with a reason and its 1-based row number, so that
``rows_in == accepted + quarantined`` always holds. A JSON Lines line that is not one JSON object
is quarantined too (``malformed_line``, with its text), so one bad line does not reject the file.
Timestamps are ISO 8601 text, native dates/timestamps (naive means UTC) or epoch numbers (seconds,
or milliseconds above 1e11), and a number written as text (all a CSV has) reads as that number. A
file that cannot be read at all is an :class:`EventsFileError` naming the file and, where it applies,
the column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from engage import schemas as s
from engage.atomic import write_parquet_atomic

ROW: str = "row"
"""Quarantine column: the row's 1-based position in the input (for JSON Lines: among non-blank lines)."""
LINE: str = "line"
"""Quarantine column of a malformed JSON Lines line: its text, as read."""

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


@dataclass(frozen=True)
class _Malformed:
    """JSON Lines records that are not one JSON object, and where the readable ones sit."""

    good: list[int]  # the record number of each row of the frame that was read
    rows: list[int]
    text: list[str]


def _read_jsonl(path: Path) -> tuple[pl.DataFrame, _Malformed | None]:
    """JSON Lines by polars; when that fails, one pass in Python sets the broken lines apart."""
    try:
        return pl.read_ndjson(path, infer_schema_length=None), None
    except Exception as exc:  # any failure: look for the lines that cause it
        cause = exc
    import gzip

    with path.open("rb") as fh:
        packed = fh.read(2) == b"\x1f\x8b"
    good_lines: list[bytes] = []
    bad = _Malformed([], [], [])
    with gzip.open(path, "rb") if packed else path.open("rb") as fh:
        record = 0
        for line in fh:
            if not line.strip():
                continue  # polars skips blank lines too: they are not records
            record += 1
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:  # bad JSON or bad UTF-8
                ok = False
            if ok:
                good_lines.append(line if line.endswith(b"\n") else line + b"\n")
                bad.good.append(record)
            else:
                bad.rows.append(record)
                bad.text.append(line.decode("utf-8", errors="backslashreplace").rstrip("\r\n"))
    if not good_lines:
        raise EventsFileError(f"{path}: cannot be read as jsonl: no line is a JSON object ({cause})")
    try:
        return pl.read_ndjson(b"".join(good_lines), infer_schema_length=None), bad
    except Exception as exc:  # well-formed lines that still do not form one table (clashing types)
        raise EventsFileError(f"{path}: cannot be read as jsonl: {exc}") from exc


def _read_raw(path: Path, column_map: Mapping[str, str] | None) -> tuple[pl.DataFrame, _Malformed | None]:
    """Read a file as it is (CSV columns as strings) and rename columns to canonical names."""
    if not path.exists():
        raise EventsFileError(f"{path}: file not found")
    if path.is_dir():
        raise EventsFileError(f"{path}: is a folder; give one events file (CSV, Parquet or JSON Lines)")
    fmt = detect_format(path)
    malformed = None
    try:
        if fmt == "parquet":
            frame = pl.read_parquet(path)
        elif fmt == "csv":
            sep = "\t" if ".tsv" in path.suffixes else ","
            frame = pl.read_csv(path, infer_schema=False, separator=sep)
        else:
            frame, malformed = _read_jsonl(path)
    except EventsFileError:
        raise
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
    return frame, malformed


def read_events(
    path: str | Path,
    *,
    reference_time: datetime | None = None,
    column_map: Mapping[str, str] | None = None,
) -> ValidationResult:
    """Read and validate one events file."""
    raw, malformed = _read_raw(Path(path), column_map)
    result = validate_events(raw, source=str(path), reference_time=reference_time)
    return result if malformed is None else _with_malformed(result, malformed)


def _with_malformed(result: ValidationResult, malformed: _Malformed) -> ValidationResult:
    """Add the malformed lines to the quarantine; rows are numbered as records of the whole file."""
    records = pl.Series(ROW, malformed.good, dtype=pl.UInt32)
    validated = result.quarantine.with_columns(records.gather(result.quarantine[ROW] - 1))
    broken = pl.DataFrame(
        {ROW: malformed.rows, LINE: malformed.text, s.REASON: s.REASON_MALFORMED_LINE},
        schema={ROW: pl.UInt32, LINE: pl.String, s.REASON: pl.String},
    )
    quarantine = pl.concat([validated, broken], how="diagonal_relaxed").sort(ROW)
    return ValidationResult(
        accepted=result.accepted,
        quarantine=quarantine.select(ROW, pl.exclude(ROW, s.REASON), s.REASON),
        rows_in=result.rows_in + len(malformed.rows),
        source=result.source,
        extra_columns=result.extra_columns,
    )


def _parse_ts(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Any supported timestamp representation -> Datetime(us, UTC); null when unparseable."""
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return col.dt.cast_time_unit("us").dt.replace_time_zone(s.UTC)
        return col.dt.cast_time_unit("us").dt.convert_time_zone(s.UTC)
    if isinstance(dtype, pl.Date):
        return col.cast(pl.Datetime("us")).dt.replace_time_zone(s.UTC)
    if dtype.is_numeric():
        return _epoch(col.cast(pl.Float64))
    text = col.cast(pl.String).str.strip_chars()
    # a number written as text (CSV has nothing else) is the same epoch as that number in JSON or Parquet
    number = pl.when(text.str.contains(_NUMBER)).then(_epoch(text.cast(pl.Float64, strict=False)))
    stamp = text.str.replace(r"[Zz]$", "+00:00")
    return pl.coalesce(
        [
            number.otherwise(None),
            *(stamp.str.to_datetime(f, strict=False, time_unit="us", time_zone=s.UTC) for f in _TS_FORMATS),
        ]
    )


_NUMBER = r"^[+-]?\d+(?:\.\d*)?$"


def utc_column(frame: pl.DataFrame, name: str, *, source: str) -> pl.DataFrame:
    """Column ``name`` as UTC timestamps, read as the events reader reads ``ts`` (naive means UTC).

    A value that is present but cannot be read is an EventsFileError naming the source, the column
    and its first such row: a table of past messages or users is not quarantined row by row.
    """
    parsed = frame.select(_parse_ts(pl.col(name), frame.schema[name]).alias(name)).to_series()
    bad = frame[name].is_not_null() & parsed.is_null()
    if bad.any():
        row = int(bad.arg_true()[0])
        raise EventsFileError(
            f"{source}: column '{name}' row {row + 1}: cannot read {frame[name][row]!r} as a timestamp"
        )
    return frame.with_columns(parsed)


def _epoch(seconds_or_ms: pl.Expr) -> pl.Expr:
    """Epoch numbers: seconds, or milliseconds when too large to be seconds; out of range is null."""
    x = seconds_or_ms
    micros = pl.when(x.abs() > 1e11).then(x * 1e3).otherwise(x * 1e6)
    return micros.cast(pl.Int64, strict=False).cast(pl.Datetime("us")).dt.replace_time_zone(s.UTC)


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
