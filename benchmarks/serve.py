"""Scoring service speed next to the bare model behind BentoML, in one run on loopback.

Run once, after training (champion in MLflow) and writing a feature snapshot:
``.venv/bin/python benchmarks/serve.py --config run.yaml [--url http://127.0.0.1:3000]``.
It starts two one-worker ``bentoml serve`` processes on free loopback ports (models from MLflow):
``engage.serving.service:EngageService`` (unless ``--url`` names a running one) and
``benchmarks/bare_service.py:BareModel`` (LightGBM ``predict`` + ``pred_contrib`` on rows already in
the model's input form, same request body). For both it prints single-user latency p50/p99 (the
service with reasons and message; target p99 <= 25 ms), requests/s with 16 concurrent clients, and
users/s with batches of 100 with the ratio service/bare (target >= 40%); plus the bare model
in-process, and ``os.getloadavg()`` before and after (the load generator shares the CPUs). Both
servers run with one OpenMP thread per process (``OMP_NUM_THREADS=1`` unless set), as
``engage serve`` starts the service. The engage service writes its decisions to a temp folder.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.config import load_config


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


class Client:
    """A keep-alive JSON client (one connection, like a real caller's pool)."""

    def __init__(self, url: str, token: str | None) -> None:
        parsed = urlparse(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def score(self, body: bytes) -> dict[str, Any]:
        try:
            self.conn.request("POST", "/score", body=body, headers=self.headers)
            response = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.conn.close()  # the server closed an idle keep-alive connection: reconnect once
            self.conn.request("POST", "/score", body=body, headers=self.headers)
            response = self.conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"/score answered {response.status}: {payload[:300]!r}")
        return json.loads(payload)


def body(user_ids: list[str], explain: bool = True) -> bytes:
    return json.dumps({"users": [{"user_id": u} for u in user_ids], "explain": explain}).encode()


def concurrent_rps(url: str, token: str | None, users: list[str], clients: int, seconds: float) -> float:
    """Requests/s of single-user ``/score`` calls from ``clients`` threads for ``seconds``."""
    counts = [0] * clients
    stop = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        client = Client(url, token)
        i = k
        try:
            while time.perf_counter() < stop:
                client.score(body([users[i % len(users)]]))
                counts[k] += 1
                i += clients
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(counts) / (time.perf_counter() - t0)


def start_server(
    target: str, env: dict[str, str], working_dir: Path | None = None
) -> subprocess.Popen[bytes]:
    """``bentoml serve target`` on a free loopback port; returns the process (port in ``.url``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    if working_dir is not None:
        command += ["--working-dir", str(working_dir)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    process.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return process


def wait_ready(process: subprocess.Popen[bytes], timeout: float = 300) -> str:
    url: str = process.url  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return url
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not ready in {timeout} s")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@dataclass
class Figures:
    p50: float
    p99: float
    rps: float
    batch: float


def measure(url: str, token: str | None, users: list[str], args: argparse.Namespace) -> Figures:
    """Single-user latency, concurrent requests/s and users/s in batches of 100, against one server."""
    client = Client(url, token)
    for u in users[:30]:
        client.score(body([u]))  # warm-up
    single = []
    for i in range(args.single):
        t0 = time.perf_counter()
        client.score(body([users[i % len(users)]]))
        single.append(time.perf_counter() - t0)
    rps = concurrent_rps(url, token, users, args.clients, args.seconds)
    t0 = time.perf_counter()
    n_users = 0
    for b in range(args.batches):
        start = (b * 100) % max(len(users) - 100, 1)
        chunk = users[start : start + 100]
        client.score(body(chunk))
        n_users += len(chunk)
    p50, p99 = percentiles(single)
    return Figures(p50, p99, rps, n_users / (time.perf_counter() - t0))


def in_process_bare(config_path: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    """The bare model without any server: p50/p99 of one row and rows/s in blocks of 100."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bare_service import model_rows  # a sibling script, not a package

    booster, trees, rows, _ = model_rows(str(config_path))
    single: list[float] = []
    for i in range(args.single):
        row = rows.iloc[[i % len(rows)]]
        t0 = time.perf_counter()
        booster.predict(row, num_iteration=trees)
        booster.predict(row, num_iteration=trees, pred_contrib=True)
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    n_rows = 0
    for b in range(args.batches):
        start = (b * 100) % max(len(rows) - 100, 1)
        block = rows.iloc[start : start + 100]
        booster.predict(block, num_iteration=trees)
        booster.predict(block, num_iteration=trees, pred_contrib=True)
        n_rows += len(block)
    return (*percentiles(single), n_rows / (time.perf_counter() - t0))


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"


def main() -> None:
    """Measure the service and the bare model behind BentoML on the same users; print figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="engage config YAML (tracking URI, snapshot path)")
    parser.add_argument("--url", help="an already running engage service (default: start one)")
    parser.add_argument("--token", default=os.environ.get("ENGAGE_API_TOKEN"))
    parser.add_argument("--single", type=int, default=400, help="sequential single-user requests")
    parser.add_argument("--batches", type=int, default=30, help="requests of 100 users")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    # as `engage serve` runs it; set before LightGBM loads so every side runs the same way
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config_path = Path(args.config).resolve()
    config = load_config(config_path)
    snapshot = pd.read_parquet(config.serve.feature_snapshot_path, columns=[s.USER_ID, s.AS_OF])
    users = (
        snapshot.sort_values(s.AS_OF).drop_duplicates(s.USER_ID, keep="last")[s.USER_ID].astype(str).tolist()
    )

    scratch = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {
        **os.environ,
        "ENGAGE_CONFIG": str(config_path),
        "ENGAGE_MODEL_SOURCE": "mlflow",
        "ENGAGE_DECISION_LOG": str(scratch / "decisions"),  # benchmark decisions never mix with real ones
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.setdefault("BENTOML_HOME", str(scratch / "bentoml"))
    service_env = {**env, **({"ENGAGE_API_TOKEN": args.token} if args.token else {})}
    started = time.perf_counter()
    engage = None if args.url else start_server("engage.serving.service:EngageService", service_env)
    bare = start_server("bare_service:BareModel", env, working_dir=Path(__file__).resolve().parent)
    try:
        url = args.url or wait_ready(engage)  # type: ignore[arg-type]
        bare_url = wait_ready(bare)
        print(f"users={len(users)} servers ready in {time.perf_counter() - started:.1f} s; {load()}")
        bare_local = in_process_bare(config_path, args)
        before = load()
        bare_fig = measure(bare_url, None, users, args)
        serve_fig = measure(url, args.token, users, args)
        after = load()
    finally:
        stop(engage)
        stop(bare)

    print(f"measured from {before} to {after}")
    print(f"{'':34s}{'single p50':>12s}{'p99':>12s}{f'{args.clients} clients':>14s}{'batches of 100':>16s}")
    rows = [
        ("bare model in-process", bare_local[0], bare_local[1], None, bare_local[2]),
        ("bare model behind BentoML", bare_fig.p50, bare_fig.p99, bare_fig.rps, bare_fig.batch),
        ("engage /score (reasons+message)", serve_fig.p50, serve_fig.p99, serve_fig.rps, serve_fig.batch),
    ]
    for name, p50, p99, rps, batch in rows:
        rps_text = f"{rps:.0f} req/s" if rps is not None else "-"
        print(f"{name:34s}{p50:9.2f} ms{p99:9.2f} ms{rps_text:>14s}{batch:12,.0f} u/s")
    print(f"serve single user p99: {serve_fig.p99:.1f} ms (target <= 25 ms)")
    ratio = serve_fig.batch / bare_fig.batch
    print(f"ratio serve/bare behind BentoML, batches of 100: {ratio:.1%} (target >= 40%)")
    print(f"ratio serve/bare behind BentoML, {args.clients} clients: {serve_fig.rps / bare_fig.rps:.1%}")


if __name__ == "__main__":
    main()
