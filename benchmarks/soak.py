"""Soak: minutes of mixed valid and invalid traffic against the service, next to the bare model.

Run after training (champion in MLflow) and writing a feature snapshot, e.g. after ``engage demo``:
``.venv/bin/python benchmarks/soak.py --config run.yaml [--minutes 10] [--clients 16]``.
It starts two one-worker ``bentoml serve`` processes on loopback (models from MLflow), as
``benchmarks/serve.py`` does: ``engage.serving.service:EngageService`` and
``benchmarks/bare_service.py:BareModel`` (LightGBM behind BentoML, same request body). Minute by
minute it loads one, then the other, with the same load (so drift in the shared host's load hits
both): ``--clients`` keep-alive clients, about ``--invalid`` of the requests invalid (bad JSON, an
unknown field, more users than ``serve.max_users_per_request``, an unknown path), the rest
``/score`` for 1-5 known users. Per minute and server: requests/s, p50/p99 of the valid requests,
5xx, other unexpected answers, the worker's RSS (from /proc) and the bytes the server logged. At
the end the targets: 0 5xx, the engage worker's RSS growth after the first minute < 5%, engage p99
within 2x of the bare model's, and the size of ``/metrics`` before and after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import load  # sibling scripts, not a package
from serve import stop, wait_ready

from engage import schemas as s
from engage.config import load_config

HERE = Path(__file__).resolve().parent
KINDS = ("valid", "bad_json", "unknown_field", "too_many_users", "unknown_path")
EXPECTED = {"valid": 200, "bad_json": 400, "unknown_field": 400, "too_many_users": 413, "unknown_path": 404}
"""What the engage service answers each kind with (the bare model accepts more: it is not judged)."""


@dataclass
class Request:
    kind: str
    path: str
    body: bytes


@dataclass
class Tally:
    """What one server answered during one minute."""

    latencies: list[float] = field(default_factory=list)  # seconds, valid requests
    requests: int = 0
    server_errors: int = 0
    unexpected: int = 0
    seconds: float = 0.0
    rss_mib: float = 0.0
    log_bytes: int = 0


def requests_for(
    users: list[str], max_users: int, invalid: float, rng: random.Random
) -> Callable[[], Request]:
    """A generator of requests: valid ``/score`` calls with 1-5 known users, and the invalid kinds."""
    too_many = json.dumps({"users": [{"user_id": f"x{i}"} for i in range(max_users + 1)]}).encode()

    def one() -> Request:
        if rng.random() >= invalid:
            chosen = rng.sample(users, rng.randint(1, 5))
            return Request(
                "valid", "/score", json.dumps({"users": [{"user_id": u} for u in chosen]}).encode()
            )
        kind = rng.choice(KINDS[1:])
        if kind == "bad_json":
            return Request(kind, "/score", b'{"users": [{"user_id": "u1"')
        if kind == "unknown_field":
            return Request(kind, "/score", json.dumps({"users": [{"user_id": "u1"}], "bogus": 1}).encode())
        if kind == "too_many_users":
            return Request(kind, "/score", too_many)
        return Request(kind, f"/probe/{rng.getrandbits(48):x}", b"{}")

    return one


class Client:
    """One keep-alive connection; reconnects when the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def send(self, request: Request) -> int:
        headers = {"Content-Type": "application/json"}
        for attempt in (0, 1):
            try:
                self.conn.request("POST", request.path, body=request.body, headers=headers)
                response = self.conn.getresponse()
                response.read()
                if response.will_close:
                    self.conn.close()
                return response.status
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")


def run_minute(port: int, make: list[Callable[[], Request]], seconds: float, judge: bool) -> Tally:
    """``len(make)`` clients send requests for ``seconds``; return what came back."""
    tally = Tally()
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    failures: list[BaseException] = []

    def worker(next_request: Callable[[], Request]) -> None:
        client = Client(port)
        try:
            while time.perf_counter() < stop_at:
                request = next_request()
                t0 = time.perf_counter()
                status = client.send(request)
                elapsed = time.perf_counter() - t0
                with lock:
                    tally.requests += 1
                    tally.server_errors += status >= 500
                    if request.kind == "valid" and status == 200:
                        tally.latencies.append(elapsed)
                    if judge and status != EXPECTED[request.kind] and status < 500:
                        tally.unexpected += 1
        except BaseException as exc:  # surfaced by the caller
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(m,)) for m in make]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally.seconds = time.perf_counter() - t0
    if failures:
        raise failures[0]
    return tally


