"""Spark local[2] next to the embedded engine on the same data, in one run.

    .venv/bin/python benchmarks/spark.py [--users 20000,50000] [--days 60] [--cluster]
    .venv/bin/python benchmarks/spark.py --users 100000 --days 120   # 5.24M events (52 a user)

(``--days`` sets events per user: 120 days gave 52, so 10M events at 1M users is about 23 days.)

Trains small models into a temporary MLflow store, simulates each population (benchmarks/score.py's
``simulate_chunks``: a folder of Parquet files), then runs each measurement in its own process so
that peak memory is per measurement:

- features events/s: embedded ``build_features`` on a lazy scan; Spark ``write_features`` (read,
  validate, features, write the data set);
- scoring users/s, no reasons and reasons for the riskiest 10%: embedded ``score_events``; Spark
  ``run_scoring`` (read, validate, features, score, write scores and the decision log);
- seconds are the job's own (``score_events``' / ``run_scoring``'s); loading the models and starting
  the session are printed apart ("start");
- driver peak RSS: the Python driver process (``ru_maxrss``) and, sampled with psutil, its JVM. In
  local mode that JVM also runs the executors' work (its heap is capped by spark.driver.memory); on
  the standalone cluster (``--cluster``: master and two workers, 1 core and 1 GB each, on
  loopback) the executors run elsewhere and the JVM is the driver alone.

The machine is shared: every line carries the load average; compare ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from machine import load  # a sibling script (benchmarks/ is the script's path[0])

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
sys.path.insert(0, str(Path(__file__).parent))

TASKS = (
    "embedded-features",
    "spark-features",
    "embedded-score",
    "embedded-score-top10",
    "spark-score",
    "spark-score-top10",
)


class JvmPeak:
    """Peak RSS of this process and of its child processes (the driver JVM), sampled every 0.2 s.

    (``ru_maxrss`` of a process started by fork and exec can report its parent's peak.)"""

    def __init__(self) -> None:
        self.peak = 0
        self.python = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.2):
            with contextlib.suppress(psutil.Error):
                self.python = max(self.python, me.memory_info().rss)
            total = 0
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1e9


def run_task(task: str, data: Path, tracking: str, as_of: datetime, master: str | None) -> dict[str, Any]:
    """One measurement in this process: seconds, the count it is per, and peak memory."""
    import polars as pl

    from engage.config import load_config

    cfg = load_config(overrides={"tracking.uri": tracking})
    jvm = JvmPeak()
    out = data.parent / f"out-{task}"
    share = 0.1 if task.endswith("top10") else None
    started = time.perf_counter()
    stages: dict[str, float] = {}
    if task == "embedded-features":
        from engage.features import build_features

        events = pl.scan_parquet(data / "events" / "*.parquet")
        frame = build_features(
            events.filter(pl.col("ts") < as_of).collect(),
            [as_of],
            config=cfg.features,
            users=pl.read_parquet(data / "users" / "*.parquet"),
            exposures=pl.read_parquet(data / "exposures" / "*.parquet"),
        )
        count, job = len(frame), time.perf_counter() - started
    elif task.startswith("embedded-score"):
        from engage.scoring.champions import load_champions
        from engage.scoring.job import score_events

        summary = score_events(
            pl.scan_parquet(data / "events" / "*.parquet"),
            as_of,
            load_champions(cfg),
            cfg,
            out / "scores.parquet",
            users=pl.read_parquet(data / "users" / "*.parquet"),
            exposures=pl.read_parquet(data / "exposures" / "*.parquet"),
            explain_share=share,
            decision_log=out / "log",
        )
        count, job = summary.users, summary.seconds
        stages = summary.stages
    else:
        from engage.scoring.champions import load_champions
        from engage.spark.scoring import run_scoring, write_features
        from engage.spark.session import spark_session

        spark = spark_session(cfg.spark, master=master)
        if task == "spark-features":
            run = write_features(
                spark,
                data / "events",
                [as_of],
                cfg,
                out / "features",
                users=data / "users",
                exposures=data / "exposures",
            )
        else:
            _, run = run_scoring(
                spark,
                data / "events",
                as_of,
                load_champions(cfg),
                cfg,
                users=data / "users",
                exposures=data / "exposures",
                explain_share=share,
                out=out / "scores",
                decision_log=out / "log",
            )
        count, job = run.users, run.seconds
        stages = run.stages
        spark.stop()
    return {
        "task": task,
        "seconds": job,
        "startup": time.perf_counter() - started - job,
        "users": count,
        "jvm_rss_gb": jvm.stop(),
        "python_rss_gb": jvm.python / 1e9,
        "stages": stages,
        "load": load(),
    }


