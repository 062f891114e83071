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
from tests.integration.test_service import (
    REPO,
    Server,
    World,
    known_user,
    post,
    ready,
    start_server,
    stop_server,
)
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


# --- a timing champion: the Bento declares and packs it, and answers with send times -----------------
@dataclass
class TimedBento:
    tag: str
    timing: str
    config_path: Path
    """The served config: its snapshot carries the timing columns."""


@pytest.fixture(scope="module")
def timed_bento(world: World, tmp_path_factory: pytest.TempPathFactory) -> TimedBento:
    """Offers and timing champions registered next to the churn one (the offers model so that
    messages go out: only a sent message gets a send time), then ``engage build``; the snapshot gains
    the ``timing_*`` columns. Runs after the tests above (they assert the Bento without them)."""
    import bentoml
    import pandas as pd

    from engage import schemas as s
    from engage.datasets.simulate import simulate
    from engage.offers.catalog import load_catalog
    from engage.offers.training import fit_offers, offer_table
    from engage.scoring.champions import load_champions
    from engage.serving.service import build_bento
    from engage.timing.snapshot import scoring_counts, to_columns
    from engage.training.offers import train_offers
    from engage.training.timing import fit_timing, train_timing

    data = simulate(1_500, 120, seed=7)  # the world's data again, with its campaign log
    assert data.events.equals(world.events)
    small = world.config.model_copy(
        update={"offers": world.config.offers.model_copy(update={"n_estimators": 40})}
    )
    table = offer_table(data.events, data.exposures, small, users=data.users)
    fitted = fit_offers(table, small, load_catalog(small.offers.catalog_path), n_boot=20)
    assert train_offers(fitted, small).promoted

    timing = world.config.timing.model_copy(update={"holdout_days": 30})  # 90 days of history to fit on
    config = world.config.model_copy(update={"timing": timing})
    fit = fit_timing(world.events, config, users=world.users)
    assert train_timing(fit, config).promoted, "the first timing model must become champion"
    tag = build_bento(world.config, build_ctx=REPO, offline=True)
    packed = {m.tag.name: str(m.tag) for m in bentoml.bentos.get(tag).info.all_models}
    model = load_champions(world.config).timing
    assert model is not None
    ids = world.snapshot[s.USER_ID].astype(str).tolist()
    columns = to_columns(
        scoring_counts(model, world.events, world.as_of, timing, user_ids=ids, users=world.users).features(
            model
        )
    )
    snapshot = pd.concat([world.snapshot, columns.drop(s.USER_ID).to_pandas()], axis=1)
    root = tmp_path_factory.mktemp("bento-timed")
    snapshot.to_parquet(root / "snapshot.parquet")
    served = yaml.safe_load(world.config_path.read_text())
    served["serve"].update(
        workers=1,
        feature_snapshot_path=str(root / "snapshot.parquet"),
        decision_log_dir=str(root / "decisions"),
        feedback_log_dir=str(root / "feedback"),
    )
    (root / "config.yaml").write_text(yaml.safe_dump(served))
    return TimedBento(tag=tag, timing=packed.get(timing.model_name, ""), config_path=root / "config.yaml")


def test_a_timing_champion_is_declared_packed_and_pinned(world: World, timed_bento: TimedBento) -> None:
    import bentoml

    built = bentoml.bentos.get(timed_bento.tag)
    assert timed_bento.timing.startswith(f"{world.config.timing.model_name}:"), built.info.all_models
    assert built.info.args["timing_model"] == timed_bento.timing
    stored = bentoml.models.get(timed_bento.timing)
    assert stored.info.metadata["registered_version"] == "1"
    assert len(built.info.all_models) == 3, "churn, offers and timing"


def test_the_bento_with_timing_answers_with_the_send_time_of_the_registry_model(
    world: World, timed_bento: TimedBento, tmp_path: Path
) -> None:
    """``bentoml serve`` of the Bento alone (no MLflow): /score carries send_at, the same as the
    registry's timing champion gives for the same users and as_of."""
    import pandas as pd

    from engage.config import load_config
    from engage.scoring.champions import load_champions
    from engage.serving.engine import ScoringEngine
    from engage.serving.schemas import ScoreRequest

    users = [known_user(world, i) for i in range(40)]
    body = {"users": [{"user_id": u} for u in users], "as_of": world.as_of.isoformat()}
    drop = ("MLFLOW_TRACKING_URI", "ENGAGE_MODEL_SOURCE", "ENGAGE_API_TOKEN", "PYTHONPATH")
    env = {k: v for k, v in world.env.items() if k not in drop}
    env["ENGAGE_CONFIG"] = str(timed_bento.config_path)
    server = start_server(timed_bento.tag, env, tmp_path / "serve.log")
    try:
        ready(server)
        status, answer = post(f"{server.url}/score", body)
    finally:
        stop_server(server)
    assert status == 200, answer
    config = load_config(timed_bento.config_path)
    serve = config.serve.model_copy(update={"decision_log_dir": str(tmp_path / "log")})
    config = config.model_copy(update={"serve": serve})
    engine = ScoringEngine(config, load_champions(world.config), watch_seconds=None)
    try:
        expected = {a.user_id: a for a in engine.score(ScoreRequest.model_validate(body)).users}
    finally:
        engine.close()
    timed = 0
    for scored in answer["users"]:
        assert scored["model_versions"]["timing"] == f"{world.config.timing.model_name}/1"
        message, want = scored["message"], expected[scored["user_id"]].message
        assert message["message_id"] == want.message_id
        if want.send_at is None:
            assert message["send_at"] is None
            continue
        timed += 1
        assert pd.Timestamp(message["send_at"]) == pd.Timestamp(want.send_at)
        assert message["send_reason"] == want.send_reason
    assert timed >= 5, answer
    print(f"/score from the Bento with timing: {timed} of {len(users)} users with send_at")
