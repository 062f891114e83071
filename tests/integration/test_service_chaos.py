"""Chaos against a real server: kill -9 of its worker under load, SIGTERM to ``engage serve``.

The server is started the way an operator starts it (``engage serve``, one worker, loopback) on
small models registered in a temp MLflow store: a recency churn model and an uplift model under
which every message gains, so the policy sends and the contact cap has something to hold.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from engage import schemas as s
from tests.integration.conftest import free_port, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ENGAGE = Path(sys.executable).with_name("engage")
N_USERS = 200
OFFER_FEATURES = ["days_since_last_session", "session_count_28d"]
CLIENTS = 3
MAX_REQUESTS_PER_CLIENT = 2_000
# BentoML notices the dead worker after ~15 s and the new one loads its models in ~15 s on 2 cores
RESPAWN_SECONDS = 75.0


@dataclass
class Served:
    """``engage serve`` on a loopback port and what it was built from."""

    url: str
    port: int
    wrapper: subprocess.Popen[bytes]
    log: Path
    config: Any
    users: list[str]
    seen: set[int] = field(default_factory=set)  # every pid of the server tree ever seen


def _features(n: int, seed: int, as_of: pd.Timestamp) -> pd.DataFrame:
    """Feature rows of users eligible for every message of the default catalog, all channels consented."""
    from engage.config import DEFAULT_CATALOG_PATH
    from engage.offers.catalog import load_catalog

    rng = np.random.default_rng(seed)
    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    return pd.DataFrame(
        {
            s.USER_ID: [f"c{i:04d}" for i in range(n)],
            s.AS_OF: as_of,
            "days_since_last_event": rng.integers(0, 60, n).astype(float),
            "cart_abandon_count_7d": np.ones(n),
            "product_view_count_28d": np.full(n, 5.0),
            "days_since_last_session": rng.integers(0, 40, n).astype(float),
            "session_count_28d": rng.integers(1, 5, n).astype(float),
            "top_category": "books",
            **{s.consent_column(m.channel): 1.0 for m in catalog.messages},
        }
    )


def _register_models(config: Any, train: pd.DataFrame) -> None:
    """A recency churn model and an uplift model where every message gains, both champions."""
    from engage.config import DEFAULT_CATALOG_PATH
    from engage.models.bundle import ChurnBundle, OfferBundle
    from engage.models.churn import RecencyBaseline
    from engage.models.uplift import MultiArmUplift
    from engage.offers.catalog import load_catalog
    from engage.training.registry import record_and_promote

    rng = np.random.default_rng(3)
    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    churned = (rng.random(len(train)) < train["days_since_last_event"] / 80).astype(int)
    churn = ChurnBundle(
        model=RecencyBaseline(feature="days_since_last_event").fit(train, churned),
        explainer=None,
        feature_names=["days_since_last_event"],
    )
    arms = rng.choice(catalog.arms, len(train))
    converted = (rng.random(len(train)) < 0.05 + 0.4 * (arms != s.CONTROL_ARM)).astype(float)
    uplift = MultiArmUplift(learner="t", n_estimators=5, min_child_samples=20)
    offers = OfferBundle(
        model=uplift.fit(train[OFFER_FEATURES], arms, converted), feature_names=OFFER_FEATURES
    )
    for kind, bundle, name, method in (
        ("churn", churn, config.tracking.churn_model_name, "predict_proba"),
        ("offers", offers, config.tracking.offer_model_name, "predict_outcomes"),
    ):
        done = record_and_promote(
            bundle,
            config,
            kind=kind,
            model_name=name,
            run_name=f"chaos-{kind}",
            input_example=train[bundle.feature_names].head(5),
            metrics={},
            gate=lambda _name: (True, {}),
            method=method,
        )
        assert done.promoted


# --- the process tree, read from /proc ---------------------------------------------------------
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live (non-zombie) process below ``pid``."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def worker_pids(served: Served) -> list[int]:
    """The server's worker processes (BentoML runs each as ``_bentoml_impl.worker.service``)."""
    pids = descendants(served.wrapper.pid)
    served.seen.update(pids)
    return [p for p in pids if "_bentoml_impl.worker" in cmdline(p)]


