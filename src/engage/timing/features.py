"""Point-in-time timing and channel features: when each user is active, how peaked, which channel answers.

Everything is read from events (and the campaign log) strictly before ``as_of``:

- the hour-of-week activity profile in the user's local time (168 shares, Monday 00:00 first),
  smoothed over neighbouring hours and shrunk toward the population's profile with a prior of
  ``prior_strength`` pseudo-events, so a sparse or new user reads as the population;
- ``peakedness``: 1 - entropy / log(168) of that profile (0 = flat, 1 = one hour);
- per-channel open and click rates, shrunk toward the population's rate with
  ``channel_prior_strength`` pseudo-sends, and the channel of the last message the user answered.

Activity is every event but the answers to messages (opens and clicks happen when a message is sent,
not when the user chooses), counted once per user and clock hour (a basket of 40 lines is one visit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl
from numpy.typing import NDArray

from engage import schemas
from engage.timing.prior import fit_mixture, user_priors
from engage.timing.zones import HOURS, ZONE, local_parts, resolve_zones

HOW = 7 * HOURS
RESPONSE_EVENTS: dict[str, str] = {"email_open": "email", "push_open": "push", "email_click": "email"}
"""Events that answer a message, and the channel they answer on."""
OPEN_EVENTS = {"email": "email_open", "push": "push_open"}
CLICK_EVENTS = {"email": "email_click"}
LAST_CHANNEL = "last_engaged_channel"
PEAKEDNESS = "peakedness"
ACTIVITY_HOURS = "activity_hours"
EM_ITERATIONS = 60
ACTIVITY_BINS = (0.0, 3.0, 8.0, 15.0, 30.0, 60.0)
"""Lower edges of the activity-hours bins within which open rates are compared."""
MIN_BIN_SENDS = 200.0


@dataclass(frozen=True)
class TimingPrior:
    """What users are shrunk toward: the population's rhythm profiles (a mixture) and channel rates."""

    profiles: NDArray[np.float64]
    """(k, 168) local hour-of-week rhythm profiles, rows summing to 1 (``engage.timing.prior``)."""
    weights: NDArray[np.float64]
    """(k,) their shares of the population."""
    open_rate: dict[str, float] = field(default_factory=dict)
    click_rate: dict[str, float] = field(default_factory=dict)
    open_rate_by_activity: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    """Per channel, the open rate of users in each ``ACTIVITY_BINS`` bin (engaged users open more)."""

    @property
    def population(self) -> NDArray[np.float64]:
        """(168,) the population's profile: the mixture's average."""
        return np.asarray(self.weights @ self.profiles)

    @property
    def hour_of_day(self) -> NDArray[np.float64]:
        return np.asarray(self.population.reshape(7, HOURS).sum(axis=0))

    def user_priors(self, counts: NDArray[np.float64]) -> NDArray[np.float64]:
        """(n, 168): each user's prior, the rhythm profiles weighted by how well they fit the counts."""
        return user_priors(counts, self.profiles, self.weights)


@dataclass(frozen=True)
class TimingFeatures:
    """Per user (rows aligned): the feature table, the raw local counts and the shrunk profile."""

    table: pl.DataFrame
    """user_id, zone, zone_source, zone_note, activity_hours, peakedness, open/click rates, last channel."""
    counts: NDArray[np.float64]
    """(n, 168) activity hours by local hour of week, before smoothing and shrinkage."""
    profile: NDArray[np.float64]
    """(n, 168) the shrunk profile: each row sums to 1."""
    prior: TimingPrior


def _as_of(as_of: datetime) -> datetime:
    from datetime import UTC

    return as_of.replace(tzinfo=UTC) if as_of.tzinfo is None else as_of.astimezone(UTC)


