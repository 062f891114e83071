"""The events contract on Spark: ``engage.events.validate_events``'s rules, run by the executors.

Every input row ends up accepted (canonical columns, UTC timestamps) or quarantined with one reason,
the first that applies in the embedded order (a malformed JSON Lines line, missing user, missing
event type, unparseable timestamp, timestamp after the reference, non-numeric amount, exact
duplicate of an earlier accepted row: the first copy is kept), with its 1-based row number. The
reasons are ``engage.schemas``' and the timestamp rules are ``engage.events``' (its formats are
restated here as Spark patterns, one per chrono format: tests/integration/test_spark_contract.py
checks both readers give the same instants and the same quarantine).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from engage import schemas as s
from engage.events import _NUMBER, _TS_FORMATS, LINE, ROW, EventsFileError
from engage.spark.io import CORRUPT

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import DataType

_FRACTION = "[.SSSSSSSSS]"
SPARK_TS_FORMATS: dict[str, tuple[str, ...]] = {
    "%Y-%m-%dT%H:%M:%S%.f%z": (f"yyyy-MM-dd'T'HH:mm:ss{_FRACTION}XXX", f"yyyy-MM-dd'T'HH:mm:ss{_FRACTION}XX"),
    "%Y-%m-%d %H:%M:%S%.f%z": (f"yyyy-MM-dd HH:mm:ss{_FRACTION}XXX", f"yyyy-MM-dd HH:mm:ss{_FRACTION}XX"),
    "%Y-%m-%dT%H:%M:%S%.f": (f"yyyy-MM-dd'T'HH:mm:ss{_FRACTION}",),
    "%Y-%m-%d %H:%M:%S%.f": (f"yyyy-MM-dd HH:mm:ss{_FRACTION}",),
    "%Y-%m-%dT%H:%M": ("yyyy-MM-dd'T'HH:mm",),
    "%Y-%m-%d %H:%M": ("yyyy-MM-dd HH:mm",),
    "%Y-%m-%d": ("yyyy-MM-dd",),
    "%Y/%m/%d %H:%M:%S": ("yyyy/MM/dd HH:mm:ss",),
    "%Y/%m/%d": ("yyyy/MM/dd",),
}
"""``engage.events._TS_FORMATS`` as Spark datetime patterns (tried in the same order)."""
assert tuple(SPARK_TS_FORMATS) == _TS_FORMATS, "restate every embedded timestamp format for Spark"


def _epoch(x: Column) -> Column:
    """Epoch numbers: seconds, or milliseconds when too large to be seconds (``events._epoch``)."""
    from pyspark.sql import functions as F

    micros = F.when(F.abs(x) > 1e11, x * 1e3).otherwise(x * 1e6)
    return F.timestamp_micros(micros.try_cast("long"))


def _parse_ts(col: Column, dtype: DataType) -> Column:
    """Any supported timestamp representation -> a UTC instant; null when unparseable."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if isinstance(dtype, T.TimestampType):
        return col
    if isinstance(dtype, T.TimestampNTZType | T.DateType):
        return col.cast("timestamp")  # naive means UTC: the job's session time zone is UTC
    if isinstance(dtype, T.NumericType):
        return _epoch(col.cast("double"))
    text = F.trim(col.cast("string"))
    number = F.when(text.rlike(_NUMBER), _epoch(text.try_cast("double")))
    stamp = F.regexp_replace(text, "[Zz]$", "+00:00")
    parsed = [F.try_to_timestamp(stamp, F.lit(p)) for ps in SPARK_TS_FORMATS.values() for p in ps]
    return F.coalesce(number, *parsed)


def utc_timestamp(frame: DataFrame, name: str) -> Column:
    """Column ``name`` as UTC timestamps, read as event times are (naive means UTC)."""
    from pyspark.sql import functions as F

    return _parse_ts(F.col(name), frame.schema[name].dataType)


