"""The loop's outcomes join and judgement over a large decision log, next to a bare polars join.

    .venv/bin/python benchmarks/loop.py [--decisions 10000000] [--users 2000000] [--events-per-user 10]
        [--window 7] [--n-boot 200] [--seed 0]

Builds a synthetic, seeded decision log (30 daily batch runs over ``--users``; 5% holdout; five arms
with logged propensities; ``intended_message_id`` on every row; ``decided_at`` as ISO text, as
``read_decisions`` returns it) and an event log (``--events-per-user`` events per user, 10%
purchases) spanning the decisions, writes both as Parquet, then times each phase in its own process
(so each peak memory is its own): ``bare`` (a hand-written polars join: parse ``decided_at``, join
purchases on user_id, keep (decided_at, decided_at + window), sum per decision), ``outcomes``
(``offers.outcomes.decision_outcomes`` from the pandas log: converted, revenue, still_active and
unsubscribed) and ``evaluate`` (``evaluation.judge.judge_decisions``: lift overall, per intended
message and per risk band, IPS/SNIPS/DR of `none`, each with ``--n-boot`` bootstrap replicates).

Prints per phase: seconds, decisions per second, peak RSS (``resource.getrusage``) and its rise over
the process after loading its inputs; then outcomes / bare ratios of time and memory rise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np
import polars as pl

ARMS = ["none", "cart_coupon", "category_news", "winback_offer", "retained_content"]
ARM_P = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
T0 = datetime(2024, 3, 1, tzinfo=UTC)
BATCH_DAYS = 30


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def generate(folder: Path, n: int, users: int, events_per_user: int, seed: int) -> None:
    """The decision log and the event log as Parquet (seeded)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    day = rng.integers(0, BATCH_DAYS, n)
    stamps = np.array([(T0 + timedelta(days=int(d))).isoformat() for d in range(BATCH_DAYS)], dtype=object)
    intended = rng.choice(len(ARMS), size=n, p=ARM_P)
    held = rng.random(n) < 0.05
    sent = np.where(held, 0, intended)
    propensity = np.where(held, 1.0, ARM_P[intended])
    decisions = pl.DataFrame(
        {
            "decision_id": pl.int_range(0, n, eager=True).cast(pl.String),
            "decided_at": stamps[day].tolist(),
            "user_id": pl.Series(user).cast(pl.String),
            "as_of": stamps[day].tolist(),
            "message_id": np.asarray(ARMS, dtype=object)[sent].tolist(),
            "channel": "email",
            "propensity": propensity,
            "expected_gain": rng.normal(0.1, 0.05, n),
            "holdout": held,
            "churn_probability": rng.random(n),
            "intended_message_id": np.asarray(ARMS, dtype=object)[intended].tolist(),
        }
    )
    decisions.write_parquet(folder / "decisions.parquet")
    del decisions
    m = users * events_per_user
    start = T0 - timedelta(days=30)
    offsets = rng.integers(0, (BATCH_DAYS + 44) * 86_400_000_000, m)
    events = pl.DataFrame(
        {
            "user_id": pl.Series(rng.integers(0, users, m)).cast(pl.String),
            "ts": pl.Series(offsets).cast(pl.Duration("us")) + start,
            "event_type": np.where(rng.random(m) < 0.1, "purchase", "page_view").tolist(),
            "amount": rng.uniform(5, 80, m),
        }
    )
    events.write_parquet(folder / "events.parquet")


def _phase(name: str, folder: Path, window: int, n_boot: int) -> dict[str, float]:
    """Run one phase in this process; the figures as a dict (imports and inputs before the clock)."""
    from engage.config import load_config
    from engage.evaluation.judge import judge_decisions
    from engage.offers.catalog import load_catalog
    from engage.offers.outcomes import decision_outcomes

    catalog = load_catalog(load_config().offers.catalog_path)
    events = pl.read_parquet(folder / "events.parquet")
    if name == "bare":
        decisions = pl.read_parquet(folder / "decisions.parquet", columns=["user_id", "decided_at"])
    elif name == "outcomes":
        decisions = pl.read_parquet(folder / "decisions.parquet").to_pandas()  # as read_decisions gives it
    else:
        decisions = pl.read_parquet(folder / "outcomes.parquet").to_pandas()
    base = _rss_mb()
    t0 = time.perf_counter()
    if name == "bare":
        keyed = decisions.with_row_index("__row").with_columns(
            pl.col("decided_at").str.to_datetime(time_zone="UTC", time_unit="us")
        )
        purchases = events.filter(pl.col("event_type") == "purchase").select("user_id", "ts", "amount")
        hits = (
            keyed.join(purchases, on="user_id")
            .filter(
                (pl.col("ts") > pl.col("decided_at"))
                & (pl.col("ts") < pl.col("decided_at") + pl.duration(days=window))
            )
            .group_by("__row")
            .agg(pl.len().alias("n"), pl.col("amount").sum().alias("revenue"))
        )
        result = keyed.join(hits, on="__row", how="left", maintain_order="left")
        rows = result.height
    elif name == "outcomes":
        result = decision_outcomes(decisions, events, window_days=window)
        rows = result.height
        seconds = time.perf_counter() - t0
        result.drop("still_active", "unsubscribed").write_parquet(folder / "outcomes.parquet")
        return {"seconds": seconds, "rows": rows, "peak_mb": _peak_mb(), "rise_mb": _peak_mb() - base}
    else:
        judged = judge_decisions(decisions, catalog, n_boot=n_boot)
        rows = judged.rows
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": rows, "peak_mb": _peak_mb(), "rise_mb": _peak_mb() - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=2_000_000)
    parser.add_argument("--events-per-user", type=int, default=10)
    parser.add_argument("--window", type=int, default=7)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase", choices=["bare", "outcomes", "evaluate"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(_phase(args.phase, args.data, args.window, args.n_boot)))
        return
    with tempfile.TemporaryDirectory(prefix="engage-loop-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        generate(folder, args.decisions, args.users, args.events_per_user, args.seed)
        n_events = args.users * args.events_per_user
        print(
            f"data: {args.decisions:,} decisions over {args.users:,} users, {n_events:,} events "
            f"(generated in {time.perf_counter() - t0:.1f} s); window {args.window} d; "
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
        )
        figures = {}
        for phase in ("bare", "outcomes", "evaluate"):
            cmd = [sys.executable, __file__, "--phase", phase, "--data", str(folder)]
            cmd += ["--window", str(args.window), "--n-boot", str(args.n_boot)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{phase} failed:\n{done.stderr}")
            figures[phase] = json.loads(done.stdout.strip().splitlines()[-1])
            f = figures[phase]
            print(
                f"{phase:>9}: {f['seconds']:7.2f} s  {f['rows'] / f['seconds']:>12,.0f} decisions/s  "
                f"peak RSS {f['peak_mb']:8,.0f} MB  (+{f['rise_mb']:,.0f} MB over its inputs)"
            )
        bare, mine = figures["bare"], figures["outcomes"]
        print(
            f"outcomes / bare polars join: time x{mine['seconds'] / bare['seconds']:.2f}, "
            f"memory rise x{mine['rise_mb'] / max(bare['rise_mb'], 1.0):.2f} "
            "(outcomes also computes still_active and unsubscribed and converts the pandas log)"
        )
        print(f"evaluate (n_boot={args.n_boot}): {figures['evaluate']['seconds']:.2f} s")


if __name__ == "__main__":
    main()
