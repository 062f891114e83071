"""The Spark session engage creates when none is given: local, bound to loopback, UTC."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DAY_US = 86_400 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(d: datetime) -> int:
    """Microseconds since the epoch for a tz-aware (or UTC-naive) datetime, exactly."""
    d = d if d.tzinfo is not None else d.replace(tzinfo=UTC)
    delta = d - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def local_spark(shuffle_partitions: int = 4) -> SparkSession:
    """A local[2] SparkSession bound to loopback with UTC session time (created or reused)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # executors must run this interpreter (the one with engage and its models' libraries)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master("local[2]")
        .appName("engage-features")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