def _parse_amount(col: Column, dtype: DataType) -> tuple[Column, Column]:
    """(parsed double amount, mask of values present but not a finite number)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def finite(x: Column) -> Column:
        return ~F.isnan(x) & (F.abs(x) != float("inf"))

    if isinstance(dtype, T.NumericType):
        parsed = col.cast("double")
        return parsed, col.isNotNull() & ~finite(parsed)
    text = F.trim(col.cast("string"))
    present = text.isNotNull() & (text != "")
    parsed = text.try_cast("double")
    bad = present & (parsed.isNull() | ~finite(parsed))
    return F.when(present, parsed), F.coalesce(bad, F.lit(False))


def _text(col: Column, dtype: DataType) -> Column:
    """A value as a string; nested values (JSON objects, lists) as JSON text."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if isinstance(dtype, T.StructType | T.ArrayType | T.MapType):
        return F.to_json(col)
    return col.cast("string")


def _as_text(frame: DataFrame, name: str) -> Column:
    """A column of ``frame`` as strings (:func:`_text`)."""
    from pyspark.sql import functions as F

    return _text(F.col(name), frame.schema[name].dataType)


@dataclass(frozen=True)
class SparkValidation:
    """Every input row once (``rows``: canonical columns, ``__row``, ``__reason`` and, for a flagged
    row, its input values as text): accepted rows have no reason. Persist ``rows`` to read it twice."""

    rows: DataFrame
    rows_in: int
    extra_columns: tuple[str, ...]
    input_columns: tuple[str, ...]

    @staticmethod
    def accepted_of(rows: DataFrame) -> DataFrame:
        """The accepted events (canonical columns) of ``rows``."""
        from pyspark.sql import functions as F

        return rows.filter(F.col("__reason").isNull()).select(*s.EVENT_COLUMNS)

    @staticmethod
    def quarantine_of(rows: DataFrame) -> DataFrame:
        """The quarantined rows of ``rows``: row, input values as text, reason (by row)."""
        from pyspark.sql import functions as F

        return (
            rows.filter(F.col("__reason").isNotNull())
            .select(F.col("__row").alias(ROW), "__raw.*", F.col("__reason").alias(s.REASON))
            .sortWithinPartitions(ROW)
        )

    @property
    def accepted(self) -> DataFrame:
        return self.accepted_of(self.rows)

    @property
    def quarantine(self) -> DataFrame:
        return self.quarantine_of(self.rows)


def _row_numbers(spark: SparkSession, frame: DataFrame) -> tuple[DataFrame, int]:
    """``frame`` with ``__row``: each row's 1-based position in the input, and the row count.

    Positions come from ``monotonically_increasing_id`` (partition index in the high bits) and
    the row count of each partition, one small aggregate: no single-partition window.
    """
    from pyspark.sql import functions as F

    ided = frame.withColumn("__id", F.monotonically_increasing_id())
    counts = ided.groupBy(F.shiftright("__id", 33).alias("p")).count().orderBy("p").collect()
    offsets: list[Column] = []
    total = 0
    for row in counts:
        offsets += [F.lit(int(row["p"])), F.lit(total)]
        total += int(row["count"])
    if not offsets:
        return ided.withColumn("__row", F.lit(0).cast("long")), 0
    part = F.shiftright("__id", 33)
    local = F.col("__id") - F.shiftleft(part, 33)
    start = F.create_map(*offsets)[part]
    return ided.withColumn("__row", start + local + 1), total