def activity_hours(events: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """``user_id, ts`` of each user's active clock hours before `as_of` (answers to messages excluded)."""
    stamp = events.collect_schema()[schemas.TS]
    hour = 3_600_000_000
    # distinct (user, whole hours since the epoch): integers hash faster than zoned timestamps
    return (
        events.lazy()
        .filter(pl.col(schemas.TS) < _as_of(as_of), ~pl.col(schemas.EVENT_TYPE).is_in(list(RESPONSE_EVENTS)))
        .select(
            pl.col(schemas.USER_ID).cast(pl.String), (pl.col(schemas.TS).dt.epoch("us") // hour).alias("h")
        )
        .unique()
        .select(schemas.USER_ID, _from_hours(pl.col("h") * hour, stamp).alias(schemas.TS))
        .collect()
    )


def _from_hours(micros: pl.Expr, stamp: pl.DataType) -> pl.Expr:
    """Epoch microseconds as timestamps of the events' type (``ts``'s unit and time zone)."""
    out = pl.from_epoch(micros, time_unit="us")
    zone = getattr(stamp, "time_zone", None)
    return (out.dt.replace_time_zone(zone) if zone else out).cast(stamp)


def _matrix(codes: NDArray[np.int64], slots: NDArray[np.int64], n: int, width: int) -> NDArray[np.float64]:
    """(n, width) counts of the (code, slot) pairs (a bincount: np.add.at is several times slower)."""
    flat = np.bincount(codes * width + slots, minlength=n * width)
    return np.asarray(flat, dtype=np.float64).reshape(n, width)


def _codes(ids: pl.Series, index: pl.DataFrame) -> NDArray[np.int64]:
    joined = pl.DataFrame({schemas.USER_ID: ids}).join(
        index, on=schemas.USER_ID, how="left", maintain_order="left"
    )
    return joined["code"].to_numpy().astype(np.int64)


def smooth(
    counts: NDArray[np.float64], kappa: float = 3.0, daytype_weight: float = 0.3, same_day_weight: float = 0.0
) -> NDArray[np.float64]:
    """Counts pooled over days and smoothed over neighbouring hours (total kept): (n, 168) -> (n, 168).

    Each hour of the week reads `same_day_weight` of that very day of the week, `daytype_weight`
    of the same hour on days of its kind (weekdays, weekends) and the rest from all days, then a
    circular von Mises kernel (concentration `kappa`) over the hours of the day: a user with a dozen
    visits shows when in the day they come back better than a 168-hour histogram does.
    """
    kernel = hour_kernel(kappa)
    days = counts.reshape(-1, 7, HOURS)
    rest = max(1.0 - daytype_weight - same_day_weight, 0.0)
    # smoothing is linear: smooth the (n, 24) pools, then lay them out over the week
    all_days = (days.sum(axis=1) / 7.0) @ kernel
    weekday = (days[:, :5].sum(axis=1) / 5.0) @ kernel
    weekend = (days[:, 5:].sum(axis=1) / 2.0) @ kernel
    out = np.empty_like(days)
    out[:, :5] = (rest * all_days + daytype_weight * weekday)[:, None, :]
    out[:, 5:] = (rest * all_days + daytype_weight * weekend)[:, None, :]
    if same_day_weight > 0:
        out += same_day_weight * (days.reshape(-1, HOURS) @ kernel).reshape(days.shape)
    return out.reshape(-1, HOW)


def hour_kernel(kappa: float) -> NDArray[np.float64]:
    """(24, 24) circulant von Mises kernel: ``hours @ K`` smooths each day's 24 hours (circularly)."""
    distance = np.arange(HOURS)[None, :] - np.arange(HOURS)[:, None]
    weights = np.exp(kappa * np.cos(2.0 * np.pi * distance / HOURS))
    return np.asarray(weights / weights.sum(axis=1, keepdims=True))


def shrink_profile(
    counts: NDArray[np.float64],
    prior: TimingPrior,
    strength: float,
    *,
    kappa: float = 3.0,
    daytype_weight: float = 0.3,
    same_day_weight: float = 0.0,
) -> NDArray[np.float64]:
    """(smoothed counts + strength x the user's prior) / (events + strength): rows sum to 1."""
    total = counts.sum(axis=1, keepdims=True)
    out = smooth(counts, kappa, daytype_weight, same_day_weight)
    mix = prior.user_priors(counts)
    mix *= strength  # in place: a million users' profiles are 1.3 GB a copy
    out += mix
    out /= total + strength
    return out


def peakedness(profile: NDArray[np.float64]) -> NDArray[np.float64]:
    """1 - entropy / log(168) of each row (rows sum to 1)."""
    from scipy.special import entr  # -p log p, 0 at 0: one pass, no temporaries (1M x 168)

    return np.asarray(1.0 - entr(profile).sum(axis=1) / np.log(profile.shape[1]))


def timing_features(
    events: pl.DataFrame,
    as_of: datetime,
    *,
    users: pl.DataFrame | None = None,
    exposures: pl.DataFrame | None = None,
    prior: TimingPrior | None = None,
    prior_strength: float = 10.0,
    channel_prior_strength: float = 5.0,
    min_events_to_infer_zone: int = 5,
    smoothing_kappa: float = 3.0,
    daytype_weight: float = 0.3,
    same_day_weight: float = 0.0,
    rhythms: int = 12,
    seed: int = 0,
) -> TimingFeatures:
    """The timing features of every user in `users` (else of every user with an event before `as_of`).

    `users` may carry ``timezone`` (IANA; see ``engage.timing.zones``); `exposures` (the campaign
    log) gives the sends the open rates divide by. Without `prior`, the population's profile and
    rates come from the same data before `as_of` (users with a stated zone anchor the inference).
    """
    unshrunk = activity_features(
        events,
        as_of,
        users=users,
        exposures=exposures,
        prior=prior,
        channel_prior_strength=channel_prior_strength,
        min_events_to_infer_zone=min_events_to_infer_zone,
        smoothing_kappa=smoothing_kappa,
        daytype_weight=daytype_weight,
        same_day_weight=same_day_weight,
        rhythms=rhythms,
        seed=seed,
    )
    counts, prior = unshrunk.counts, unshrunk.prior
    profile = shrink_profile(
        counts, prior, prior_strength, kappa=smoothing_kappa, daytype_weight=daytype_weight
    )
    table = unshrunk.table
    at = table.columns.index(ACTIVITY_HOURS) + 1
    table = table.insert_column(at, pl.Series(PEAKEDNESS, peakedness(profile)))
    return TimingFeatures(table=table, counts=counts, profile=profile, prior=prior)


@dataclass(frozen=True)
class ActivityFeatures:
    """The timing features before the profile is shrunk (:func:`activity_features`)."""

    table: pl.DataFrame
    """The :class:`TimingFeatures` table without ``peakedness`` (it needs the shrunk profile)."""
    counts: NDArray[np.float64]
    """(n, 168) activity hours by local hour of week."""
    prior: TimingPrior
    """The prior given, else the one fitted on these users."""


def activity_features(
    events: pl.DataFrame,
    as_of: datetime,
    *,
    users: pl.DataFrame | None = None,
    exposures: pl.DataFrame | None = None,
    prior: TimingPrior | None = None,
    channel_prior_strength: float = 5.0,
    min_events_to_infer_zone: int = 5,
    smoothing_kappa: float = 3.0,
    daytype_weight: float = 0.3,
    same_day_weight: float = 0.0,
    rhythms: int = 12,
    seed: int = 0,
) -> ActivityFeatures:
    """:func:`timing_features` up to the shrunk profile: zones, local activity counts, channel rates.

    For a caller that shrinks the profile later, once (batch scoring keeps the counts per chunk and
    shrinks them when it scores); :func:`timing_features` is this plus the profile and peakedness.
    """
    as_of = _as_of(as_of)
    act = activity_hours(events, as_of)
    if users is not None:
        ids = users[schemas.USER_ID].cast(pl.String)
        user_frame = users.with_columns(ids.alias(schemas.USER_ID))
    else:
        ids = act[schemas.USER_ID].unique(maintain_order=True)
        user_frame = pl.DataFrame({schemas.USER_ID: ids})
    n = user_frame.height
    index = pl.DataFrame({schemas.USER_ID: user_frame[schemas.USER_ID], "code": np.arange(n, dtype=np.int64)})
    act = act.join(index, on=schemas.USER_ID, how="inner")
    codes = act["code"].to_numpy().astype(np.int64)
    utc_hod = _matrix(codes, act[schemas.TS].dt.hour().to_numpy().astype(np.int64), n, HOURS)

    if prior is not None:  # the population's local hours are known: one pass
        zones = resolve_zones(user_frame, utc_hod, prior.hour_of_day, min_events=min_events_to_infer_zone)
        local = local_parts(_with_zone(act, zones))
    else:  # users with a stated zone give the population's local hours, then the rest are inferred
        zones_first = resolve_zones(user_frame, utc_hod, None, min_events=min_events_to_infer_zone)
        local = local_parts(_with_zone(act, zones_first))
        stated = zones_first["zone_source"].to_numpy() == "stated"
        first_codes = local["code"].to_numpy().astype(np.int64)
        counts_first = _matrix(first_codes, local["local_how"].to_numpy(), n, HOW)
        population_local = None
        if stated.any() and counts_first[stated].sum() > 0:
            population_local = counts_first[stated].sum(axis=0).reshape(7, HOURS).sum(axis=0)
            population_local = population_local / population_local.sum()
        zones = resolve_zones(user_frame, utc_hod, population_local, min_events=min_events_to_infer_zone)
        if (zones[ZONE] != zones_first[ZONE]).any():
            local = local_parts(_with_zone(act, zones))
    counts = _matrix(local["code"].to_numpy().astype(np.int64), local["local_how"].to_numpy(), n, HOW)

    raw = _channel_counts(events, exposures, as_of, user_frame[schemas.USER_ID])
    bins = activity_bin(counts.sum(axis=1))
    if prior is None:
        smoothed = smooth(counts, smoothing_kappa, daytype_weight, same_day_weight)
        profiles, weights = fit_mixture(counts, smoothed, rhythms, iterations=EM_ITERATIONS, seed=seed)
        open_rate, click_rate, by_bin = _rates(raw, bins)
        prior = TimingPrior(
            profiles=profiles,
            weights=weights,
            open_rate=open_rate,
            click_rate=click_rate,
            open_rate_by_activity=by_bin,
        )
    table = zones.with_columns(pl.Series(ACTIVITY_HOURS, counts.sum(axis=1)))
    table = table.join(
        _channel_table(raw, bins, prior, channel_prior_strength),
        on=schemas.USER_ID,
        how="left",
        maintain_order="left",
    )
    return ActivityFeatures(table=table, counts=counts, prior=prior)


def _with_zone(act: pl.DataFrame, zones: pl.DataFrame) -> pl.DataFrame:
    """`act` with each row's user's zone (`zones` rows are the users' codes: a gather, not a join)."""
    return act.with_columns(zones[ZONE].gather(act["code"]))


def _responses(events: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    return events.filter(
        pl.col(schemas.TS) < as_of, pl.col(schemas.EVENT_TYPE).is_in(list(RESPONSE_EVENTS))
    ).select(pl.col(schemas.USER_ID).cast(pl.String), schemas.TS, schemas.EVENT_TYPE)


def _sends(exposures: pl.DataFrame | None, as_of: datetime) -> pl.DataFrame:
    empty = pl.DataFrame(schema={schemas.USER_ID: pl.String, schemas.CHANNEL: pl.String, "sends": pl.UInt32})
    if exposures is None or schemas.CHANNEL not in exposures.columns:
        return empty
    return (
        exposures.filter(pl.col(schemas.TS) < as_of, pl.col(schemas.MESSAGE_ID) != schemas.CONTROL_ARM)
        .group_by(pl.col(schemas.USER_ID).cast(pl.String), schemas.CHANNEL)
        .agg(pl.len().alias("sends"))
    )


def activity_bin(hours: NDArray[np.float64]) -> NDArray[np.int64]:
    """Each user's bin of activity hours (``ACTIVITY_BINS``): open rates are compared within a bin."""
    return np.asarray(np.digitize(hours, ACTIVITY_BINS[1:]), dtype=np.int64)


def _channel_counts(
    events: pl.DataFrame, exposures: pl.DataFrame | None, as_of: datetime, ids: pl.Series
) -> pl.DataFrame:
    """Per user: sends, opens and clicks per channel before `as_of`, and the last channel answered on."""
    responses = _responses(events, as_of)
    sends = _sends(exposures, as_of)
    # one pass per table: every channel's count in one aggregation, one join each
    sent = sends.group_by(schemas.USER_ID).agg(
        pl.col("sends").filter(pl.col(schemas.CHANNEL) == ch).sum().alias(f"sends_{ch}") for ch in OPEN_EVENTS
    )
    answered = responses.group_by(schemas.USER_ID).agg(
        *(
            (pl.col(schemas.EVENT_TYPE) == ev).sum().alias(f"{kind}_{ch}")
            for kind, table in (("opens", OPEN_EVENTS), ("clicks", CLICK_EVENTS))
            for ch, ev in table.items()
        ),
        pl.col(schemas.EVENT_TYPE)
        .replace_strict(RESPONSE_EVENTS)
        .sort_by(schemas.TS, pl.col(schemas.EVENT_TYPE).replace_strict(RESPONSE_EVENTS))
        .last()
        .alias(LAST_CHANNEL),
    )
    counts = [c for c in answered.columns if c not in (schemas.USER_ID, LAST_CHANNEL)]
    return (
        pl.DataFrame({schemas.USER_ID: ids})
        .join(sent, on=schemas.USER_ID, how="left", maintain_order="left")
        .join(answered, on=schemas.USER_ID, how="left", maintain_order="left")
        .with_columns(pl.col(*sent.columns[1:], *counts).fill_null(0).cast(pl.Float64))
        .select(schemas.USER_ID, *sent.columns[1:], *counts, LAST_CHANNEL)
    )


def _rates(
    raw: pl.DataFrame, bins: NDArray[np.int64]
) -> tuple[dict[str, float], dict[str, float], dict[str, NDArray[np.float64]]]:
    """The population's open and click rates per channel, and open rates per activity bin."""
    open_rate: dict[str, float] = {}
    click_rate: dict[str, float] = {}
    by_bin: dict[str, NDArray[np.float64]] = {}
    for ch in OPEN_EVENTS:
        sent, opened = raw[f"sends_{ch}"].to_numpy(), raw[f"opens_{ch}"].to_numpy()
        if sent.sum() == 0:
            continue
        open_rate[ch] = float(opened.sum() / sent.sum())
        s_bin = np.bincount(bins, weights=sent, minlength=len(ACTIVITY_BINS))
        o_bin = np.bincount(bins, weights=opened, minlength=len(ACTIVITY_BINS))
        # a bin with few sends leans on the overall rate (MIN_BIN_SENDS pseudo-sends)
        by_bin[ch] = (o_bin + MIN_BIN_SENDS * open_rate[ch]) / (s_bin + MIN_BIN_SENDS)
        if ch in CLICK_EVENTS:
            click_rate[ch] = float(raw[f"clicks_{ch}"].to_numpy().sum() / sent.sum())
    return open_rate, click_rate, by_bin


def _channel_table(
    raw: pl.DataFrame, bins: NDArray[np.int64], prior: TimingPrior, strength: float
) -> pl.DataFrame:
    """Per user: sends, shrunk open/click rates, the open rate over similar users' (``open_lift_*``:
    the same activity bin) and the last channel answered on."""
    cols: list[pl.Series] = []
    for ch in OPEN_EVENTS:
        sent, opened = raw[f"sends_{ch}"].to_numpy(), raw[f"opens_{ch}"].to_numpy()
        overall = prior.open_rate.get(ch, 0.0)
        similar = prior.open_rate_by_activity.get(ch, np.full(len(ACTIVITY_BINS), overall))[bins]
        rate = (opened + strength * similar) / (sent + strength)
        cols += [
            pl.Series(f"sends_{ch}", sent),
            pl.Series(f"open_rate_{ch}", rate),
            pl.Series(f"open_lift_{ch}", np.where(similar > 0, rate / np.maximum(similar, 1e-12), 1.0)),
        ]
        if ch in CLICK_EVENTS:
            base = prior.click_rate.get(ch, 0.0)
            cols.append(
                pl.Series(
                    f"click_rate_{ch}", (raw[f"clicks_{ch}"].to_numpy() + strength * base) / (sent + strength)
                )
            )
    return pl.DataFrame([raw[schemas.USER_ID], *cols, raw[LAST_CHANNEL]])