def children(pid: int) -> list[int]:
    """Every descendant of ``pid``, from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *children(kid)]
    return found


def worker_rss_mib(server_pid: int) -> float:
    """RSS of the server's worker: its largest descendant (the process that loaded the model)."""
    sizes = []
    for pid in children(server_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        sizes.append(kb / 1024)
    return max(sizes, default=0.0)


def start(
    target: str, env: dict[str, str], log: Path, working_dir: Path | None = None
) -> subprocess.Popen[bytes]:
    """``bentoml serve target`` on a free loopback port, its output in ``log`` (port in ``.url``)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    if working_dir is not None:
        command += ["--working-dir", str(working_dir)]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    process.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    process.port = port  # type: ignore[attr-defined]
    return process


def metrics_bytes(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", "/metrics")
    return len(conn.getresponse().read())


def ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q)) if seconds else float("nan")


def row(minute: int, name: str, tally: Tally) -> str:
    """One line of the per-minute table."""
    return (
        f"{minute:3d} {name:7s}{tally.requests / tally.seconds:8.1f}{ms(tally.latencies, 50):9.1f}"
        f"{ms(tally.latencies, 99):9.1f}{tally.server_errors:6d}{tally.unexpected:7d}"
        f"{tally.rss_mib:9.1f}{tally.log_bytes / 1024:9.1f}"
    )


def main() -> None:
    """Soak both servers minute by minute; print per-minute figures, then the targets."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="engage config YAML (tracking URI, snapshot path)")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load on each server")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--invalid", type=float, default=0.2, help="share of invalid requests")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as `engage serve` runs it
    config_path = Path(args.config).resolve()
    config = load_config(config_path)
    snapshot = pd.read_parquet(config.serve.feature_snapshot_path, columns=[s.USER_ID])
    users = sorted(snapshot[s.USER_ID].astype(str).unique().tolist())

    scratch = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    env = {
        **os.environ,
        "ENGAGE_CONFIG": str(config_path),
        "ENGAGE_MODEL_SOURCE": "mlflow",
        "ENGAGE_DECISION_LOG": str(scratch / "decisions"),  # soak decisions never mix with real ones
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("ENGAGE_API_TOKEN", None)
    logs = {"engage": scratch / "engage.log", "bare": scratch / "bare.log"}
    # a BentoML home each: the Prometheus files live there, and a shared home mixes their /metrics
    servers = {
        "engage": start(
            "engage.serving.service:EngageService",
            {**env, "BENTOML_HOME": str(scratch / "home-engage")},
            logs["engage"],
        ),
        "bare": start(
            "bare_service:BareModel", {**env, "BENTOML_HOME": str(scratch / "home-bare")}, logs["bare"], HERE
        ),
    }
    minutes = max(1, round(args.minutes))
    seconds = args.minutes * 60 / minutes
    tallies: dict[str, list[Tally]] = {"engage": [], "bare": []}
    try:
        for server in servers.values():
            wait_ready(server)
        ports = {name: int(server.port) for name, server in servers.items()}  # type: ignore[attr-defined]
        metrics_before = metrics_bytes(ports["engage"])
        print(
            f"users={len(users)} clients={args.clients} invalid={args.invalid:.0%} logs in {scratch}",
            load(),
        )
        print(
            f"{'min':>3s} {'server':7s}{'req/s':>8s}{'p50 ms':>9s}{'p99 ms':>9s}{'5xx':>6s}{'unexp':>7s}"
            f"{'RSS MiB':>9s}{'log KiB':>9s}"
        )
        for minute in range(1, minutes + 1):
            for name in ("engage", "bare"):
                make = [
                    requests_for(
                        users,
                        config.serve.max_users_per_request,
                        args.invalid,
                        random.Random(args.seed * 1000 + k),
                    )
                    for k in range(args.clients)
                ]
                log_start = logs[name].stat().st_size
                tally = run_minute(ports[name], make, seconds, judge=name == "engage")
                tally.rss_mib = worker_rss_mib(servers[name].pid)
                tally.log_bytes = logs[name].stat().st_size - log_start
                tallies[name].append(tally)
                print(row(minute, name, tally), flush=True)
        metrics_after = metrics_bytes(ports["engage"])
        print(f"done; {load()}")
    finally:
        for server in servers.values():
            stop(server)

    engage, bare = tallies["engage"], tallies["bare"]
    errors_5xx = sum(t.server_errors for t in engage)
    unexpected = sum(t.unexpected for t in engage)
    later = engage[1:] or engage
    growth = (max(t.rss_mib for t in later) - engage[0].rss_mib) / engage[0].rss_mib
    p99 = ms([x for t in engage for x in t.latencies], 99)
    p99_bare = ms([x for t in bare for x in t.latencies], 99)
    requests = sum(t.requests for t in engage)
    logged = logs["engage"].read_text(errors="replace")
    tracebacks, client_errors = logged.count("Traceback"), logged.count("client error ")
    print(
        f"engage: {requests} requests, {errors_5xx} 5xx (target 0), {unexpected} unexpected 4xx/2xx answers"
    )
    peak = max(t.rss_mib for t in later)
    print(
        f"engage worker RSS {engage[0].rss_mib:.1f} MiB after minute 1, max {peak:.1f} MiB after: "
        f"growth {growth:+.1%} (target < 5%)"
    )
    print(
        f"p99 of valid requests: engage {p99:.1f} ms, bare {p99_bare:.1f} ms, ratio {p99 / p99_bare:.2f}x "
        f"(target <= 2x)"
    )
    print(f"engage /metrics {metrics_before} -> {metrics_after} bytes")
    print(
        f"engage log: {tracebacks} tracebacks, {client_errors} one-line client errors (BentoML's access log "
        "adds a line per request)"
    )
    print(f"engage log {sum(t.log_bytes for t in engage) / 1024 / (minutes * seconds / 60):.0f} KiB/min")


if __name__ == "__main__":
    main()
