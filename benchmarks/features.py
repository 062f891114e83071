"""Feature-engine benchmark: events/s and peak memory of polars, Spark local[2] and a pandas reference.

Usage: ``python benchmarks/features.py --events 10000000 [--spark] [--stream-events 100000000]``.
Each engine runs in its own subprocess so peak RSS (ru_maxrss) is per engine. Events are synthetic
(numpy) in the canonical schema, written to Parquet under a temp dir and read back by each engine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

AS_OF = datetime(2024, 7, 1, tzinfo=UTC)


def make_events(path: Path, n: int, seed: int, chunk: int = 10_000_000) -> None:
    """Write n synthetic events (about n/25 users, 180 days before AS_OF) as Parquet chunk files."""
    import numpy as np
    import polars as pl

    from engage import schemas as s

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    types = np.array(s.KNOWN_EVENT_TYPES)
    weights = np.array([0.15, 0.3, 0.25, 0.08, 0.04, 0.01, 0.1, 0.04, 0.03])
    end_us = int(AS_OF.timestamp() * 1e6)
    for i, lo in enumerate(range(0, n, chunk)):
        m = min(chunk, n - lo)
        users = rng.integers(0, max(n // 25, 1), m)
        et = rng.choice(len(types), m, p=weights / weights.sum())
        frame = pl.DataFrame(
            {
                s.USER_ID: pl.Series(users).cast(pl.String),
                s.TS: pl.Series(end_us - rng.integers(1, 180 * 86_400_000_000, m)).cast(s.TS_DTYPE),
                s.EVENT_TYPE: pl.Series(types[et]),
                "session_id": pl.Series(users * 1000 + rng.integers(0, 40, m)).cast(pl.String),
                "category": pl.Series(
                    np.array(["books", "toys", "garden", "food", "tech"])[rng.integers(0, 5, m)]
                ),
                "amount": pl.Series(np.where(et == 4, rng.gamma(2, 20, m), np.nan)).fill_nan(None),
            }
        )
        frame.write_parquet(path / f"part-{i:04d}.parquet")


def pandas_reference(path: Path) -> int:
    """Straightforward pandas version of the main per-user aggregates (counts, sums, recency, days)."""
    import pandas as pd

    ev = pd.read_parquet(path, columns=["user_id", "ts", "event_type", "session_id", "amount"])
    as_of = pd.Timestamp(AS_OF)
    ev = ev[ev["ts"] < as_of]
    ev["age"] = (as_of - ev["ts"]).dt.total_seconds() / 86_400
    ev["day"] = ev["ts"].dt.floor("D")
    out = []
    for w in (7, 28, 90):
        win = ev[ev["age"] < w]
        g = win.groupby("user_id")
        counts = pd.crosstab(win["user_id"], win["event_type"]).add_suffix(f"_count_{w}d")
        out += [
            counts,
            g["session_id"].nunique().rename(f"session_count_{w}d"),
            g["day"].nunique().rename(f"active_days_{w}d"),
            g["amount"].sum().rename(f"amount_sum_{w}d"),
            g["amount"].mean().rename(f"amount_mean_{w}d"),
        ]
    g = ev.groupby("user_id")
    out.append(g["age"].agg(["min", "max"]).rename(columns={"min": "days_since_last_event", "max": "tenure"}))
    for t in ("purchase", "session_start", "email_open"):
        out.append(ev[ev["event_type"] == t].groupby("user_id")["age"].min().rename(f"days_since_last_{t}"))
    return len(pd.concat(out, axis=1))


def run_one(engine: str, path: Path) -> dict[str, float]:
    """Run one engine in this process and return rows, seconds and peak RSS."""
    import polars as pl

    from engage.config import FeatureConfig

    cfg = FeatureConfig()
    t0 = time.perf_counter()
    if engine == "polars":
        from engage.features import build_features

        rows = len(build_features(pl.scan_parquet(path / "*.parquet"), [AS_OF], config=cfg))
    elif engine == "spark":
        from engage.batch import build_features_spark

        rows = len(build_features_spark(path, [AS_OF], config=cfg))
    else:
        rows = pandas_reference(path)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"rows": rows, "seconds": seconds, "peak_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--spark", action="store_true")
    parser.add_argument("--stream-events", type=int, default=0)
    parser.add_argument("--one", default="")
    parser.add_argument("--path", default="")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.path))))
        return
    tmp = Path(tempfile.mkdtemp(prefix="engage-bench-"))
    try:
        make_events(tmp / "ev", args.events, seed=1)
        results = {}
        for engine in ["polars", "pandas", *(["spark"] if args.spark else [])]:
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--one", engine, "--path", str(tmp / "ev")],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            results[engine] = r
            print(
                f"{engine:7s} {args.events:,} events -> {r['rows']:,} users in {r['seconds']:.2f} s: "
                f"{args.events / r['seconds'] / 1e6:.2f} M events/s, peak RSS {r['peak_gb']:.2f} GB"
            )
        for engine in results:
            if engine != "polars":
                ratio = results[engine]["seconds"] / results["polars"]["seconds"]
                print(f"polars is {ratio:.2f}x faster than {engine}")
        if args.stream_events:
            shutil.rmtree(tmp / "ev")
            make_events(tmp / "big", args.stream_events, seed=2)
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--one", "polars", "--path", str(tmp / "big")],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            print(
                f"stream  {args.stream_events:,} events from Parquet -> {r['rows']:,} users in "
                f"{r['seconds']:.1f} s ({args.stream_events / r['seconds'] / 1e6:.2f} M events/s), "
                f"peak RSS {r['peak_gb']:.2f} GB"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
