"""Reading inputs and committing outputs on Spark: data never passes through the driver.

Inputs are read by Spark from any URI it reads (``file:``, ``hdfs:``, ``s3a:``, ``abfss:``, ``gs:``):
Parquet files and (Hive-partitioned) Parquet folders, CSV and JSON Lines, chosen by suffix as the
embedded reader chooses (``engage.events.detect_format``). Outputs are Parquet data sets written
by the executors to a hidden temporary folder beside the target and renamed into place when
complete, so a reader sees the old data set or the new one, never a partial one. The driver only
renames folders (``pyarrow.fs`` for remote storage): it never opens a data file.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from engage import schemas as s
from engage.events import EventsFileError, detect_format

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

CORRUPT = "_corrupt_record"
"""Spark's column for a JSON Lines line that is not one JSON object (quarantined as malformed)."""
_TMP_TAG = ".engage-tmp-"
_S3_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}  # Hadoop scheme -> pyarrow's


def uri_text(location: str | Path) -> str:
    """A location as Spark reads it: remote URIs as given, local paths absolute (no ``//`` lost)."""
    if isinstance(location, Path):
        return str(location.resolve())
    return location


def input_format(location: str | Path) -> str:
    """``parquet``, ``csv`` or ``jsonl`` from the suffix; a folder (no suffix) is a Parquet data set."""
    name = PurePosixPath(str(location).rstrip("/")).name
    if "." not in name or (isinstance(location, Path) and location.is_dir()):
        return "parquet"
    return detect_format(Path(name))


def read_input(spark: SparkSession, location: str | Path, *, infer_csv: bool = False) -> DataFrame:
    """A raw table as written: CSV columns as text (typed with ``infer_csv``, as the embedded reader
    reads users and exposures), JSON Lines inferred (bad lines in ``CORRUPT``)."""
    uri, fmt = uri_text(location), input_format(location)
    reader = spark.read
    try:
        if fmt == "csv":
            sep = "\t" if ".tsv" in str(location).lower() else ","
            return reader.options(header=True, inferSchema=infer_csv, sep=sep).csv(uri)
        if fmt == "jsonl":
            return reader.options(mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT).json(uri)
        return reader.parquet(uri)
    except Exception as exc:  # Spark's AnalysisException (path not found, unreadable): name the input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EventsFileError(f"{uri}: cannot be read as {fmt} by Spark ({first})") from exc


def read_table(
    spark: SparkSession, location: str | Path, option: str, required: tuple[str, ...]
) -> DataFrame:
    """A users or exposures table read by Spark; a missing required column names the option and input."""
    frame = read_input(spark, location, infer_csv=True)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise EventsFileError(
            f"{option} {uri_text(location)}: missing required column(s) {', '.join(missing)}; "
            f"columns found: {', '.join(frame.columns) or 'none'}"
        )
    return frame