def port_free(port: int) -> bool:
    """Nothing listens on the port and a restarted server could bind it (as servers do: SO_REUSEADDR,
    so connections of the stopped server left in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def post(url: str, body: Any, timeout: float = RESPAWN_SECONDS) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from engage.config import load_config

    root = tmp_path_factory.mktemp("chaos")
    config = load_config(
        overrides={
            "tracking.uri": f"sqlite:///{root / 'mlflow.db'}",
            "serve.feature_snapshot_path": str(root / "snapshot.parquet"),
            "serve.decision_log_dir": str(root / "decisions"),
            "serve.max_users_per_request": 20,
            "serve.stop_seconds": 20,
        }
    )
    env = {
        **os.environ,
        "BENTOML_HOME": str(root / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_TRACKING_URI": config.tracking.uri,
    }
    env.pop("ENGAGE_API_TOKEN", None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", config.tracking.uri)
        now = pd.Timestamp.now(tz="UTC").floor("D")
        _register_models(config, _features(1_500, seed=2, as_of=now))
    snapshot = _features(N_USERS, seed=5, as_of=now)
    snapshot.to_parquet(config.serve.feature_snapshot_path)
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = free_port()
    log = root / "serve.log"
    with log.open("wb") as handle:
        wrapper = subprocess.Popen(
            [
                *(str(ENGAGE), "serve", "--config", str(config_path), "--model-source", "mlflow"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    result = Served(f"http://127.0.0.1:{port}", port, wrapper, log, config, snapshot[s.USER_ID].tolist())
    try:
        try:
            wait_http(f"{result.url}/readyz", timeout=240, process=wrapper)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n--- server log ---\n{log.read_text()[-4000:]}") from exc
        worker_pids(result)
        yield result
    finally:
        for pid in [wrapper.pid, *descendants(wrapper.pid), *result.seen]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        wrapper.wait(timeout=30)


# --- kill -9 of the worker under load ----------------------------------------------------------
def _message(answer: dict[str, Any]) -> str:
    return str(answer["message"]["message_id"])


def test_a_killed_worker_is_respawned_and_loses_no_acknowledged_decision(served: Served) -> None:
    from engage.scoring.decision_log import read_decisions

    cap = served.config.policy.max_per_7d
    acknowledged: set[str] = set()
    users = [{"user_id": u} for u in served.users[:10]]
    status, body = post(f"{served.url}/score", {"users": users, "explain": False})
    assert status == 200, body
    acknowledged.update(a["decision_id"] for a in body["users"])
    # message one user up to the cap before the kill
    target = next(a["user_id"] for a in body["users"] if _message(a) != s.CONTROL_ARM)
    others = [u for u in served.users if u != target]
    sent = [next(_message(a) for a in body["users"] if a["user_id"] == target)]
    for _ in range(cap):
        status, body = post(f"{served.url}/score", {"users": [{"user_id": target}], "explain": False})
        assert status == 200, body
        acknowledged.add(body["users"][0]["decision_id"])
        sent.append(_message(body["users"][0]))
    assert sum(m != s.CONTROL_ARM for m in sent) == cap and sent[-1] == s.CONTROL_ARM, sent

    (worker,) = worker_pids(served)
    stop = threading.Event()
    lock = threading.Lock()
    outcomes: list[tuple[float, int | str]] = []  # (when the request was sent, status or error)

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if stop.is_set():
                return
            batch = rng.choice(others, size=int(rng.integers(1, 6)), replace=False).tolist()
            sent_at = time.monotonic()
            body: Any = None
            try:
                status, body = post(
                    f"{served.url}/score", {"users": [{"user_id": u} for u in batch], "explain": False}
                )
            except OSError as exc:  # reset while the worker dies, or no answer in time
                status = type(exc).__name__
                time.sleep(0.1)
            with lock:
                outcomes.append((sent_at, status))
                if status == 200:
                    acknowledged.update(a["decision_id"] for a in body["users"])

    def answered_after(moment: float) -> bool:
        with lock:
            return any(sent > moment and status == 200 for sent, status in outcomes)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)  # under load
        os.kill(worker, signal.SIGKILL)
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < RESPAWN_SECONDS and not answered_after(killed_at + 0.5):
            time.sleep(0.2)
        respawn_seconds = time.monotonic() - killed_at
        time.sleep(1.0)  # some load on the new worker too
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    respawned = [p for p in worker_pids(served) if p != worker]
    assert not alive(worker), "the worker was killed"
    assert respawned and answered_after(killed_at + 0.5), (
        f"no answer from a new worker {RESPAWN_SECONDS} s after the kill\n{served.log.read_text()[-3000:]}"
    )
    before = [status for sent, status in outcomes if sent < killed_at]
    assert before.count(200) >= 3, f"too little load before the kill: {before}"
    refused = [status for _, status in outcomes if isinstance(status, int) and 400 <= status < 500]
    assert not refused, f"valid requests refused under load: {refused}"
    print(f"respawned and answering {respawn_seconds:.1f} s after the kill; {len(outcomes)} requests")

    # every decision a client was told about is in the log, and the log is readable
    log, skipped = read_decisions(served.config.serve.decision_log_dir)
    missing = acknowledged - set(log["decision_id"])
    assert not missing, f"{len(missing)} acknowledged decisions not in the log"
    assert skipped <= 1, "at most the line being written at the kill is cut short"

    # the new worker read the old one's decisions back: the target's cap still holds
    status, body = post(f"{served.url}/score", {"users": [{"user_id": target}], "explain": False})
    assert status == 200, body
    assert _message(body["users"][0]) == s.CONTROL_ARM, "the contact cap was lost across the kill"
    other = others[0]
    status, body = post(f"{served.url}/score", {"users": [{"user_id": other}], "explain": False})
    assert status == 200


# --- SIGTERM to engage serve ---------------------------------------------------------------------
def test_sigterm_to_engage_serve_stops_the_whole_server(served: Served) -> None:
    """It used to stop only the wrapper: the server kept serving unsupervised and held the port."""
    tree = descendants(served.wrapper.pid)
    served.seen.update(tree)
    assert worker_pids(served), "a worker is running"
    served.wrapper.send_signal(signal.SIGTERM)
    code = served.wrapper.wait(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (any(alive(p) for p in tree) or not port_free(served.port)):
        time.sleep(0.2)
    survivors = {p: cmdline(p) for p in tree if alive(p)}
    assert not survivors, f"still running after SIGTERM: {survivors}"
    assert port_free(served.port), "the port is still bound"
    assert code in (0, 128 + signal.SIGTERM), code


SUPERVISED = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
    print(grandchild.pid, flush=True)
    time.sleep(300)
    """
)


def test_a_server_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    """``supervise`` forwards SIGTERM to the whole group and escalates to SIGKILL after ``stop_seconds``."""
    script = tmp_path / "stubborn.py"
    script.write_text(SUPERVISED)
    wrapper_code = (
        "import sys; from engage.serving.process import supervise; "
        f"sys.exit(supervise([sys.executable, {str(script)!r}], {{}}, stop_seconds=1.0))"
    )
    wrapper = subprocess.Popen([sys.executable, "-c", wrapper_code], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert wrapper.stdout is not None
        grandchild = int(wrapper.stdout.readline())
        tree = descendants(wrapper.pid)
        assert grandchild in tree and len(tree) == 2, tree
        started = time.monotonic()
        wrapper.send_signal(signal.SIGTERM)
        code = wrapper.wait(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        for pid in descendants(wrapper.pid):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert not [p for p in tree if alive(p)], "a supervised process survived"
    assert code == 128 + signal.SIGKILL and 0.9 < elapsed < 10, (code, elapsed)
