"""The Bento as a BentoML user builds and runs it: a plain ``bentoml build``, then ``bentoml serve`` of
the built Bento alone (from a folder outside the repository, no MLflow), with two workers.

Reuses ``test_service``'s world (a champion churn model in a temp MLflow store, a snapshot). The
champion is imported into a temp Bento store; ``bentoml build`` packs the model the service declares
(pinned) and pyproject's dependencies (locked by uv from its cache: no index). The served Bento starts
without its snapshot: ``/readyz`` says why until the file appears.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import free_port, wait_http
from tests.integration.test_service import REPO, Server, World, known_user, post, stop_server
from tests.integration.test_service import world as world  # the module-scoped fixture
from tests.integration.test_service_chaos import cmdline, descendants

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENGAGE = Path(sys.executable).with_name("engage")
BUILD_HINT = "run `engage build` first"


@dataclass
class Built:
    tag: str
    champion: str
    seconds: float
    env: dict[str, str]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def bento(world: World) -> Built:
    """The champion in the temp Bento store, then ``bentoml build`` exactly as a user types it."""
    env = {**world.env, "UV_OFFLINE": "1"}
    # in a fresh process: BentoML fixes its store at first import, and an earlier test of the same
    # session may have imported it with another BENTOML_HOME
    code = (
        "import json, sys; from engage.config import load_config; "
        "from engage.serving.service import import_champions; "
        "print(json.dumps(import_champions(load_config(sys.argv[1]))))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code, str(world.config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    tags = json.loads(imported.stdout.strip().splitlines()[-1])
    tick = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    seconds = time.perf_counter() - tick
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    tag = next(line for line in run.stdout.splitlines() if line.startswith("__tag__:"))[8:].strip()
    print(f"bentoml build -> {tag} in {seconds:.1f} s")
    return Built(tag=tag, champion=tags["churn"], seconds=seconds, env=env)


@pytest.fixture(scope="module")
def served(world: World, bento: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``bentoml serve <tag>`` from an empty folder, 2 workers, the snapshot not written yet."""
    root = tmp_path_factory.mktemp("bento-served")
    config = yaml.safe_load(world.config_path.read_text())
    config["serve"].update(
        workers=2,
        feature_snapshot_path=str(root / "snapshot.parquet"),
        decision_log_dir=str(root / "decisions"),
        feedback_log_dir=str(root / "feedback"),
    )
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    drop = ("MLFLOW_TRACKING_URI", "ENGAGE_MODEL_SOURCE", "ENGAGE_API_TOKEN", "PYTHONPATH")
    env = {k: v for k, v in bento.env.items() if k not in drop}
    env["ENGAGE_CONFIG"] = str(root / "config.yaml")
    port = free_port()
    log = root / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", bento.tag, "--host", "127.0.0.1", "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        try:
            wait_http(f"{server.url}/livez", timeout=240, process=process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n--- server log ---\n{log.read_text()[-4000:]}") from exc
        yield server
    finally:
        stop_server(server)


def test_a_plain_build_packs_the_declared_model_pinned_and_locked_packages(bento: Built) -> None:
    import tomllib

    import bentoml

    built = bentoml.bentos.get(bento.tag)
    assert [str(m.tag) for m in built.info.all_models] == [bento.champion]
    assert ":latest" not in bento.champion
    lock = Path(built.path) / "env" / "python" / "requirements.txt"
    pins = {
        line.split("==")[0].lower(): line.split("==")[-1]
        for line in lock.read_text().splitlines()
        if line and not line.startswith(("#", "-"))
    }
    assert all("==" in line for line in lock.read_text().splitlines() if line and line[0].isalnum())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {re.match(r"[A-Za-z0-9_.\-]+", dep).group(0).lower() for dep in project["dependencies"]}  # type: ignore[union-attr]
    assert wanted <= set(pins), f"pyproject dependencies missing from the lock: {wanted - set(pins)}"
    assert "bentoml" in pins and len(pins) > len(wanted), "the lock holds the whole closure"
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bentofile["python"]["packages"] == project["dependencies"], "one package list: pyproject.toml"


def test_engage_build_pins_the_champion_and_the_tested_versions(world: World, bento: Built) -> None:
    """``engage build``: the champion's exact tag as the Bento argument, the lock at installed versions."""
    import importlib.metadata

    import bentoml

    from engage.serving.service import build_bento

    built = bentoml.bentos.get(build_bento(world.config, build_ctx=REPO, offline=True))
    assert built.info.args["churn_model"] == bento.champion
    assert [str(m.tag) for m in built.info.all_models] == [bento.champion]
    lock = (Path(built.path) / "env" / "python" / "requirements.txt").read_text().splitlines()
    for name in ("lightgbm", "scikit-learn", "polars", "mlflow"):
        assert f"{name}=={importlib.metadata.version(name)}" in lock


def test_the_served_bento_is_ready_only_with_its_snapshot_and_scores(world: World, served: Server) -> None:
    status, body = get(f"{served.url}/readyz")
    assert status == 503 and "snapshot" in body, body
    user = known_user(world)
    status, answer = post(f"{served.url}/score", {"users": [{"user_id": user}]})
    assert status == 200 and answer["users"][0]["cold_start"] is True, "no snapshot: a cold start"
    config = yaml.safe_load(Path(served.log.parent / "config.yaml").read_text())
    target = Path(config["serve"]["feature_snapshot_path"])
    world.snapshot.to_parquet(target.with_suffix(".tmp"))
    os.replace(target.with_suffix(".tmp"), target)
    deadline = time.monotonic() + 60
    ready = 0
    while ready < 6 and time.monotonic() < deadline:  # both workers' watchers load it (1 s ticks)
        ready = ready + 1 if get(f"{served.url}/readyz")[0] == 200 else 0
        time.sleep(0.5)
    assert ready >= 6, served.log.read_text()[-3000:]
    status, answer = post(f"{served.url}/score", {"users": [{"user_id": user}]})
    assert status == 200, answer
    scored = answer["users"][0]
    assert scored["cold_start"] is False
    assert scored["model_versions"] == {"churn": f"{world.config.tracking.churn_model_name}/1"}
    print(f"/score from the Bento alone: {scored['user_id']} p={scored['churn_probability']:.3f}")


def test_two_workers_answer(world: World, served: Server) -> None:
    workers = [p for p in descendants(served.process.pid) if "_bentoml_impl.worker" in cmdline(p)]
    assert len(workers) == 2, [cmdline(p) for p in workers]
    users = [known_user(world, i) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda u: post(f"{served.url}/score", {"users": [{"user_id": u}]}), users))
    assert all(status == 200 for status, _ in answers)
    ids = [body["users"][0]["decision_id"] for _, body in answers]
    assert len(set(ids)) == len(ids), "decision ids stay unique across workers"


@pytest.mark.parametrize("target", [[], ["--target", "engage:nope"]])
def test_engage_serve_without_a_build_stops_at_once(tmp_path: Path, target: list[str]) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "empty-home")}
    tick = time.perf_counter()
    run = subprocess.run(
        [str(ENGAGE), "serve", "--port", str(free_port()), *target],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    seconds = time.perf_counter() - tick
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert BUILD_HINT in output and "Traceback" not in output, output
    print(f"engage serve {' '.join(target)}: exit {run.returncode} after {seconds:.1f} s")
