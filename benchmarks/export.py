"""Audiences out: `engage export` of a large scores file, and webhook delivery to a loopback receiver.

    .venv/bin/python benchmarks/export.py [--users 1000000] [--webhook-decisions 200000]
        [--batch-sizes 100,500,2000] [--seed 0]

Builds a seeded scores file with every column of ``engage.schemas.SCORE_TYPES`` (reasons and
model versions as JSON text, 5% holdout, a quarter ``none``, four messages on three channels), then:

- ``export``: ``engage export --scores S --by message --out DIR`` in its own process (seconds,
  rows/s, peak RSS from ``getrusage`` of the child), next to ``bare``: a process that reads the same
  file and writes the same filtered rows as one CSV and one Parquet per message with polars alone.
- ``webhook``: ``engage.audiences.webhook.deliver`` of ``--webhook-decisions`` exported decisions to
  a receiver in another process (``http.server``, HTTP/1.1 keep-alive, checking every HMAC), per
  batch size; next to ``bare``: the same bodies built and posted over one keep-alive connection
  without signing, retries, ledger or fsync. Prints decisions/s and the ratio.

Export times count the command's work, not the interpreter's start and imports (about 1 s idle).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np
import polars as pl

MESSAGES = {"none": "none", "cart_coupon": "email", "category_news": "push", "winback_offer": "email"}
SECRET = b"benchmark-secret"

BARE = """
import polars as pl
scores, out = sys.argv[1], sys.argv[2]
frame = pl.read_parquet(scores)
kept = frame.filter(~pl.col("holdout") & (pl.col("message_id") != "none"))
cols = ["user_id", "message_id", "channel", "message_text", "decision_id"]
for (name,), part in kept.select(cols).sort("user_id").partition_by("message_id", as_dict=True).items():
    part.write_csv(f"{out}/{name}.csv")
    part.write_parquet(f"{out}/{name}.parquet")
"""
EXPORT_SETUP = "from engage.cli import app"
EXPORT = """
app(["export", "--scores", sys.argv[1], "--out", sys.argv[2]], standalone_mode=False)
"""
_MEASURE = """
import json, resource, sys, time
start = time.perf_counter()
import polars as pl
exec(sys.argv.pop(1))
imported = time.perf_counter()
exec(sys.argv.pop(1))
print(json.dumps({"import_s": imported - start, "run_s": time.perf_counter() - imported,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = np.array(list(MESSAGES))
    message = names[rng.choice(len(names), n, p=[0.25, 0.3, 0.25, 0.2])]
    holdout = rng.random(n) < 0.05
    message = np.where(holdout, "none", message)
    reasons = json.dumps(
        [{"feature": "days_since_last_purchase", "value": 41.0, "text": "no purchase in 41 days"}]
    )
    pl.DataFrame(
        {
            "user_id": [f"user-{i:08d}" for i in rng.permutation(n)],
            "as_of": [datetime(2024, 6, 1, tzinfo=UTC)] * n,
            "churn_probability": rng.random(n),
            "risk_band": rng.choice(["low", "medium", "high"], n),
            "reasons": [reasons] * n,
            "message_id": message,
            "channel": [MESSAGES[m] for m in message],
            "message_text": [f"Hi, take 15% off your next order, code SAVE{i % 997}" for i in range(n)],
            "expected_gain": rng.random(n) / 10,
            "propensity": rng.uniform(0.05, 1, n),
            "holdout": holdout,
            "intended_message_id": message,
            "cold_start": np.zeros(n, dtype=bool),
            "model_versions": ['{"churn": "3", "offers": "2"}'] * n,
            "decision_id": [f"{i:024x}" for i in rng.permutation(n)],
        }
    ).write_parquet(path)


def _child(setup: str, code: str, *args: str) -> dict[str, float]:
    """Seconds of ``code`` (after ``setup``: the imports) and peak RSS, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, setup, code, *args], check=True, capture_output=True, text=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_export(scores: Path, work: Path, n: int) -> None:
    (work / "bare").mkdir()
    bare = _child("import polars as pl", BARE, str(scores), str(work / "bare"))
    export = _child(EXPORT_SETUP, EXPORT, str(scores), str(work / "aud"))
    manifest = json.loads((work / "aud" / "manifest.json").read_text())
    print(f"export of {n:,} scored users ({manifest['exported']:,} exported, {manifest['not_exported']})")
    for name, got in (("bare polars", bare), ("engage export", export)):
        print(
            f"  {name:13s} {got['run_s']:6.2f} s  {n / got['run_s']:10,.0f} rows/s  "
            f"peak RSS {got['peak_mb']:6.0f} MB  (process start + imports not counted)"
        )
    print(
        f"  export / bare: time {export['run_s'] / bare['run_s']:.2f}x, "
        f"peak RSS {export['peak_mb'] / bare['peak_mb']:.2f}x"
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK cost 40 ms each

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        stamp = self.headers.get("X-Engage-Timestamp")
        if stamp is not None:
            expected = "sha256=" + hmac.new(SECRET, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
            status = 200 if hmac.compare_digest(expected, self.headers["X-Engage-Signature"]) else 401
        else:
            status = 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def _serve(port: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port.value = server.server_address[1]
    server.serve_forever()


def run_webhook(scores: Path, work: Path, n: int, sizes: list[int], seed: int) -> None:
    from engage.audiences.split import split_audiences
    from engage.audiences.webhook import batches, deliver
    from engage.config import WebhookConfig

    port = multiprocessing.Value("i", 0)
    receiver = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    receiver.start()
    while not port.value:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port.value}/hook"
    audiences = split_audiences(pl.read_parquet(scores).head(n), "message")
    print(f"webhook delivery of {audiences.exported:,} decisions to a loopback receiver (another process)")
    try:
        for size in sizes:
            config = WebhookConfig(url=url, batch_size=size)
            ledger = work / f"delivered-{size}.jsonl"
            report = deliver(audiences, config, SECRET, ledger, seed=seed)
            conn = http.client.HTTPConnection("127.0.0.1", port.value, timeout=10)
            start = time.perf_counter()
            for batch in batches(audiences, size):  # the same bodies, built the same way
                conn.request("POST", "/hook", body=batch.body, headers={"Content-Type": "application/json"})
                conn.getresponse().read()
            bare = time.perf_counter() - start
            conn.close()
            rate = report.decisions_per_second
            plain = audiences.exported / bare
            print(
                f"  batch {size:5d}: engage {rate:9,.0f} decisions/s ({report.batches} batches, signed, "
                f"ledger fsynced)  bare post {plain:9,.0f}/s  ratio {rate / plain:.2f}"
            )
    finally:
        receiver.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--webhook-decisions", type=int, default=200_000)
    parser.add_argument("--batch-sizes", default="100,500,2000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        scores = work / "scores.parquet"
        start = time.perf_counter()
        generate(scores, args.users, args.seed)
        print(f"{args.users:,} scored users generated in {time.perf_counter() - start:.1f} s")
        run_export(scores, work, args.users)
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        run_webhook(scores, work, min(args.webhook_decisions, args.users), sizes, args.seed)


if __name__ == "__main__":
    main()
