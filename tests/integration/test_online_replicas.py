"""Two replicas of the service on two loopback ports sharing one Redis, hammered for the same users.

Each replica is a real ``engage serve`` (one with two workers) with its own decision log, as on two
hosts: they share only the Redis store (a key prefix of this test's own), where ``engage online load``
put the feature rows. Afterwards the decision logs must show no user over the contact cap and no
message inside its cooldown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from engage import schemas as s
from tests.integration.conftest import free_port, start_redis, stop_process, wait_http
from tests.integration.test_online_redis import check_contacts
from tests.integration.test_service_chaos import ENGAGE, REPO, _features, _register_models, alive, descendants

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 5
CLIENTS = 8
REQUESTS_PER_CLIENT = 20


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _serve(
    config_path: Path, log_dir: Path, env: dict[str, str], log: Path, workers: int
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [
                *(str(ENGAGE), "serve", "--config", str(config_path), "--model-source", "mlflow"),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**env, "ENGAGE_DECISION_LOG": str(log_dir)},
            cwd=REPO,
        )
    return f"http://127.0.0.1:{port}", process


def _stop(process: subprocess.Popen[bytes]) -> None:
    for pid in [process.pid, *descendants(process.pid)]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


def _setup(tmp_path: Path, redis_url: str, redis_prefix: str) -> tuple[Any, Path, dict[str, str]]:
    """Models registered in a tmp MLflow store, 50 users' feature rows loaded into Redis by
    ``engage online load``; the config file (features from Redis only) and the servers' environment."""
    from engage.config import load_config

    config = load_config(
        overrides={
            "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "serve.feature_snapshot_path": str(tmp_path / "no-snapshot.parquet"),  # features: Redis only
            "serve.feedback_log_dir": str(tmp_path / "feedback"),
            "serve.online_store": redis_url,
            "serve.online_prefix": redis_prefix,
            "serve.online_features": True,
            "serve.online_timeout_ms": 1000,
            "policy.exploration": "none",
            "policy.holdout_pct": 0.0,
        }
    )
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_TRACKING_URI": config.tracking.uri,
    }
    env.pop("ENGAGE_API_TOKEN", None)
    now = pd.Timestamp.now(tz="UTC").floor("D")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", config.tracking.uri)
        _register_models(config, _features(1_500, seed=2, as_of=now))
    snapshot_path = tmp_path / "snapshot.parquet"
    _features(50, seed=5, as_of=now).to_parquet(snapshot_path)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    _load(config_path, env, snapshot_path)
    return config, config_path, env


