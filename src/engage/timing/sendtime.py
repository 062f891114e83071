"""The send-time and channel model: per user, expected engagement by hour over the next window.

``TimingModel`` holds what training learns once: the population's local hour-of-week profile and
open/click rates (the prior every user is shrunk toward) and each channel's relative effect from
the randomized campaign log. ``send_times`` reads a user's shrunk profile at each whole UTC hour of
the window ``[as_of, as_of + window_hours)`` in the user's zone, masks the channel's quiet hours
(local), takes the best hour, and explores a uniformly drawn allowed hour with probability
``epsilon``; the chosen hour's propensity is returned so timing policies can be judged off-policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
from numpy.typing import NDArray

from engage import schemas
from engage.config import TimingConfig
from engage.hashing import mix_int, stable_hashes, unit_interval
from engage.timing.features import HOW, OPEN_EVENTS, TimingFeatures, TimingPrior, shrink_profile
from engage.timing.zones import HOURS, ZONE, ZONE_NOTE, ZONE_SOURCE, utc_offset_hours

SEND_AT = schemas.SEND_AT
SEND_PROPENSITY = schemas.SEND_PROPENSITY
SEND_REASON = schemas.SEND_REASON
EXPECTED_ENGAGEMENT = "expected_engagement"
"""Activity in the chosen hour over the user's average hour (1 = an hour picked at random)."""
LOCAL_HOUR = "local_send_hour"
SEND_BASIS = "send_basis"
"""Why this hour: ``user`` (own profile), ``population`` (too little history), ``after_window``."""
COUNT_COLUMNS = tuple(f"how_{h:03d}" for h in range(HOW))
"""The pyfunc's input: activity hours by local hour of the week."""
_SALTS = (0x5E17, 0x7157)


@dataclass
class TimingModel:
    """What ``engage train timing`` fits: the population prior and the channels' relative effects."""

    prior: TimingPrior
    channel_effect: dict[str, float] = field(default_factory=dict)
    """Each channel's relative effect (mean over channels 1; a missing channel counts 1)."""
    prior_strength: float = 10.0
    smoothing_kappa: float = 3.0
    daytype_weight: float = 0.3
    same_day_weight: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def expected_engagement(self, frame: pd.DataFrame) -> np.ndarray:
        """(n, 168) engagement by local hour of the week relative to the user's mean, from the counts."""
        missing = [c for c in COUNT_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"timing model input lacks {len(missing)} count columns, first {missing[0]}")
        counts = frame[list(COUNT_COLUMNS)].to_numpy(dtype=np.float64)
        return np.asarray(self.profile(counts) * HOW)

    def profile(self, counts: NDArray[np.float64]) -> NDArray[np.float64]:
        """(n, 168) shrunk local hour-of-week shares from activity counts (rows sum to 1)."""
        return shrink_profile(
            counts,
            self.prior,
            self.prior_strength,
            kappa=self.smoothing_kappa,
            daytype_weight=self.daytype_weight,
            same_day_weight=self.same_day_weight,
        )

    def channel_scores(self, table: pl.DataFrame) -> NDArray[np.float64]:
        """(n, channels): relative expected gain per channel, the population's effect x the user's
        open rate over similar users' (``open_lift_*``; channels without opens: the effect alone)."""
        out = np.ones((table.height, len(schemas.CHANNELS)))
        lifts = [f"open_lift_{ch}" for ch in schemas.CHANNELS if ch in OPEN_EVENTS]
        present = [c for c in lifts if c in table.columns]
        # one select for every lift column: each polars call costs a request's row its fixed cost
        values = table.select(pl.col(c).fill_null(1.0) for c in present).to_numpy() if present else None
        for j, ch in enumerate(schemas.CHANNELS):
            out[:, j] = self.channel_effect.get(ch, 1.0)
            column = f"open_lift_{ch}"
            if values is not None and column in present:
                out[:, j] *= values[:, present.index(column)]
        return out


