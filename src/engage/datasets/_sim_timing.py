"""The simulator's weekly rhythm and channel responsiveness (``simulate(..., timing=True)``).

Each user lives in an IANA time zone, is active around a local peak hour that differs between
weekdays and weekends, more or less sharply (von Mises concentration ``kappa``: the peakedness),
and answers each channel with a responsiveness of their own. Organic sessions start at local times
drawn from that rhythm; a message's true effect is multiplied by the channel's responsiveness and
by the *timing gain* of its send hour: how active the user is in the hour after the send, relative
to their average hour (mean 1 over a day). Drawn from a stream of its own (``TIMING_STREAM``), so
the main stream of a seed, and with it every user's state, is the same with and without timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from engage import schemas

TIMING_STREAM = 17
"""Second key of the timing generator's seed, ``np.random.default_rng([seed, TIMING_STREAM])``."""
ZONES: tuple[str, ...] = (
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
)
ZONE_P = np.array([0.04, 0.2, 0.15, 0.2, 0.1, 0.11, 0.05, 0.1, 0.05])
UNKNOWN_ZONE_SHARE = 0.1
"""Share of users whose ``timezone`` the users table leaves empty (their rhythm still has one)."""
PEAK_MODES = np.array([8.0, 12.5, 19.5, 22.0])
PEAK_P = np.array([0.2, 0.2, 0.45, 0.15])
"""Typical local peak hours (commute, lunch, evening, late) and their shares."""
KAPPA_RANGE = (0.3, 3.0)
CHANNEL_MEAN = {"email": 1.0, "push": 0.85, "in_app": 1.1, "web_popup": 0.7}
"""Population mean responsiveness per channel (the best single channel is in-app where allowed)."""
CHANNEL_SIGMA = 0.6
GAIN_FLOOR = 0.4
"""Timing gain = GAIN_FLOOR + (1 - GAIN_FLOOR) x relative activity in the hour after the send."""
HOURS = 24


@dataclass(frozen=True)
class Rhythm:
    """Every user's time zone, weekly activity rhythm and channel responsiveness (aligned by user)."""

    zone: NDArray[np.int64]
    """Index into ``ZONES``."""
    known_zone: NDArray[np.bool_]
    """Whether the users table states the zone (else ``timezone`` is null)."""
    peak_weekday: NDArray[np.float64]
    peak_weekend: NDArray[np.float64]
    """Local peak hour of activity on weekdays and on Saturdays and Sundays."""
    kappa: NDArray[np.float64]
    channel_gain: NDArray[np.float64]
    """(n, len(schemas.CHANNELS)): multiplier of a message's effect on each channel."""
    offsets: NDArray[np.float64]
    """(days, len(ZONES)): each zone's UTC offset in hours at noon UTC of each simulated day."""
    start_dow: int

    @property
    def n(self) -> int:
        return int(self.zone.size)


def draw_rhythm(seed: int, n: int, *, start: str, days: int, start_dow: int) -> Rhythm:
    """Draw `n` users' rhythms from the timing stream of `seed` (same seed, same rhythms)."""
    rng = np.random.default_rng([seed, TIMING_STREAM])
    zone = rng.choice(len(ZONES), n, p=ZONE_P / ZONE_P.sum()).astype(np.int64)
    known = rng.random(n) >= UNKNOWN_ZONE_SHARE
    mode = rng.choice(len(PEAK_MODES), n, p=PEAK_P)
    peak_wd = (PEAK_MODES[mode] + rng.normal(0.0, 1.0, n)) % HOURS
    peak_we = (peak_wd + rng.uniform(-1.0, 3.0, n)) % HOURS
    kappa = rng.uniform(*KAPPA_RANGE, n)
    means = np.array([CHANNEL_MEAN[ch] for ch in schemas.CHANNELS])
    noise = rng.lognormal(-(CHANNEL_SIGMA**2) / 2.0, CHANNEL_SIGMA, (n, len(schemas.CHANNELS)))
    return Rhythm(
        zone=zone,
        known_zone=known,
        peak_weekday=peak_wd,
        peak_weekend=peak_we,
        kappa=kappa,
        channel_gain=means[None, :] * noise,
        offsets=zone_offsets(start, days),
        start_dow=start_dow,
    )