def _utc_column(spark: SparkSession, frame: DataFrame, name: str, source: str) -> Column:
    """Column ``name`` as UTC timestamps; a value present but unreadable is an EventsFileError naming
    the source, the column, its first such row and value (``engage.events.utc_column``'s rule: a
    table of users or past messages is not quarantined row by row). Values typed as timestamps or
    dates cannot fail: only other types are checked, with one Spark job returning one row."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from engage.spark.validate import _row_numbers, utc_timestamp

    parsed = utc_timestamp(frame, name)
    if isinstance(frame.schema[name].dataType, T.TimestampType | T.TimestampNTZType | T.DateType):
        return parsed
    unreadable = F.col(name).isNotNull() & parsed.isNull()
    if frame.filter(unreadable).select(name).first() is not None:
        numbered, _ = _row_numbers(spark, frame)
        first = numbered.filter(unreadable).orderBy("__row").select("__row", name).first()
        assert first is not None
        raise EventsFileError(
            f"{source}: column '{name}' row {first['__row']}: cannot read {first[name]!r} as a timestamp"
        )
    return parsed


def read_users(spark: SparkSession, location: str | Path) -> DataFrame:
    """The users table (one row per user_id); ``signup_ts`` read as UTC like event times."""
    frame = read_table(spark, location, "--users", (s.USER_ID,))
    frame = frame.withColumn(s.USER_ID, frame[s.USER_ID].cast("string"))
    if s.SIGNUP_TS in frame.columns:
        source = f"--users {uri_text(location)}"
        frame = frame.withColumn(s.SIGNUP_TS, _utc_column(spark, frame, s.SIGNUP_TS, source))
    return frame


def read_exposures(spark: SparkSession, location: str | Path) -> DataFrame:
    """Past messages (user_id, ts, message_id, channel) with UTC times."""
    from pyspark.sql import functions as F

    frame = read_table(spark, location, "--exposures", (s.USER_ID, s.TS, s.MESSAGE_ID))
    channel = F.col(s.CHANNEL).cast("string") if s.CHANNEL in frame.columns else F.lit(None).cast("string")
    return frame.select(
        F.col(s.USER_ID).cast("string").alias(s.USER_ID),
        _utc_column(spark, frame, s.TS, f"--exposures {uri_text(location)}").alias(s.TS),
        F.col(s.MESSAGE_ID).cast("string").alias(s.MESSAGE_ID),
        channel.alias(s.CHANNEL),
    )


@dataclass(frozen=True)
class Target:
    """Where a data set goes: its URI, and the file system and path the driver renames it with."""

    uri: str
    fs: Any
    path: str

    @classmethod
    def of(cls, location: str | Path) -> Target:
        from pyarrow import fs

        uri = uri_text(location)
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme == "file":
            local = rest if sep else uri
            return cls(f"file://{local}" if not sep else uri, fs.LocalFileSystem(), local)
        filesystem, path = fs.FileSystem.from_uri(f"{_S3_ALIASES.get(scheme, scheme)}://{rest}")
        return cls(uri, filesystem, path)

    def sibling(self, tag: str) -> Target:
        """A hidden path next to this one (same folder, so a rename is cheap)."""
        head, _, name = self.path.rstrip("/").rpartition("/")
        uhead, _, _ = self.uri.rstrip("/").rpartition("/")
        hidden = f".{name}{_TMP_TAG}{tag}-{secrets.token_hex(4)}"
        return Target(f"{uhead}/{hidden}", self.fs, f"{head}/{hidden}")

    def exists(self) -> bool:
        from pyarrow import fs

        return bool(self.fs.get_file_info(self.path).type != fs.FileType.NotFound)

    def remove(self) -> None:
        from pyarrow import fs

        info = self.fs.get_file_info(self.path)
        if info.type == fs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == fs.FileType.File:
            self.fs.delete_file(self.path)


def write_dataset(frame: DataFrame, location: str | Path, fmt: str = "parquet") -> Target:
    """Write ``frame`` with the executors to a temporary folder, then rename it to ``location``.

    An existing data set (a re-run) is moved aside first and removed after the new one is in
    place. On any failure the temporary folder is removed and ``location`` is untouched.
    """
    target = Target.of(location)
    tmp = target.sibling("new")
    parent = target.path.rstrip("/").rpartition("/")[0]
    if parent:
        target.fs.create_dir(parent, recursive=True)
    try:
        frame.write.mode("error").format(fmt).save(tmp.uri)
        _drop_checksums(tmp)
        old = target.sibling("old") if target.exists() else None
        if old is not None:
            target.fs.move(target.path, old.path)
        target.fs.move(tmp.path, target.path)
        if old is not None:
            old.remove()
    except BaseException:
        tmp.remove()
        raise
    return target


def _drop_checksums(target: Target) -> None:
    """Remove Hadoop's local ``.crc`` side files: readers such as polars refuse a folder holding them."""
    from pyarrow import fs

    if not isinstance(target.fs, fs.LocalFileSystem):
        return
    for info in target.fs.get_file_info(fs.FileSelector(target.path, recursive=True)):
        if (
            info.type == fs.FileType.File
            and info.base_name.endswith(".crc")
            and info.base_name.startswith(".")
        ):
            target.fs.delete_file(info.path)


def part_files(target: Target, suffix: str) -> list[str]:
    """The data files of a data set Spark wrote (not its ``_SUCCESS`` or checksum files)."""
    from pyarrow import fs

    infos = target.fs.get_file_info(fs.FileSelector(target.path, recursive=True))
    return sorted(i.path for i in infos if i.type == fs.FileType.File and i.base_name.endswith(suffix))


__all__ = [
    "CORRUPT",
    "Target",
    "input_format",
    "part_files",
    "read_exposures",
    "read_input",
    "read_table",
    "read_users",
    "uri_text",
    "write_dataset",
]
