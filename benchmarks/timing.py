"""Send times for many users: the shrunk profiles and the send-time choice, in user chunks.

    .venv/bin/python benchmarks/timing.py [--users 1000000] [--chunk 50000]

Fits the timing model on a small simulated world (``simulate.timing``), then for ``--users``
synthetic users (activity counts drawn from the fitted rhythm profiles, 8 time zones, a random
consented channel) computes each chunk's profile (``TimingModel.profile``) and send time
(``send_times``: 24 h window, push quiet hours, exploration). The synthetic draws are not timed.
Prints wall and CPU seconds per stage, users/s and peak RSS next to ``os.getloadavg()``
(the cores are shared).
Target (issue 17): send times for 1M users add <= 30 s to the embedded scoring run.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from datetime import UTC, datetime

import numpy as np
import polars as pl

from engage import schemas
from engage.config import load_config
from engage.datasets.simulate import simulate
from engage.timing.features import TimingFeatures
from engage.timing.sendtime import send_times
from engage.training.timing import fit_timing

ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50_000)
    args = parser.parse_args()
    cfg = load_config()
    world = simulate(5_000, 120, seed=1, timing=True)
    fit = fit_timing(world.events, cfg, users=world.users, exposures=world.exposures, truth=world.truth)
    model = fit.model
    rng = np.random.default_rng(7)
    as_of = datetime(2024, 6, 3, 9, 30, tzinfo=UTC)
    timed = {"profile": 0.0, "send_times": 0.0}
    cpu = {"profile": 0.0, "send_times": 0.0}
    done = 0
    while done < args.users:
        n = min(args.chunk, args.users - done)
        cluster = rng.choice(model.prior.weights.size, n, p=model.prior.weights)
        visits = rng.poisson(12.0, n)
        counts = np.zeros((n, 168))
        for k in range(model.prior.weights.size):  # multinomial draws per cluster
            rows = np.flatnonzero(cluster == k)
            counts[rows] = rng.multinomial(visits[rows], model.prior.profiles[k])
        zone = np.asarray(ZONES, dtype=object)[rng.integers(0, len(ZONES), n)]
        table = pl.DataFrame(
            {
                schemas.USER_ID: [f"b{done + i:08d}" for i in range(n)],
                "zone": zone.tolist(),
                "zone_source": ["stated"] * n,
                "zone_note": pl.Series([None] * n, dtype=pl.String),
                "activity_hours": counts.sum(axis=1),
            }
        )
        channels = rng.integers(0, len(schemas.CHANNELS), n)
        start, start_cpu = time.perf_counter(), time.process_time()
        profile = model.profile(counts)
        timed["profile"] += time.perf_counter() - start
        cpu["profile"] += time.process_time() - start_cpu
        features = TimingFeatures(table=table, counts=counts, profile=profile, prior=model.prior)
        start, start_cpu = time.perf_counter(), time.process_time()
        out = send_times(features, as_of, cfg.timing, channels=channels)
        timed["send_times"] += time.perf_counter() - start
        cpu["send_times"] += time.process_time() - start_cpu
        assert out.height == n
        done += n
    total = sum(timed.values())
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    load = np.round(os.getloadavg(), 2).tolist()
    print(f"users {args.users:,} in chunks of {args.chunk:,}; loadavg {load}")
    for stage, seconds in timed.items():
        print(f"  {stage:<11} {seconds:7.2f} s wall, {cpu[stage]:7.2f} s CPU")
    print(f"  total       {total:7.2f} s  ({args.users / total:,.0f} users/s), peak RSS {rss_gb:.2f} GB")


if __name__ == "__main__":
    main()
