"""Scoring service speed next to the bare model behind BentoML, in one run on loopback.

Run once, after training (champion in MLflow) and writing a feature snapshot:
``.venv/bin/python benchmarks/serve.py --config run.yaml [--url http://127.0.0.1:3000]``.
It starts two one-worker ``bentoml serve`` processes on free loopback ports (models from MLflow):
``engage.serving.service:EngageService`` (unless ``--url`` names a running one) and
``benchmarks/bare_service.py:BareModel`` (LightGBM ``predict`` + ``pred_contrib`` on rows already in
the model's input form, same request body). For both it prints single-user latency p50/p99 (the
service with reasons and message; target p99 <= 25 ms), requests/s with 16 concurrent clients, and
users/s with batches of 100 with the ratio service/bare (target >= 40%); plus the bare model
in-process, and ``os.getloadavg()`` before and after (the load generator shares the CPUs), with a
CPU reference that tells a slow machine from slow code (``benchmarks/machine.py``). Both
servers run with one OpenMP thread per process (``OMP_NUM_THREADS=1`` unless set), as
``engage serve`` starts the service. The engage service writes its decisions to a temp folder.

When the registry holds a timing champion (``engage train timing``) and the snapshot its
``timing_*`` columns (``engage score`` with that champion), two more servers start fresh: the
service as above and the same without the timing model (its config names no registered timing
model). Their single-user p50/p99 are measured interleaved (same users in the same order, same
noise), with the share of answers carrying ``send_at`` (issue 17: p99 stays within the 25 ms target
with send times on). Fresh servers, because the service counts its own answers as contacts: after
the load above most users are capped and get the cheaper "none" answer.

With ``--redis redis://127.0.0.1:6379/0`` it also starts the service on the Redis online store with
one and with two workers (keys under a ``bench:<pid>:`` prefix, deleted afterwards) and prints them
next to the local store: single-user p50/p99 and 16-client requests/s (targets: Redis adds <= 2 ms
to p99; 2 workers >= 1.5x the requests/s of 1), answers sent nothing because the store was slow
(``withheld``), and the rows/s of loading ``--load-rows`` (1,000,000) feature rows into Redis. What
Redis adds to p99 is judged in-process: the engine on each store, interleaved on the same users,
``--engine-requests`` (2,000) each, so both see the same noise and a p99 rests on 20 times.
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
import yaml
from machine import describe, load  # a sibling script (benchmarks/ is the script's path[0])

from engage import schemas as s
from engage.config import load_config


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


WITHHELD: dict[str, int] = {}
"""Answers per server URL that sent nothing because the online store was unavailable or busy."""
_WITHHELD_LOCK = threading.Lock()


class Client:
    """A keep-alive JSON client (one connection, like a real caller's pool)."""

    def __init__(self, url: str, token: str | None) -> None:
        parsed = urlparse(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
        self.url = url
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
        answer: dict[str, Any] = json.loads(payload)
        withheld = sum(1 for u in answer.get("users", []) if (u.get("message") or {}).get("withheld"))
        if withheld:
            with _WITHHELD_LOCK:
                WITHHELD[self.url] = WITHHELD.get(self.url, 0) + withheld
        return answer


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
    target: str, env: dict[str, str], working_dir: Path | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """``bentoml serve target`` on a free loopback port; returns the process (port in ``.url``).

    Its output goes to ``log`` when given (the benchmark's scratch folder), else nowhere."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    if working_dir is not None:
        command += ["--working-dir", str(working_dir)]
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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


@dataclass
class Timed:
    p50: float
    p99: float
    sent: int
    """Answers with a message that carry ``send_at``."""
    messages: int
    """Answers with a message (not the control)."""


def timing_latency(urls: dict[str, str], token: str | None, users: list[str], n: int) -> dict[str, Timed]:
    """Single-user ``/score`` against each server in turn, request by request (the same noise for all)."""
    clients = {name: Client(url, token) for name, url in urls.items()}
    for client in clients.values():
        for u in users[:30]:
            client.score(body([u]))  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in urls}
    sent = dict.fromkeys(urls, 0)
    messages = dict.fromkeys(urls, 0)
    for i in range(n):
        for name, client in clients.items():
            t0 = time.perf_counter()
            answer = client.score(body([users[i % len(users)]]))
            seconds[name].append(time.perf_counter() - t0)
            message = answer["users"][0].get("message") or {}
            if message.get("message_id", s.CONTROL_ARM) != s.CONTROL_ARM:
                messages[name] += 1
                sent[name] += message.get("send_at") is not None
    return {name: Timed(*percentiles(seconds[name]), sent[name], messages[name]) for name in urls}


def without_timing_config(config_path: Path, scratch: Path) -> Path:
    """The benchmark config with a timing model name nobody registered: the service loads no timing model."""
    raw = yaml.safe_load(config_path.read_text()) or {}
    raw.setdefault("timing", {})["model_name"] = f"bench-no-timing-{os.getpid()}"
    path = scratch / "no-timing.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def has_timing(config_path: Path) -> bool:
    """Whether the registry holds a timing champion and the snapshot the timing columns."""
    from engage.scoring.champions import TIMING, registry_refs
    from engage.timing.snapshot import has_columns

    config = load_config(config_path)
    if TIMING not in {ref.role for ref in registry_refs(config)}:
        print(f"no {config.timing.model_name}@champion in {config.tracking.uri}: timing on/off not measured")
        return False
    import pyarrow.parquet as pq

    if not has_columns(pq.read_schema(config.serve.feature_snapshot_path).names):
        print(
            f"{config.serve.feature_snapshot_path} has no timing_* columns (score with the timing champion)"
        )
        return False
    return True


def online_config(config_path: Path, scratch: Path, redis_url: str, prefix: str, workers: int) -> Path:
    """The benchmark config with the Redis online store (own key prefix) and ``workers`` workers."""
    raw = yaml.safe_load(config_path.read_text()) or {}
    serve = raw.setdefault("serve", {})
    serve.update({"online_store": redis_url, "online_prefix": prefix, "workers": workers})
    path = scratch / f"online-{workers}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def feature_load(redis_url: str, prefix: str, snapshot_path: str, rows: int) -> tuple[int, float]:
    """Rows/s of ``engage.online.load_features`` for ``rows`` users (the snapshot's rows, tiled)."""
    from engage.online.redis import load_features

    snapshot = pd.read_parquet(snapshot_path)
    snapshot = snapshot.sort_values(s.AS_OF).drop_duplicates(s.USER_ID, keep="last").reset_index(drop=True)
    frame = snapshot.iloc[np.arange(rows) % len(snapshot)].reset_index(drop=True)
    frame[s.USER_ID] = [f"bench-{i}" for i in range(rows)]
    t0 = time.perf_counter()
    written = load_features(redis_url, frame, pd.Timedelta(hours=1), prefix=prefix, timeout_ms=10_000)
    return written, written / (time.perf_counter() - t0)


def engine_latency(
    config_path: Path, scratch: Path, redis_url: str, prefix: str, users: list[str], n: int
) -> dict[str, tuple[float, float]]:
    """Single-user ``ScoringEngine.score`` in-process, local and Redis store interleaved (same noise),
    taking turns at going first (the one that runs right after the other finds its caches colder)."""
    from engage.scoring.champions import load_champions
    from engage.serving.engine import ScoringEngine
    from engage.serving.schemas import ScoreRequest

    config = load_config(config_path)
    models = load_champions(config)
    stores = {"local": "local", "redis": redis_url}
    engines = {}
    for name, store in stores.items():
        serve = config.serve.model_copy(
            update={
                "online_store": store,
                "online_prefix": prefix + "engine:",
                "decision_log_dir": str(scratch / f"engine-{name}"),
            }
        )
        engines[name] = ScoringEngine(config.model_copy(update={"serve": serve}), models, watch_seconds=None)
    times: dict[str, list[float]] = {name: [] for name in engines}
    try:
        order = list(engines.items())
        for i in range(n + 30):
            request = ScoreRequest.model_validate({"users": [{"user_id": users[i % len(users)]}]})
            for name, engine in order if i % 2 else order[::-1]:  # neither store always goes second
                t0 = time.perf_counter()
                engine.score(request)
                if i >= 30:  # warm-up
                    times[name].append(time.perf_counter() - t0)
    finally:
        for engine in engines.values():
            engine.close()
    return {name: percentiles(seconds) for name, seconds in times.items()}


def store_latency(redis_url: str, prefix: str, users: list[str], n: int) -> tuple[float, float]:
    """What the Redis store adds to one decision: reserve (read) and record (check-and-write)."""
    from datetime import UTC, datetime

    from engage.online.redis import RedisStore

    store = RedisStore(redis_url, prefix=prefix + "store:", timeout_ms=1_000)
    seconds: list[float] = []
    try:
        for i in range(n + 30):
            user = users[i % len(users)]
            t0 = time.perf_counter()
            with store.reserve([user]) as contacts:
                now = datetime.now(UTC)
                contacts.frame([user], now, pd.Timestamp(now))
                contacts.record(user, now, "none", f"bench-{i}")
            if i >= 30:
                seconds.append(time.perf_counter() - t0)
    finally:
        store.close()
    return percentiles(seconds)


def drop_keys(redis_url: str, prefix: str) -> int:
    from engage.online.redis import connect

    client = connect(redis_url, 10_000)
    removed = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                removed += int(client.unlink(*batch))
                batch = []
        if batch:
            removed += int(client.unlink(*batch))
    finally:
        client.close()
    return removed


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
    parser.add_argument("--redis", help="redis:// URL: also the Redis online store, 1 and 2 workers")
    parser.add_argument("--load-rows", type=int, default=1_000_000, help="feature rows loaded into Redis")
    parser.add_argument(
        "--engine-requests",
        type=int,
        default=2_000,
        help="single-user requests per store in-process (a p99 from 400 is its 4th largest time)",
    )
    parser.add_argument(
        "--no-timing-compare", action="store_true", help="skip the service without the timing model"
    )
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
    print(f"server logs under {scratch}")
    prefix = f"bench:{os.getpid()}:"
    target = "engage.serving.service:EngageService"
    engage = None if args.url else start_server(target, service_env, log=scratch / "local-1.log")
    bare = start_server("bare_service:BareModel", env, working_dir=Path(__file__).resolve().parent)
    online: dict[int, subprocess.Popen[bytes]] = {}
    if args.redis:
        for workers in (1, 2):
            path = online_config(config_path, scratch, args.redis, prefix, workers)
            online_env = {**service_env, "ENGAGE_CONFIG": str(path)}
            online_env["ENGAGE_DECISION_LOG"] = str(scratch / f"decisions-redis-{workers}")
            online[workers] = start_server(
                "engage.serving.service:EngageService", online_env, log=scratch / f"redis-{workers}.log"
            )
    timed_server = untimed_server = None
    if not args.no_timing_compare and has_timing(config_path):
        timed_env = {**service_env, "ENGAGE_DECISION_LOG": str(scratch / "decisions-timing")}
        timed_server = start_server(target, timed_env, log=scratch / "timing.log")
        untimed_env = {**service_env, "ENGAGE_CONFIG": str(without_timing_config(config_path, scratch))}
        untimed_env["ENGAGE_DECISION_LOG"] = str(scratch / "decisions-no-timing")
        untimed_server = start_server(target, untimed_env, log=scratch / "no-timing.log")
    online_figs: dict[int, Figures] = {}
    timing_figs: dict[str, Timed] = {}
    loaded: tuple[int, float] | None = None
    try:
        url = args.url or wait_ready(engage)  # type: ignore[arg-type]
        bare_url = wait_ready(bare)
        online_urls = {workers: wait_ready(process) for workers, process in online.items()}
        timed_url = wait_ready(timed_server) if timed_server is not None else None
        untimed_url = wait_ready(untimed_server) if untimed_server is not None else None
        print(f"users={len(users)} servers ready in {time.perf_counter() - started:.1f} s; {describe()}")
        bare_local = in_process_bare(config_path, args)
        before = load()
        bare_fig = measure(bare_url, None, users, args)
        serve_fig = measure(url, args.token, users, args)
        for workers, online_url in online_urls.items():
            online_figs[workers] = measure(online_url, args.token, users, args)
        if timed_url is not None and untimed_url is not None:
            urls = {"with the timing model": timed_url, "without it": untimed_url}
            timing_figs = timing_latency(urls, args.token, users, args.single)
        after = load()
        if args.redis:
            in_process = engine_latency(config_path, scratch, args.redis, prefix, users, args.engine_requests)
            store_only = store_latency(args.redis, prefix, users, 2_000)
            loaded = feature_load(args.redis, prefix, config.serve.feature_snapshot_path, args.load_rows)
            after_load = load()
    finally:
        stop(engage)
        stop(bare)
        stop(timed_server)
        stop(untimed_server)
        for process in online.values():
            stop(process)
        if args.redis:
            drop_keys(args.redis, prefix)

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
    if timing_figs:
        print("\nsend times, single user, the two services interleaved:")
        for name, timed in timing_figs.items():
            print(
                f"{f'engage /score {name}':34s}{timed.p50:9.2f} ms{timed.p99:9.2f} ms"
                f"   send_at in {timed.sent} of {timed.messages} answers with a message"
            )
        on, off = timing_figs["with the timing model"], timing_figs["without it"]
        print(
            f"timing adds {on.p50 - off.p50:+.2f} ms to p50, {on.p99 - off.p99:+.2f} ms to p99; "
            f"p99 with timing {on.p99:.1f} ms (target <= 25 ms)"
        )
    if not online_figs:
        return
    print(f"\nonline store ({args.redis}), side by side:")
    print(f"{'':34s}{'single p50':>12s}{'p99':>12s}{f'{args.clients} clients':>14s}{'withheld':>10s}")
    lines = [("local store, 1 worker", serve_fig, url)]
    lines += [
        (f"redis store, {w} worker{'s' if w > 1 else ''}", online_figs[w], online_urls[w])
        for w in online_figs
    ]
    for name, fig, at in lines:
        print(f"{name:34s}{fig.p50:9.2f} ms{fig.p99:9.2f} ms{fig.rps:10.0f} req/s{WITHHELD.get(at, 0):>10d}")
    added = online_figs[1].p99 - serve_fig.p99
    print(f"redis adds to single-user p99 over HTTP (measured one after the other): {added:+.2f} ms")
    for name, (p50, p99) in in_process.items():
        print(f"{f'engine in-process, {name} store':34s}{p50:9.2f} ms{p99:9.2f} ms")
    added = in_process["redis"][1] - in_process["local"][1]
    print(f"redis adds to single-user p99 in-process (interleaved): {added:+.2f} ms (target <= 2 ms)")
    print(
        f"redis store alone per decision (reserve + record): p50 {store_only[0]:.2f} ms, "
        f"p99 {store_only[1]:.2f} ms"
    )
    scale = online_figs[2].rps / online_figs[1].rps
    print(f"2 workers / 1 worker, {args.clients} clients (redis store): {scale:.2f}x (target >= 1.5x)")
    if loaded is not None:
        print(f"feature load into redis: {loaded[0]:,} rows at {loaded[1]:,.0f} rows/s; {after_load}")


if __name__ == "__main__":
    main()
