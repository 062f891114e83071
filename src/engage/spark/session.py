"""The Spark session engage builds when none is given: from the ``spark`` config section, UTC.

A job handed an existing session (Databricks, EMR, ``spark-submit``, a Spark Connect client) uses
it as it is; :func:`utc_session` only pins the session time zone to UTC for the job's duration,
since pandas UDFs see timestamps as naive values in the session's zone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from engage.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DAY_US = 86_400 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_ZONE = "spark.sql.session.timeZone"


def _us(d: datetime) -> int:
    """Microseconds since the epoch for a tz-aware (or UTC-naive) datetime, exactly."""
    d = d if d.tzinfo is not None else d.replace(tzinfo=UTC)
    delta = d - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def spark_session(
    config: SparkConfig | None = None,
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    app_name: str = "engage",
) -> SparkSession:
    """A session from the ``spark`` config (created, or the active one reused), with UTC time.

    ``master`` and ``conf`` override the config's (``--master``; extra settings win over the
    config's). With ``config.remote`` set the session is a Spark Connect client of that server.
    """
    config = config or SparkConfig()
    settings = {**config.conf, **(conf or {})}
    if config.remote is None and master is None and settings.get("spark.driver.host") == "127.0.0.1":
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # executors started by this driver (local mode, standalone workers on this host) run this
    # interpreter: the one with engage and its models' libraries
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if config.remote is not None and master is None:
        builder = builder.remote(config.remote)
    else:
        if "SPARK_REMOTE" not in os.environ:
            # pyspark marks the process as Connect-only once a Connect client ran in it and keeps
            # the mark after that client stops; a classic session asked for afterwards (a notebook
            # that used Connect first) would fail with CONNECT_URL_NOT_SET
            os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
        builder = builder.master(master or config.master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    builder = builder.config(_TIME_ZONE, "UTC").config("spark.sql.execution.arrow.pyspark.enabled", "true")
    return builder.getOrCreate()


def local_spark(shuffle_partitions: int = 4) -> SparkSession:
    """The default local session (``spark`` config defaults) with ``shuffle_partitions``."""
    return spark_session(conf={"spark.sql.shuffle.partitions": str(shuffle_partitions)})


_JOB_CONF = {
    _TIME_ZONE: "UTC",
    # UTC instants in microseconds (Parquet's TIMESTAMP_MICROS, isAdjustedToUTC), as the embedded
    # engine writes them: Spark's INT96 default reads back as naive nanoseconds in other readers
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


@contextmanager
def utc_session(spark: SparkSession) -> Iterator[SparkSession]:
    """The session with UTC time and engage's Parquet timestamps inside the block, restored after."""
    before: dict[str, str | None] = {key: spark.conf.get(key, None) for key in _JOB_CONF}
    for key, value in _JOB_CONF.items():
        spark.conf.set(key, value)
    try:
        yield spark
    finally:
        for key, old in before.items():
            if old is None:
                spark.conf.unset(key)
            elif old != _JOB_CONF[key]:
                spark.conf.set(key, old)
