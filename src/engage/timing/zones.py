"""Each user's time zone: the one the users table states, else one inferred from activity, else UTC.

Every zone is an IANA name so one conversion path serves all: an inferred zone is a fixed offset
written as ``Etc/GMT-5`` (UTC+5; POSIX signs are inverted). ``zone_source`` says which rule gave
it (``stated``, ``inferred``, ``utc``), and an unknown name in the table is a stated fallback, never
an error: the user gets the inferred zone or UTC and ``zone_note`` names the bad value.
"""

from __future__ import annotations

from functools import cache, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl
from numpy.typing import NDArray

from engage import schemas

TIMEZONE = schemas.TIMEZONE
ZONE = "zone"
ZONE_SOURCE = "zone_source"
ZONE_NOTE = "zone_note"
HOURS = 24


@cache
def is_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def fixed_zone(offset_hours: int) -> str:
    """The IANA name of a whole-hour UTC offset (``Etc/GMT-5`` is UTC+5)."""
    if offset_hours == 0:
        return schemas.UTC
    return f"Etc/GMT{-offset_hours:+d}"


def infer_offsets(utc_hours: NDArray[np.float64], population_local: NDArray[np.float64]) -> NDArray[np.int64]:
    """Per user, the whole-hour offset (-11..+12) that best aligns their UTC hour-of-day activity with
    the population's local hour-of-day profile (largest dot product): (n, 24) counts -> (n,)."""
    offsets = np.arange(-11, 13)
    # local hour = utc hour + offset: activity at UTC hour u meets the population at (u + offset) % 24,
    # so every offset's dot product is one column of a (24 x 24) matmul (24 rolls cost 10x more)
    shifted = population_local[(np.arange(HOURS)[:, None] + offsets[None, :]) % HOURS]
    scores = utc_hours @ shifted
    return np.asarray(offsets[scores.argmax(axis=1)], dtype=np.int64)


def resolve_zones(
    users: pl.DataFrame,
    utc_hours: NDArray[np.float64],
    population_local: NDArray[np.float64] | None,
    *,
    min_events: int,
) -> pl.DataFrame:
    """``user_id, zone, zone_source, zone_note`` for the users in `users` (rows aligned to `utc_hours`).

    `users` has ``user_id`` and, optionally, ``timezone``. A known stated zone is kept; otherwise a
    user with at least `min_events` activity hours gets the offset inferred against
    `population_local` (hour-of-day shares), and anyone else UTC.
    """
    stated = (
        users[TIMEZONE] if TIMEZONE in users.columns else pl.Series([None] * users.height, dtype=pl.String)
    )
    names = stated.cast(pl.String).to_list()
    known = np.array([n is not None and is_zone(n) for n in names], dtype=bool)
    counts = utc_hours.sum(axis=1)
    can_infer = (counts >= min_events) & (population_local is not None)
    inferred = (
        infer_offsets(utc_hours, population_local)
        if population_local is not None
        else np.zeros(users.height, dtype=np.int64)
    )
    zone = [
        name if ok else (fixed_zone(int(off)) if inf else schemas.UTC)
        for name, ok, inf, off in zip(names, known, can_infer, inferred, strict=True)
    ]
    source = np.where(known, "stated", np.where(can_infer, "inferred", "utc"))
    note = [
        None if (n is None or ok) else f"timezone {n!r} is not an IANA zone"
        for n, ok in zip(names, known, strict=True)
    ]
    return pl.DataFrame(
        {
            schemas.USER_ID: users[schemas.USER_ID].cast(pl.String),
            ZONE: pl.Series(zone, dtype=pl.String),
            ZONE_SOURCE: pl.Series(source.tolist(), dtype=pl.String),
            ZONE_NOTE: pl.Series(note, dtype=pl.String),
        }
    )


def local_parts(frame: pl.DataFrame, ts: str = schemas.TS, zone: str = ZONE) -> pl.DataFrame:
    """`frame` with ``local_how`` (local hour of the week, Monday 00:00 = 0) from its UTC `ts` and `zone`."""
    parts = []
    for (name,), part in frame.partition_by(zone, as_dict=True, maintain_order=True).items():
        local = pl.col(ts).dt.convert_time_zone(str(name))
        parts.append(
            part.with_columns(
                # Int64 before the arithmetic: weekday and hour are Int8, and Saturday 08:00 on
                # (128+) wrapped negative, landing on the wrong day's hours
                ((local.dt.weekday().cast(pl.Int64) - 1) * HOURS + local.dt.hour().cast(pl.Int64)).alias(
                    "local_how"
                )
            )
        )
    if not parts:
        return frame.with_columns(pl.lit(None, dtype=pl.Int64).alias("local_how"))
    return pl.concat(parts)


def utc_offset_hours(zones: list[str], moment_us: int) -> NDArray[np.float64]:
    """Each zone's UTC offset in hours at one instant (epoch microseconds)."""
    names = np.asarray(zones, dtype=object)
    out = np.zeros(len(zones))
    for name in set(zones):
        out[names == name] = _offset_hours(name, moment_us)
    return out


@lru_cache(maxsize=8192)
def _offset_hours(name: str, moment_us: int) -> float:
    """One zone's UTC offset in hours at one instant (cached: the service asks each hour's again)."""
    stamp = pl.Series([moment_us], dtype=pl.Int64).cast(schemas.TS_DTYPE)
    local = stamp.dt.convert_time_zone(name).dt.replace_time_zone(None).cast(pl.Int64)[0]
    return float((local - moment_us) / 3_600_000_000)