def _measure(task: str, data: Path, tracking: str, as_of: datetime, master: str | None) -> dict[str, Any]:
    args = [sys.executable, __file__, "--task", task, "--data", str(data), "--tracking", tracking]
    args += ["--as-of", as_of.isoformat()] + (["--master", master] if master else [])
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{task} failed ({done.returncode}): {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", default="20000,50000", help="population sizes, comma-separated")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--train-users", type=int, default=5_000)
    parser.add_argument("--cluster", action="store_true", help="also score on a loopback standalone cluster")
    parser.add_argument("--task", choices=[*TASKS, "cluster-score-top10"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tracking", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", help=argparse.SUPPRESS)
    parser.add_argument("--master", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        task = "spark-score-top10" if args.task == "cluster-score-top10" else args.task
        print(
            json.dumps(
                run_task(task, args.data, args.tracking, datetime.fromisoformat(args.as_of), args.master)
            )
        )
        return

    import polars as pl
    from score import simulate_chunks

    from engage.config import load_config
    from engage.datasets.simulate import simulate
    from engage.offers.catalog import load_catalog
    from engage.offers.training import fit_offers, offer_table
    from engage.training.churn import train_churn
    from engage.training.offers import train_offers

    root = Path(tempfile.mkdtemp(prefix="engage-spark-bench-"))
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_config(
        overrides={
            "tracking.uri": tracking,
            "labels.every_days": 14,
            "labels.min_churned": 200,
            "labels.min_retained": 200,
        }
    )
    small = simulate(args.train_users, 150, seed=1)
    train_churn(small.events, cfg, users=small.users, exposures=small.exposures)
    table = offer_table(small.events, small.exposures, cfg, users=small.users)
    train_offers(fit_offers(table, cfg, load_catalog(cfg.offers.catalog_path), n_boot=10), cfg)
    del small, table
    cluster, master = None, None
    if args.cluster:
        from engage.spark.cluster import local_cluster

        cluster = local_cluster(root / "cluster", connect=False)
        master = cluster.__enter__().master
    try:
        for users in [int(u) for u in args.users.split(",")]:
            data = root / f"u{users}"
            tick = time.perf_counter()
            simulate_chunks(users, 100_000, args.days, data)
            events = pl.scan_parquet(data / "events" / "*.parquet")
            n_events = events.select(pl.len()).collect().item()
            ts_max = events.select(pl.col("ts").max()).collect().item()
            as_of = (ts_max - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            print(
                f"\n{users:,} users, {n_events:,} events (simulated in {time.perf_counter() - tick:.0f} s)",
                flush=True,
            )
            results: dict[str, dict[str, Any]] = {}
            runs = [(task, None) for task in TASKS]
            runs += [("cluster-score-top10", master)] if cluster is not None else []
            for task, where in runs:  # each line as soon as it is measured (long runs)
                r = results[task] = _measure(task, data, tracking, as_of, where)
                per = n_events / r["seconds"] if task.endswith("features") else r["users"] / r["seconds"]
                unit = "events/s" if task.endswith("features") else "users/s"
                print(
                    f"  {task:<22} {r['seconds']:7.1f} s {per:>12,.0f} {unit:<9} "
                    f"(+{r['startup']:.0f} s start) "
                    f"driver RSS python {r['python_rss_gb']:.2f} GB, jvm {r['jvm_rss_gb']:.2f} GB; "
                    f"{r['load']}",
                    flush=True,
                )
                if r["stages"]:
                    print("    " + ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items()), flush=True)
            for what in ("features", "score", "score-top10"):
                ratio = results[f"embedded-{what}"]["seconds"] / results[f"spark-{what}"]["seconds"]
                print(f"  spark local[2] / embedded throughput, {what}: {ratio:.0%}")
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)


if __name__ == "__main__":
    main()
