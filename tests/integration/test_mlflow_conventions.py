"""MLflow the way its users expect: the MLFLOW_* variables steer train and score, artifacts stay beside
the store, registered models are described and tagged, and each loads with ``mlflow.pyfunc`` alone,
also in a fresh virtualenv built only from the requirements logged with it (the slow test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from engage import tracking
from engage.cli import app
from engage.datasets.simulate import simulate, write_simulation
from engage.training.registry import DESCRIPTIONS

pytestmark = pytest.mark.integration

SETS = [
    "labels.min_churned=100",
    "labels.min_retained=100",
    "labels.every_days=14",
    "churn.n_estimators=60",
    "offers.n_estimators=40",
]
MODELS = {"churn": "engage-churn", "offers": "engage-offers"}


def _sets() -> list[str]:
    return [arg for item in SETS for arg in ("--set", item)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """train churn, train offers and score, steered by MLFLOW_TRACKING_URI/MLFLOW_EXPERIMENT_NAME alone."""
    import mlflow

    root = tmp_path_factory.mktemp("conventions")
    data = simulate(1_500, 120, seed=5)
    paths = write_simulation(data, root / "data")
    cwd, store = root / "cwd", root / "store"
    cwd.mkdir()
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "from-env"}
    before = os.getcwd(), mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    os.chdir(cwd)
    try:
        runner = CliRunner(env=env)
        common = ["--events", str(paths["events"]), "--users", str(paths["users"])]
        exposures = ["--exposures", str(paths["exposures"])]
        churn = runner.invoke(app, ["train", "churn", *common, *exposures, *_sets()])
        assert churn.exit_code == 0, churn.output
        offers = runner.invoke(app, ["train", "offers", *common, *exposures, *_sets()])
        assert offers.exit_code == 0, offers.output
        as_of = (data.events["ts"].max() - timedelta(days=10)).date().isoformat()
        scores = root / "scores.parquet"
        outputs = ["--out", str(scores), "--snapshot", str(root / "snapshot.parquet")]
        outputs += ["--decision-log", str(root / "decisions")]
        score = runner.invoke(app, ["score", *common, *exposures, "--as-of", as_of, *outputs, *_sets()])
        assert score.exit_code == 0, score.output
        left_in_cwd = sorted(p.name for p in cwd.iterdir())
    finally:
        os.chdir(before[0])
    tracking.configure(uri)
    yield {"root": root, "uri": uri, "store": store, "scores": scores, "left_in_cwd": left_in_cwd}
    variables = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(before[1])
    mlflow.set_registry_uri(before[2])
    for name, value in variables.items():  # MLflow 3 writes both into os.environ: keep them from later tests
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_the_environment_variables_steer_train_and_score_and_artifacts_stay_beside_the_store(
    trained: dict,
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("from-env")
    assert experiment is not None, "MLFLOW_EXPERIMENT_NAME was not honoured"
    assert experiment.artifact_location == (trained["store"] / "mlartifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags["engage.model"] for r in runs} == {"churn", "offers"}
    assert trained["left_in_cwd"] == [], "nothing (no ./mlruns) may land in the working folder"
    assert list((trained["store"] / "mlartifacts").rglob("state.json"))
    scores = pd.read_parquet(trained["scores"])
    assert len(scores) > 0 and scores["churn_probability"].between(0, 1).all()


def test_registered_versions_are_described_and_tagged_and_the_data_is_a_logged_input(trained: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for kind, name in MODELS.items():
        model = client.get_registered_model(name)
        assert model.description == DESCRIPTIONS[kind]
        version = client.get_model_version(name, "1")
        run = client.get_run(version.run_id)
        assert version.description and run.info.run_name in version.description
        assert version.tags["engage.model"] == kind
        assert version.tags["data.sha256"] == run.data.params["data.sha256"] == model.tags["data.sha256"]
        metric = "oot_auc" if kind == "churn" else "policy_value_dr"
        assert float(version.tags[f"metric.{metric}"]) == pytest.approx(run.data.metrics[metric], rel=1e-5)
        inputs = run.inputs.dataset_inputs
        assert [i.dataset.digest for i in inputs] == [run.data.params["data.sha256"]]
    offers_run = client.get_run(client.get_model_version(MODELS["offers"], "1").run_id)
    plots = {a.path for a in client.list_artifacts(offers_run.info.run_id, "plots")}
    assert {"plots/qini.png", "plots/policy_values.png"} <= plots


def _example(model_dir: Path) -> pd.DataFrame:
    from mlflow.models import Model

    example = Model.load(str(model_dir)).load_input_example(str(model_dir))
    assert isinstance(example, pd.DataFrame) and len(example) > 0
    return example


def _download(name: str, into: Path) -> Path:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    into.mkdir(parents=True, exist_ok=True)
    return Path(get_artifact_repository(f"models:/{name}/1").download_artifacts("", dst_path=str(into)))


def test_each_model_loads_with_mlflow_pyfunc_and_answers_what_engage_answers(
    trained: dict, tmp_path: Path
) -> None:
    import mlflow

    for kind, name in MODELS.items():
        folder = _download(name, tmp_path / kind)
        assert not list(folder.rglob("*.pkl")), "no pickled engage objects in a logged model"
        requirements = (folder / "requirements.txt").read_text()
        assert "polars==" in requirements and "lightgbm==" in requirements
        example = _example(folder)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/1")
        bundle = tracking.load_estimator(f"models:/{name}/1")
        method = "predict_proba" if kind == "churn" else "predict_outcomes"
        np.testing.assert_allclose(
            np.asarray(pyfunc.predict(example), dtype=float),
            np.asarray(tracking.predict_with(bundle, method, example), dtype=float),
        )


CLEAN_SCRIPT = """
import importlib.util, json, sys, time
assert importlib.util.find_spec("engage") is None, "engage is installed in the clean environment"
import mlflow
from mlflow.models import Model
folder = sys.argv[1]
started = time.perf_counter()
model = mlflow.pyfunc.load_model(folder)
loaded = time.perf_counter() - started
example = Model.load(folder).load_input_example(folder)
answer = model.predict(example)
values = answer.to_numpy().tolist() if hasattr(answer, "to_numpy") else list(map(float, answer))
print(json.dumps({"load_s": loaded, "predictions": values}))
"""


def _uv() -> str | None:
    beside = Path(sys.executable).with_name("uv")
    return str(beside) if beside.exists() else shutil.which("uv")


@pytest.mark.slow
def test_each_model_loads_in_a_fresh_virtualenv_built_from_its_logged_requirements_offline(
    trained: dict, tmp_path: Path
) -> None:
    """``uv venv`` + ``uv pip install --offline -r requirements.txt`` (the model's), then load + predict.

    Offline, uv resolves only from its cache, which holds the versions this environment was built
    with; its newest cached index may list later transitive versions it never downloaded, so the
    install is constrained (``-c``, not ``-r``) to this environment's versions. What gets installed
    is decided by the model's requirements alone; engage itself is not among them.
    """
    uv = _uv()
    if uv is None:
        pytest.skip("uv is not installed")
    constraints = tmp_path / "constraints.txt"
    frozen = subprocess.run(
        [uv, "pip", "freeze", "--python", sys.executable], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    constraints.write_text(
        "\n".join(line for line in frozen if not line.startswith(("-e", "engage")) and " @ " not in line)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "MLFLOW_"))}
    for kind, name in MODELS.items():
        folder = _download(name, tmp_path / kind)
        venv = tmp_path / f"venv-{kind}"
        files = ["-r", str(folder / "requirements.txt"), "-c", str(constraints)]
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
        install = subprocess.run(
            [uv, "pip", "install", "--offline", "-q", "--python", str(venv / "bin" / "python"), *files],
            capture_output=True,
            text=True,
            env=env,
        )
        assert install.returncode == 0, f"offline install of {name}'s requirements failed:\n{install.stderr}"
        started = time.perf_counter()
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-I", "-c", CLEAN_SCRIPT, str(folder)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        bundle = tracking.load_estimator(f"models:/{name}/1")
        method = "predict_proba" if kind == "churn" else "predict_outcomes"
        expected = np.asarray(tracking.predict_with(bundle, method, _example(folder)), dtype=float)
        np.testing.assert_allclose(np.asarray(answer["predictions"], dtype=float), expected)
        print(
            f"{name}: clean venv load {answer['load_s']:.2f} s, "
            f"process {time.perf_counter() - started:.1f} s, {len(expected)} rows predicted"
        )
