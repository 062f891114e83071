"""Feature-engine benchmark: events/s and peak memory of polars, a pandas reference and Spark local[2].

Usage: ``python benchmarks/features.py [--events 10000000] [--spark] [--engines polars,bare,pandas]
[--stream-100m]``.
Each engine runs in its own subprocess so peak memory is per engine: ru_maxrss of the process, and for
Spark a sampling thread that adds up the RSS of the driver and its JVM. Events for the side-by-side
run are synthetic (numpy, about n/25 users over 180 days) in the canonical schema, written to Parquet
under a temp dir and read back by each engine. ``--stream-100m`` then writes 100M events built by
repeating the simulator's users (renamed, shifted by minutes) chunk by chunk, never holding them in
memory, and builds the standard features from a lazy Parquet scan with the streaming engine.
The load average is printed with every figure: the machine is shared, compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
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


def _tree_rss_gb() -> float:
    """Resident memory of this process and all its descendants (the Spark JVM), in GB."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 1024**3


def _tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and its live descendants."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def bare_polars(path: Path, as_of: datetime) -> int:
    """A bare polars aggregate for scale: 32 windowed per-user counts and sums, nothing else."""
    import polars as pl

    from engage import schemas as s

    lit = pl.lit(as_of).cast(s.TS_DTYPE)
    ev = pl.scan_parquet(path / "*.parquet").filter(pl.col(s.TS) < lit)
    age = (lit - pl.col(s.TS)).dt.total_microseconds() / 86_400_000_000
    et = pl.col(s.EVENT_TYPE)
    aggs = []
    for w in (7, 28, 90):
        aggs += [((age < w) & (et == t)).sum().alias(f"{t}_{w}") for t in s.KNOWN_EVENT_TYPES]
        aggs.append(pl.col("amount").filter(age < w).sum().alias(f"amount_{w}"))
    aggs += [age.min().alias("recency"), age.max().alias("tenure")]
    return len(ev.group_by(s.USER_ID).agg(aggs).collect(engine="streaming"))


def run_one(engine: str, path: Path, as_of: datetime) -> dict[str, float]:
    """Run one engine in this process and return rows, seconds and peak memory."""
    import threading

    import polars as pl

    from engage.config import FeatureConfig

    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], _tree_rss_gb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cfg = FeatureConfig()
    t0, c0 = time.perf_counter(), _tree_cpu_s()
    if engine == "polars":
        from engage.features import build_features

        rows = len(build_features(pl.scan_parquet(path / "*.parquet"), [as_of], config=cfg))
    elif engine == "bare":
        rows = bare_polars(path, as_of)
    elif engine == "spark":
        from engage.spark import features, local_spark

        # own scratch dir (a shared /tmp may be cleaned under us) and room for the cached events
        os.environ["SPARK_LOCAL_DIRS"] = str(path.parent / "spark-local")
        os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--driver-memory 4g pyspark-shell")
        spark = local_spark()
        t0, c0 = time.perf_counter(), _tree_cpu_s()  # session start-up is not feature work
        # the Spark-native entry, run to the end on the executors (a no-op sink: nothing is collected)
        table = features(spark, spark.read.parquet(str(path)), [as_of], cfg).cache()
        table.write.format("noop").mode("overwrite").save()
        rows = table.count()
    else:
        rows = pandas_reference(path)
    seconds = time.perf_counter() - t0
    cpu_s = _tree_cpu_s() - c0
    load = os.getloadavg()[0]
    stop.set()
    sampler.join()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"rows": rows, "seconds": seconds, "cpu_s": cpu_s, "peak_gb": max(rss, peak[0]), "load": load}


def make_stream_events(path: Path, n: int, seed: int) -> datetime:
    """Write about n events as Parquet chunks: the simulator's users repeated under new ids.

    Copy k renames every user and session (suffix ``-k``) and shifts its times by k minutes; only one
    simulated chunk is in memory at a time. Returns the as_of (the end of the simulated period).
    """
    import polars as pl

    from engage import schemas as s
    from engage.datasets.simulate import simulate

    path.mkdir(parents=True, exist_ok=True)
    days = 180
    base = simulate(25_000, days, seed=seed).events.select(
        s.USER_ID, s.TS, s.EVENT_TYPE, "session_id", "category", "amount"
    )
    as_of = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=days)
    written, k = 0, 0
    while written < n:
        part = base.head(n - written).with_columns(
            (pl.col(s.USER_ID) + f"-{k}").alias(s.USER_ID),
            (pl.col("session_id") + f"-{k}").alias("session_id"),
            (pl.col(s.TS) - pl.duration(minutes=k)).alias(s.TS),
        )
        part.write_parquet(path / f"part-{k:04d}.parquet")
        written += len(part)
        k += 1
    return as_of


def _child(engine: str, path: Path, as_of: datetime) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", engine, "--path", str(path), "--as-of", as_of.isoformat()],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--spark", action="store_true", help="also run Spark local[2] on the same events")
    parser.add_argument("--engines", default="polars,bare,pandas", help="comma-separated engines to run")
    parser.add_argument("--stream-100m", action="store_true", help="then stream 100M events from Parquet")
    parser.add_argument("--stream-events", type=int, default=100_000_000)
    parser.add_argument("--one", default="")
    parser.add_argument("--path", default="")
    parser.add_argument("--as-of", default=AS_OF.isoformat())
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.path), datetime.fromisoformat(args.as_of))))
        return
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()} at start")
    tmp = Path(tempfile.mkdtemp(prefix="engage-bench-"))
    try:
        make_events(tmp / "ev", args.events, seed=1)
        results = {}
        engines = [e for e in args.engines.split(",") if e]
        for engine in [*engines, *(["spark"] if args.spark and "spark" not in engines else [])]:
            r = _child(engine, tmp / "ev", AS_OF)
            results[engine] = r
            print(
                f"{engine:7s} {args.events:,} events -> {r['rows']:,} users in {r['seconds']:.2f} s: "
                f"{args.events / r['seconds'] / 1e6:.2f} M events/s ({r['cpu_s']:.1f} CPU s), "
                f"peak memory {r['peak_gb']:.2f} GB (load {r['load']:.1f})",
                flush=True,
            )
        for engine in results:
            if "polars" not in results:
                break
            if engine == "bare":
                share = results["bare"]["seconds"] / results["polars"]["seconds"]
                print(f"the full feature set runs at {share:.2f}x the speed of the bare 32-column aggregate")
            elif engine != "polars":
                ratio = results[engine]["seconds"] / results["polars"]["seconds"]
                cpu = results[engine]["cpu_s"] / results["polars"]["cpu_s"]
                print(f"polars is {ratio:.2f}x faster than {engine} (wall), uses {cpu:.2f}x less CPU")
        shutil.rmtree(tmp / "ev")
        if args.stream_100m:
            t0 = time.perf_counter()
            as_of = make_stream_events(tmp / "big", args.stream_events, seed=2)
            size = sum(f.stat().st_size for f in (tmp / "big").iterdir()) / 1024**3
            took = time.perf_counter() - t0
            print(f"wrote {args.stream_events:,} events ({size:.2f} GB Parquet) in {took:.0f} s")
            r = _child("polars", tmp / "big", as_of)
            print(
                f"stream  {args.stream_events:,} events from Parquet -> {r['rows']:,} users in "
                f"{r['seconds']:.1f} s ({args.stream_events / r['seconds'] / 1e6:.2f} M events/s, "
                f"{r['cpu_s']:.0f} CPU s), "
                f"peak memory {r['peak_gb']:.2f} GB (load {r['load']:.1f})"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
