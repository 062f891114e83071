"""Time the simulator at full size: ``simulate(100_000, 180)`` plus writing the parquet files.

Run once: ``.venv/bin/python benchmarks/simulate.py [--users N] [--days D] [--seed S]``.
Prints seconds (simulate, write, total), rows per table, events/s and peak RSS.
Target: 100k users x 180 days under 120 s on the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from engage.datasets.simulate import simulate, write_simulation


def main() -> None:
    """Run one timed simulation and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = simulate(args.users, args.days, seed=args.seed)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_simulation(data, Path(tmp))
        sizes = {name: path.stat().st_size for name, path in paths.items()}
    t2 = time.perf_counter()

    n_events = data.events.height
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"users={args.users} days={args.days} seed={args.seed}")
    print(f"simulate_s={t1 - t0:.1f} write_s={t2 - t1:.1f} total_s={t2 - t0:.1f}")
    print(f"events={n_events} events_per_user={n_events / args.users:.1f}")
    print(f"events_per_s={n_events / (t2 - t0):,.0f}")
    for name in ("users", "exposures", "truth", "states"):
        print(f"{name}_rows={getattr(data, name).height}")
    print("parquet_mb=" + ", ".join(f"{k}:{v / 1e6:.1f}" for k, v in sizes.items()))
    print(f"peak_rss_mb={peak_mb:.0f}")
    print(f"target_120s_ratio={(t2 - t0) / 120:.2f}")


if __name__ == "__main__":
    main()
