"""Scoring service speed, side by side with bare LightGBM on the same rows, in one run on loopback.

Run once, after training (champion in MLflow) and writing a feature snapshot:
``.venv/bin/python benchmarks/serve.py --config run.yaml [--url http://127.0.0.1:3000]``.
Without ``--url`` it starts ``bentoml serve engage.service:EngageService`` on a free loopback port
(models from MLflow) and stops it afterwards. Prints, for the service: single-user ``/score`` latency
p50/p99 with reasons and message (target p99 <= 25 ms), requests/s with 16 concurrent clients, users/s
with batches of 100; for the bare model: ``predict_proba`` + ``pred_contrib`` latency per row and
rows/s in batches of 100; and the ratio (target >= 40%). Both sides run with one OpenMP thread per
process (``OMP_NUM_THREADS=1`` unless set), as ``engage serve`` starts the service.
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
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.config import EngageConfig, load_config


def find_lightgbm(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Any | None:
    """The LightGBM model inside an engage estimator (walks attributes; calibrators wrap it)."""
    import lightgbm as lgb

    seen = seen if seen is not None else set()
    if id(obj) in seen or depth > 4:
        return None
    seen.add(id(obj))
    if isinstance(obj, lgb.Booster):
        return obj
    if isinstance(obj, lgb.LGBMModel):
        return obj.booster_
    children: list[Any] = []
    if isinstance(obj, list | tuple):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    for child in children:
        found = find_lightgbm(child, depth + 1, seen)
        if found is not None:
            return found
    return None


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


def start_service(
    config_path: Path, config: EngageConfig, token: str | None
) -> tuple[str, subprocess.Popen[bytes]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "ENGAGE_CONFIG": str(config_path),
        "ENGAGE_MODEL_SOURCE": "mlflow",
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="bench-bentoml-"))
    if token:
        env["ENGAGE_API_TOKEN"] = token
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "engage.service:EngageService",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return url, process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise TimeoutError("service not ready in 300 s")


def main() -> None:
    """Measure the service and the bare model on the same snapshot rows; print figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="engage config YAML (tracking URI, snapshot path)")
    parser.add_argument("--url", help="an already running service (default: start one)")
    parser.add_argument("--token", default=os.environ.get("ENGAGE_API_TOKEN"))
    parser.add_argument("--single", type=int, default=400, help="sequential single-user requests")
    parser.add_argument("--batches", type=int, default=30, help="requests of 100 users")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    # as `engage serve` runs it; set before LightGBM loads so the bare model runs the same way
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from engage.service import load_scoring_models

    config = load_config(args.config)
    snapshot = pd.read_parquet(config.serve.feature_snapshot_path)
    snapshot = snapshot.sort_values(s.AS_OF).drop_duplicates(s.USER_ID, keep="last").reset_index(drop=True)
    users = snapshot[s.USER_ID].astype(str).tolist()
    models = load_scoring_models(config, "mlflow")
    booster = find_lightgbm(models.churn)
    if booster is None:
        raise SystemExit("no LightGBM model found inside the churn bundle")
    # the bare model gets rows already in its input form (categoricals as pandas categories)
    estimator = models.churn.model
    prepare = getattr(estimator, "_prepare", None)
    frame = snapshot[models.churn.feature_names]
    X = prepare(frame) if prepare is not None else frame.astype(float)
    trees = getattr(estimator, "best_iteration_", None) or booster.current_iteration()
    print(f"rows={len(X)} features={X.shape[1]} trees={trees} cpus={os.cpu_count()}")

    # bare model: predict_proba + pred_contrib
    single_bare: list[float] = []
    for i in range(args.single):
        row = X.iloc[[i % len(X)]]
        t0 = time.perf_counter()
        booster.predict(row, num_iteration=trees)
        booster.predict(row, num_iteration=trees, pred_contrib=True)
        single_bare.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    n_rows = 0
    for b in range(args.batches):
        start = (b * 100) % max(len(X) - 100, 1)
        block = X.iloc[start : start + 100]
        booster.predict(block, num_iteration=trees)
        booster.predict(block, num_iteration=trees, pred_contrib=True)
        n_rows += len(block)
    bare_batch = n_rows / (time.perf_counter() - t0)

    process = None
    url = args.url
    if url is None:
        url, process = start_service(Path(args.config).resolve(), config, args.token)
    try:
        client = Client(url, args.token)
        for u in users[:20]:
            client.score(body([u]))  # warm-up
        single = []
        for i in range(args.single):
            t0 = time.perf_counter()
            answer = client.score(body([users[i % len(users)]]))
            single.append(time.perf_counter() - t0)
        assert answer["users"][0]["message"]["message_id"]
        rps = concurrent_rps(url, args.token, users, args.clients, args.seconds)
        t0 = time.perf_counter()
        n_users = 0
        for b in range(args.batches):
            start = (b * 100) % max(len(users) - 100, 1)
            chunk = users[start : start + 100]
            client.score(body(chunk))
            n_users += len(chunk)
        service_batch = n_users / (time.perf_counter() - t0)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)

    p50, p99 = percentiles(single)
    b50, b99 = percentiles(single_bare)
    print(f"bare  single row predict_proba+pred_contrib: p50={b50:.2f} ms p99={b99:.2f} ms")
    print(f"serve single user /score (reasons+message): p50={p50:.2f} ms p99={p99:.2f} ms (target p99 <= 25)")
    print(f"serve {args.clients} concurrent clients: {rps:.0f} requests/s")
    print(f"bare  batches of 100: {bare_batch:,.0f} rows/s")
    print(f"serve batches of 100: {service_batch:,.0f} users/s")
    print(f"ratio serve/bare (batches of 100): {service_batch / bare_batch:.1%} (target >= 40%)")


if __name__ == "__main__":
    main()