def validate_events(
    spark: SparkSession, raw: DataFrame, *, source: str, reference_time: datetime | None = None
) -> SparkValidation:
    """Split a raw Spark frame with canonical column names into accepted events and quarantined rows."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    missing = [c for c in s.EVENT_REQUIRED if c not in raw.columns]
    if missing:
        raise EventsFileError(
            f"{source}: missing required column '{missing[0]}'"
            + f"; columns found: {', '.join(c for c in raw.columns if c != CORRUPT) or 'none'}"
        )
    if reference_time is not None and reference_time.tzinfo is None:
        raise ValueError("reference_time must be timezone-aware")
    inputs = [c for c in raw.columns if c != CORRUPT]
    extra = tuple(c for c in inputs if c not in s.EVENT_SCHEMA and c != ROW)
    frame, rows_in = _row_numbers(spark, raw)

    user = F.trim(F.col(s.USER_ID).cast("string"))
    etype = F.trim(F.col(s.EVENT_TYPE).cast("string"))
    ts = _parse_ts(F.col(s.TS), raw.schema[s.TS].dataType)
    if "amount" in raw.columns:
        amount, bad_amount = _parse_amount(F.col("amount"), raw.schema["amount"].dataType)
    else:
        amount, bad_amount = F.lit(None).cast("double"), F.lit(False)
    canon: dict[str, Column] = {s.USER_ID: user, s.TS: ts, s.EVENT_TYPE: etype}
    trimmed = {s.USER_ID, s.EVENT_TYPE}  # canonical text of the input column of that name
    for name in s.EVENT_OPTIONAL:
        if name == "amount":
            canon[name] = amount
        elif name == "properties" and name not in raw.columns and extra:
            canon[name] = F.to_json(F.struct(*[F.col(c) for c in extra]))
        elif name in raw.columns:
            value = F.trim(_as_text(raw, name))
            canon[name] = F.when(value != "", value)
            trimmed.add(name)
        else:
            canon[name] = F.lit(None).cast("string")
    canonical = [canon[c].alias(c) for c in s.EVENT_COLUMNS]

    reason = F.when(F.lit(False), F.lit(None))
    if CORRUPT in raw.columns:
        reason = F.when(F.col(CORRUPT).isNotNull(), F.lit(s.REASON_MALFORMED_LINE))
    reason = (
        reason.when(user.isNull() | (user == ""), F.lit(s.REASON_MISSING_USER))
        .when(etype.isNull() | (etype == ""), F.lit(s.REASON_MISSING_EVENT_TYPE))
        .when(ts.isNull(), F.lit(s.REASON_BAD_TS))
    )
    if reference_time is not None:
        reason = reason.when(ts > F.lit(reference_time), F.lit(s.REASON_FUTURE_TS))
    reason = reason.when(bad_amount, F.lit(s.REASON_BAD_AMOUNT))

    # The input values travel through the de-duplication shuffle as they are (as text only for the
    # quarantined rows, after it), and a text value equal to its canonical value (the usual case:
    # nothing to trim) as null, restored from the canonical column after the shuffle.
    restored = {c for c in trimmed if isinstance(raw.schema[c].dataType, T.StringType)}
    kept = [
        (F.when(~F.col(c).eqNullSafe(canon[c]), F.col(c)) if c in restored else F.col(c)).alias(c)
        for c in inputs
    ]
    if CORRUPT in raw.columns:
        kept.append(F.col(CORRUPT).alias(LINE))
    staged = frame.select("__row", *canonical, reason.alias("__reason"), F.struct(*kept).alias("__in"))
    # clean rows apart from flagged ones (the null reason is part of the key): the first copy stays.
    # A hash of the key columns leads the key: the window's sort compares 8 bytes, not ten columns
    # (the amount stays out of the hash: -0.0 and 0.0 are one key)
    key: list[Column | str] = [*s.EVENT_COLUMNS, F.col("__reason").isNull()]
    lead = F.xxhash64(*[c for c in s.EVENT_COLUMNS if c != "amount"])
    duplicate = F.col("__reason").isNull() & (
        F.row_number().over(Window.partitionBy(lead, *key).orderBy("__row")) > 1
    )
    given = F.col("__in")

    def raw_text(c: str) -> Column:
        value = given.getField(c)
        if c in restored:
            value = F.coalesce(value, F.col(c))
        return _text(value, raw.schema[c].dataType).alias(c)

    raw_texts = [raw_text(c) for c in inputs]
    if CORRUPT in raw.columns:
        raw_texts.append(given.getField(LINE).alias(LINE))
    marked = (
        staged.withColumn(
            "__reason", F.when(duplicate, F.lit(s.REASON_DUPLICATE)).otherwise(F.col("__reason"))
        )
        .withColumn("__raw", F.when(F.col("__reason").isNotNull(), F.struct(*raw_texts)))
        .drop("__in")
    )
    return SparkValidation(rows=marked, rows_in=rows_in, extra_columns=extra, input_columns=tuple(inputs))


__all__ = ["SPARK_TS_FORMATS", "SparkValidation", "utc_timestamp", "validate_events"]