def zone_offsets(start: str, days: int) -> NDArray[np.float64]:
    """UTC offset (hours) of every zone at noon UTC of each day from `start` (daylight saving included)."""
    day0 = datetime.fromisoformat(start).replace(tzinfo=UTC) + timedelta(hours=12)
    out = np.zeros((days, len(ZONES)))
    for z, name in enumerate(ZONES):
        zone = ZoneInfo(name)
        for t in range(days):
            offset = (day0 + timedelta(days=t)).astimezone(zone).utcoffset()
            out[t, z] = offset.total_seconds() / 3600.0 if offset is not None else 0.0
    return out


def _relative_activity(
    r: Rhythm, users: NDArray[np.int64], local_hour: NDArray[np.float64], weekend: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """Activity density at `local_hour` over the user's mean density (von Mises; mean 1 over a day)."""
    peak = np.where(weekend, r.peak_weekend[users, None], r.peak_weekday[users, None])
    kappa = r.kappa[users, None]
    return np.asarray(np.exp(kappa * np.cos(2.0 * np.pi * (local_hour - peak) / HOURS)) / np.i0(kappa))


def _local(
    r: Rhythm, users: NDArray[np.int64], t: int, utc_hour: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Local hour of day and whether it falls on a local weekend, for UTC hours of day `t`."""
    local = utc_hour + r.offsets[min(t, r.offsets.shape[0] - 1), r.zone[users]][:, None]
    dow = (r.start_dow + t + np.floor(local / HOURS).astype(np.int64)) % 7
    return local % HOURS, dow >= 5


def timing_gain(
    r: Rhythm, users: NDArray[np.int64], t: int, utc_hours: NDArray[np.float64]
) -> NDArray[np.float64]:
    """True multiplier of a message's effect sent on day `t` at `utc_hours` (n, h) to `users` (n,).

    The message is seen in the hour after the send: the gain reads the activity half an hour later.
    """
    hours = np.asarray(utc_hours, dtype=np.float64).reshape(users.size, -1)
    local, weekend = _local(r, users, t, hours + 0.5)
    return GAIN_FLOOR + (1.0 - GAIN_FLOOR) * _relative_activity(r, users, local, weekend)


def gain_by_hour(r: Rhythm, users: NDArray[np.int64], t: int) -> NDArray[np.float64]:
    """(n, 24): the timing gain of a send at each whole UTC hour of day `t`."""
    hours = np.broadcast_to(np.arange(HOURS, dtype=np.float64), (users.size, HOURS))
    return timing_gain(r, users, t, hours)


def session_seconds(
    rng: np.random.Generator, r: Rhythm, users: NDArray[np.int64], t: int
) -> NDArray[np.int64]:
    """UTC second of day `t` at which sessions of `users` start: local times drawn from the rhythm.

    The local day is taken as day `t` (weekday or weekend peak); the time wraps inside the UTC day,
    so every session stays on its simulated day (and the oracle's day accounting stays exact).
    """
    weekend = (r.start_dow + t) % 7 >= 5
    peak = r.peak_weekend[users] if weekend else r.peak_weekday[users]
    local = peak + rng.vonmises(0.0, r.kappa[users]) * HOURS / (2.0 * np.pi)
    utc = (local - r.offsets[min(t, r.offsets.shape[0] - 1), r.zone[users]]) % HOURS
    return np.minimum((utc * 3600.0).astype(np.int64), 86_399)


def zone_names(r: Rhythm) -> list[str | None]:
    """The users table's ``timezone`` column: the IANA name, or None where it is not stated."""
    return [ZONES[z] if k else None for z, k in zip(r.zone.tolist(), r.known_zone.tolist(), strict=True)]


def variants(arms: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every (message, channel) a timed campaign can send: the control, then each message on each channel.

    Variant code ``1 + (arm - 1) * len(CHANNELS) + channel`` (0 = control) is what exposures and
    events record, so their ``channel`` column is the channel the message went on.
    """
    return [arms[0], *((mid, ch) for mid, _ in arms[1:] for ch in schemas.CHANNELS)]


@dataclass
class TimedCampaign:
    """What a timed campaign day drew: arm, channel (-1 none), UTC send hour, and their propensity."""

    choice: NDArray[np.int64]
    channel: NDArray[np.int64]
    hour: NDArray[np.int64]
    propensity: NDArray[np.float64]
    code: NDArray[np.int64]
    effect_scale: NDArray[np.float64]
    open_scale: NDArray[np.float64]
    gains: NDArray[np.float64]
    """(n, 24) timing gain of each UTC hour of the day."""


def draw_campaign(
    rng: np.random.Generator,
    trng: np.random.Generator,
    r: Rhythm,
    t: int,
    ex: NDArray[np.int64],
    n_arms: int,
    consent: NDArray[np.bool_],
) -> TimedCampaign:
    """Randomize message (main stream, uniform), channel and send hour (timing stream, uniform).

    `consent` is (n_users, len(CHANNELS)). A user reachable on no channel gets the control arm.
    The control arm also draws a channel: the truth of a control row reads every message as if sent
    on it. Propensity = P(arm) x P(channel | message) x P(hour).
    """
    reach = consent[ex]
    k = reach.sum(axis=1)
    n_allowed = np.where(k > 0, n_arms, 1)
    choice = np.floor(rng.random(ex.size) * n_allowed).astype(np.int64)
    pick = np.floor(trng.random(ex.size) * np.maximum(k, 1)).astype(np.int64)
    channel = np.where(k > 0, np.argmax(np.cumsum(reach, axis=1) > pick[:, None], axis=1), -1)
    hour = trng.integers(0, HOURS, ex.size)
    gains = gain_by_hour(r, ex, t)
    g = gains[np.arange(ex.size), hour]
    resp = np.where(channel >= 0, r.channel_gain[ex, np.maximum(channel, 0)], 1.0)
    means = np.array([CHANNEL_MEAN[ch] for ch in schemas.CHANNELS])
    sent = choice > 0
    propensity = (1.0 / n_allowed) * np.where(sent, 1.0 / np.maximum(k, 1), 1.0) / HOURS
    code = np.where(sent, 1 + (choice - 1) * len(schemas.CHANNELS) + np.maximum(channel, 0), 0)
    return TimedCampaign(
        choice=choice,
        channel=channel,
        hour=hour.astype(np.int64),
        propensity=propensity,
        code=code.astype(np.int64),
        effect_scale=resp * g,
        open_scale=np.where(channel >= 0, resp / means[np.maximum(channel, 0)], 1.0) * g,
        gains=gains,
    )


def truth_columns(
    r: Rhythm, ex: NDArray[np.int64], c: TimedCampaign, consent: NDArray[np.bool_]
) -> dict[str, NDArray[np.generic]]:
    """Per exposure: the true timing and channel gains of every choice, and the best of each.

    ``best_send_hour`` is the UTC hour of the campaign day with the highest gain; ``best_channel``
    the consented channel with the highest responsiveness (index, -1: none consented).
    """
    resp = np.where(consent[ex], r.channel_gain[ex], -np.inf)
    best_channel = np.where(consent[ex].any(axis=1), resp.argmax(axis=1), -1)
    cols: dict[str, NDArray[np.generic]] = {
        "zone": r.zone[ex],
        "best_send_hour": c.gains.argmax(axis=1).astype(np.int64),
        "best_channel": best_channel.astype(np.int64),
        "send_gain": c.gains[np.arange(ex.size), c.hour],
        "channel_gain": np.where(c.channel >= 0, r.channel_gain[ex, np.maximum(c.channel, 0)], np.nan),
    }
    cols |= {f"gain_h{h:02d}": c.gains[:, h] for h in range(HOURS)}
    cols |= {f"gain_{ch}": r.channel_gain[ex, j] for j, ch in enumerate(schemas.CHANNELS)}
    return cols