def choose_channels(scores: NDArray[np.float64], consent: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Per user, the consented channel with the highest score (index into CHANNELS; -1: none)."""
    masked = np.where(consent, scores, -np.inf)
    return np.where(consent.any(axis=1), masked.argmax(axis=1), -1).astype(np.int64)


def _hour_start(as_of: datetime) -> datetime:
    as_of = as_of.replace(tzinfo=UTC) if as_of.tzinfo is None else as_of.astimezone(UTC)
    floor = as_of.replace(minute=0, second=0, microsecond=0)
    return floor if floor == as_of else floor + timedelta(hours=1)


def quiet_mask(local_hour: NDArray[np.int64], quiet: tuple[int, int] | None) -> NDArray[np.bool_]:
    """True where a local hour falls in the quiet span [start, end) (wrapping past midnight)."""
    if quiet is None:
        return np.zeros(local_hour.shape, dtype=bool)
    start, end = quiet
    if start < end:
        return (local_hour >= start) & (local_hour < end)
    return (local_hour >= start) | (local_hour < end)


def slot_hours(features: TimingFeatures, start: datetime, hours: int) -> NDArray[np.int64]:
    """(n, hours): each user's local hour of the week at the whole UTC hours from `start`."""
    zones = features.table[ZONE].to_list()
    start_us = int(start.timestamp() * 1_000_000)
    offsets = np.floor(utc_offset_hours(zones, start_us)).astype(np.int64)
    how0 = start.weekday() * HOURS + start.hour
    return np.asarray((how0 + np.arange(hours)[None, :] + offsets[:, None]) % HOW, dtype=np.int64)


@dataclass(frozen=True)
class _Choice:
    """Each row's send hour as arrays: what :func:`send_times` frames and :func:`decision_times`
    turns into score columns (a request's row needs no frame)."""

    start_us: int
    """The window's first whole UTC hour, epoch microseconds."""
    channels: NDArray[np.int64]
    chosen: NDArray[np.int64]
    """Hours after the start."""
    local_hour: NDArray[np.int64]
    engagement: NDArray[np.float64]
    propensity: NDArray[np.float64]
    basis: NDArray[np.str_]

    @property
    def send_at_us(self) -> NDArray[np.int64]:
        return np.asarray(self.start_us + self.chosen * 3_600_000_000, dtype=np.int64)


def _choose(
    features: TimingFeatures,
    as_of: datetime,
    config: TimingConfig,
    channels: NDArray[np.int64] | None,
    explore: bool,
    seed: int,
) -> _Choice:
    """The send hour of every row of `features` (see :func:`send_times`)."""
    n = features.table.height
    chans = np.full(n, -1, dtype=np.int64) if channels is None else np.asarray(channels, dtype=np.int64)
    start = _hour_start(as_of)
    span = config.window_hours + HOURS  # room to find an allowed hour after the window
    how = slot_hours(features, start, span)
    engagement = np.take_along_axis(features.profile, how, axis=1) * HOW
    allowed = np.ones(how.shape, dtype=bool)
    for j, ch in enumerate(schemas.CHANNELS):
        rows = chans == j
        if rows.any():
            allowed[rows] = ~quiet_mask(how[rows] % HOURS, config.quiet_hours.get(ch))
    in_window = allowed.copy()
    in_window[:, config.window_hours :] = False
    after = ~in_window.any(axis=1)
    first_after = np.argmax(allowed, axis=1)
    scores = np.where(in_window, engagement, -np.inf)
    best = np.where(after, first_after, scores.argmax(axis=1))
    n_allowed = in_window.sum(axis=1)
    chosen, propensity = best, np.ones(n)
    if explore and config.epsilon > 0:
        ids = features.table[schemas.USER_ID].cast(pl.String).to_numpy().astype(object)
        h = mix_int(stable_hashes(ids, [salt + seed for salt in _SALTS]), int(start.timestamp()))
        u_explore, u_pick = unit_interval(h[0]), unit_interval(h[1])
        explored = (u_explore < config.epsilon) & ~after
        rank = np.floor(u_pick * np.maximum(n_allowed, 1)).astype(np.int64)
        pick = np.argmax(np.cumsum(in_window, axis=1) > rank[:, None], axis=1)
        chosen = np.where(explored, pick, best)
        propensity = np.where(
            after, 1.0, (1.0 - config.epsilon) * (chosen == best) + config.epsilon / np.maximum(n_allowed, 1)
        )
    rows = np.arange(n)
    sparse = features.table["activity_hours"].to_numpy() < config.sparse_events
    return _Choice(
        start_us=int(start.timestamp() * 1_000_000),
        channels=chans,
        chosen=np.asarray(chosen, dtype=np.int64),
        local_hour=np.asarray(how[rows, chosen] % HOURS, dtype=np.int64),
        engagement=np.asarray(engagement[rows, chosen], dtype=np.float64),
        propensity=np.asarray(propensity, dtype=np.float64),
        basis=np.where(after, "after_window", np.where(sparse, "population", "user")),
    )


def send_times(
    features: TimingFeatures,
    as_of: datetime,
    config: TimingConfig,
    *,
    channels: NDArray[np.int64] | None = None,
    explore: bool = True,
    seed: int = 0,
) -> pl.DataFrame:
    """Each user's send time in the window after `as_of`, for the channel in `channels` (index; -1 none).

    Columns: user_id, channel, send_at (UTC), local_send_hour, expected_engagement, send_propensity,
    send_basis, zone, zone_source, zone_note. Quiet hours of the channel are never chosen; when they
    cover the user's whole window the first allowed hour after it is used (``after_window``).
    """
    choice = _choose(features, as_of, config, channels, explore, seed)
    channel_names = np.array([*schemas.CHANNELS, None], dtype=object)
    return pl.DataFrame(
        {
            schemas.USER_ID: features.table[schemas.USER_ID],
            schemas.CHANNEL: pl.Series(channel_names[choice.channels].tolist(), dtype=pl.String),
            SEND_AT: pl.Series(choice.send_at_us, dtype=pl.Int64).cast(schemas.TS_DTYPE),
            LOCAL_HOUR: pl.Series(choice.local_hour, dtype=pl.Int64),
            EXPECTED_ENGAGEMENT: choice.engagement,
            SEND_PROPENSITY: choice.propensity,
            SEND_BASIS: pl.Series(choice.basis.tolist(), dtype=pl.String),
            ZONE: features.table[ZONE],
            ZONE_SOURCE: features.table[ZONE_SOURCE],
            ZONE_NOTE: features.table[ZONE_NOTE],
        }
    )


def top_hours(profile: NDArray[np.float64], k: int) -> NDArray[np.int64]:
    """(n, k): the k local hours of the week with the highest expected engagement, best first."""
    return np.asarray(np.argsort(-profile, axis=1, kind="stable")[:, :k], dtype=np.int64)


def active_spans(profile: NDArray[np.float64], weekdays: bool = True) -> NDArray[np.int64]:
    """Per row, the local start hour of the 3 hours with the most activity on weekdays (or weekends)."""
    rows = slice(0, 5) if weekdays else slice(5, 7)
    days = profile.reshape(-1, 7, HOURS)[:, rows].sum(axis=1)
    windows = days + np.roll(days, -1, axis=1) + np.roll(days, -2, axis=1)
    return np.asarray(windows.argmax(axis=1), dtype=np.int64)


_FEW_ROWS = 64
"""Up to this many rows (a request's users) the zone part of the reasons is joined in Python: the
frame expression costs a request about a millisecond however few the rows."""


def _reason_texts(
    basis: NDArray[Any],
    local_hour: NDArray[np.int64],
    zone: pl.Series,
    zone_source: pl.Series,
    profile: NDArray[np.float64],
) -> list[str | None]:
    """Why each send time, in plain words (the user's active hours, the population's, or quiet
    hours, and what is known of the zone), from the rows' send basis, local hour, zone and source."""
    hours = np.arange(HOURS)
    user = np.array([f"usually active {h:02d}:00-{(h + 3) % HOURS:02d}:00 on weekdays" for h in hours])
    population = np.array(
        [f"little history yet: {h:02d}:00 local, when most customers are active" for h in hours]
    )
    after = np.array(
        [f"quiet hours fill the send window: the first allowed hour, {h:02d}:00 local" for h in hours]
    )
    local = local_hour % HOURS
    text = np.where(
        basis == "after_window",
        after[local],
        np.where(basis == "population", population[local], user[active_spans(profile)]),
    )
    if len(text) <= _FEW_ROWS:  # as the expression below: an inferred zone that is null gives null
        return [
            _zone_said(str(line), name, source)
            for line, name, source in zip(text.tolist(), zone.to_list(), zone_source.to_list(), strict=True)
        ]
    # one text per row, built column-wise: a million rows through a Python loop cost seconds
    return (
        pl.DataFrame({"text": text, ZONE: zone, ZONE_SOURCE: zone_source})
        .select(
            pl.col("text")
            + pl.when(pl.col(ZONE_SOURCE) == "inferred")
            .then(pl.format(" (time zone {} inferred from activity)", pl.col(ZONE)))
            .when(pl.col(ZONE_SOURCE) == "utc")
            .then(pl.lit(" (time zone unknown: UTC)"))
            .otherwise(pl.lit(""))
        )
        .to_series()
        .to_list()
    )


def _zone_said(text: str, zone: str | None, source: str | None) -> str | None:
    """One reason with what it says of the zone (a row of :func:`_reason_texts`' expression)."""
    if source == "inferred":
        return None if zone is None else f"{text} (time zone {zone} inferred from activity)"
    return f"{text} (time zone unknown: UTC)" if source == "utc" else text


def decision_times(
    features: TimingFeatures,
    as_of: datetime,
    config: TimingConfig,
    channels: NDArray[np.int64],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """The score columns of the send time: ``send_at`` (UTC), ``send_propensity``, ``send_reason``.

    Rows whose channel is -1 (nothing sent) get nulls. Rows align with `features`.
    """
    n = features.table.height
    sent = channels >= 0
    choice = _choose(features, as_of, config, channels, True, seed)
    stamps = choice.send_at_us.astype("datetime64[us]")
    stamps[~sent] = np.datetime64("NaT")
    reasons = _reason_texts(
        choice.basis, choice.local_hour, features.table[ZONE], features.table[ZONE_SOURCE], features.profile
    )
    return {
        SEND_AT: pd.Series(pd.DatetimeIndex(stamps, tz="UTC")),
        SEND_PROPENSITY: np.where(sent, choice.propensity, np.nan),
        SEND_REASON: np.array(
            [r if ok else None for r, ok in zip(reasons, sent.tolist(), strict=True)], dtype=object
        )
        if n
        else np.zeros(0, dtype=object),
    }