def _load(config_path: Path, env: dict[str, str], snapshot_path: Path) -> None:
    loaded = subprocess.run(
        [str(ENGAGE), "online", "load", "--snapshot", str(snapshot_path), "--config", str(config_path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0 and "loaded 50 feature rows" in loaded.stdout, loaded.stdout + loaded.stderr


@pytest.fixture
def replicas(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[tuple[list[str], Any, list[Path], Path]]:
    config, config_path, env = _setup(tmp_path, redis_url, redis_prefix)
    logs = [tmp_path / "decisions-a", tmp_path / "decisions-b"]
    started = [
        _serve(config_path, logs[0], env, tmp_path / "a.log", workers=2),
        _serve(config_path, logs[1], env, tmp_path / "b.log", workers=1),
    ]
    try:
        for (url, process), name in zip(started, ("a.log", "b.log"), strict=True):
            try:
                wait_http(f"{url}/readyz", timeout=300, process=process)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n--- {name} ---\n{(tmp_path / name).read_text()[-4000:]}") from exc
        yield [url for url, _ in started], config, logs, tmp_path
    finally:
        for _, process in started:
            _stop(process)


def test_two_replicas_sharing_redis_never_exceed_the_cap_or_a_cooldown(
    replicas: tuple[list[str], Any, list[Path], Path],
) -> None:
    from engage.offers.catalog import load_catalog
    from engage.scoring.decision_log import read_decisions

    urls, config, logs, root = replicas
    users = [f"c{i:04d}" for i in range(USERS)]
    failures: list[str] = []
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for i in range(REQUESTS_PER_CLIENT):
            chosen = [users[(index + i + k) % USERS] for k in range(3)]
            status, body = post(
                f"{urls[(index + i) % 2]}/score",
                {"users": [{"user_id": u} for u in chosen], "explain": False},
            )
            with lock:
                if status != 200:
                    failures.append(f"{status}: {str(body)[:300]}")
                else:
                    answers.extend(body["users"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    server_logs = "".join(f"--- {n} ---\n{(root / n).read_text()[-3000:]}\n" for n in ("a.log", "b.log"))
    assert not failures, f"{failures[:3]}\n{server_logs}"
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT * 3
    assert not any(a["cold_start"] for a in answers), "every user's features come from Redis"
    log = pd.concat([read_decisions(folder)[0] for folder in logs], ignore_index=True)
    assert len(log) == len(answers) and log["decision_id"].is_unique
    assert all(len(read_decisions(folder)[0]) > 0 for folder in logs), "both replicas decided"
    catalog = load_catalog(config.offers.catalog_path)
    cap = min(config.policy.max_per_7d, catalog.max_per_7d)
    sent = log[log[s.MESSAGE_ID] != s.CONTROL_ARM].groupby(s.USER_ID).size()
    assert sent.reindex(users, fill_value=0).tolist() == [cap] * USERS, "each user gets the cap, no more"
    check_contacts(log, cap)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_a_replica_over_http_withholds_while_its_redis_is_down_and_recovers_by_itself(
    tmp_path: Path, own_redis: tuple[int, list[subprocess.Popen[bytes]]]
) -> None:
    """The failure policy as a caller sees it: a real ``engage serve`` whose Redis (test-owned, on
    its own port) stops: /score still 200 with risk and the message it would send, nothing sent;
    /readyz 503 naming the store; both back by themselves when Redis returns."""
    from engage.online.base import UNAVAILABLE
    from engage.online.redis import RETRY_SECONDS

    port, processes = own_redis
    url = f"redis://127.0.0.1:{port}/0"
    _, config_path, env = _setup(tmp_path, url, "http:")
    base, process = _serve(config_path, tmp_path / "decisions", env, tmp_path / "serve.log", workers=1)
    try:
        try:
            wait_http(f"{base}/readyz", timeout=300, process=process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{(tmp_path / 'serve.log').read_text()[-4000:]}") from exc
        body = {"users": [{"user_id": "c0001"}], "explain": False}
        status, before = post(f"{base}/score", body)
        assert status == 200 and before["users"][0]["message"]["withheld"] is None, before
        stop_process(processes[0])
        status, during = post(f"{base}/score", {"users": [{"user_id": "c0002"}], "explain": False})
        deadline = time.monotonic() + 30
        ready = _get(f"{base}/readyz")
        while ready[0] == 200 and time.monotonic() < deadline:  # the watcher's ping sees it too
            time.sleep(0.3)
            ready = _get(f"{base}/readyz")
        processes.append(start_redis(port, tmp_path / "redis.log"))
        # the restarted server is empty: the feature rows go in again, as `engage online rebuild`
        # and `engage online load` would after a real loss
        _load(config_path, env, tmp_path / "snapshot.parquet")
        deadline = time.monotonic() + RETRY_SECONDS + 60
        back = _get(f"{base}/readyz")
        while back[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
            back = _get(f"{base}/readyz")
        status_after, after = post(f"{base}/score", {"users": [{"user_id": "c0003"}], "explain": False})
    finally:
        _stop(process)
    answer = during["users"][0] if status == 200 else {}
    assert status == 200, during
    assert answer["message"]["message_id"] == s.CONTROL_ARM and answer["message"]["withheld"] == UNAVAILABLE
    assert answer["churn_probability"] is not None
    assert ready[0] == 503 and "unavailable" in ready[1], ready
    assert back[0] == 200, back
    assert status_after == 200 and after["users"][0]["message"]["withheld"] is None, after
