"""MLflow at the edge: runs, params, metrics, plots, datasets, models and the registry.

The only module that imports mlflow (with ``engage.pyfunc_model``, the file MLflow itself runs to
load a model). Everything else hands it plain Python objects. Models are logged "from code": the
bundle as ``state.json`` plus LightGBM text files (``engage.models.persist``), no pickle.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd
import yaml

from engage.config import EngageConfig
from engage.models.bundle import ChurnBundle, OfferBundle
from engage.models.persist import BundleParts, from_parts, to_parts
from engage.timing.sendtime import TimingModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.pyfunc import PyFuncModel

Bundle: TypeAlias = ChurnBundle | OfferBundle | TimingModel
"""What is logged as a model: a fitted churn or offers bundle, or the timing model."""

CHAMPION = "champion"
CHALLENGER = "challenger"
STATE_FILE = "state.json"
"""The bundle's JSON state among a logged model's artifacts (next to its ``booster_<n>.txt`` files)."""
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
"""The "model from code" file MLflow runs to load every engage model."""


def _telemetry_off() -> None:
    """Called before mlflow is first imported: telemetry off unless the user decided otherwise."""
    for key in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        os.environ.setdefault(key, "true")


def configure(uri: str) -> None:
    """Point tracking at ``uri`` (SQLite file, server URL, ``databricks``...) and the registry too.

    ``uri`` is ``tracking.uri`` as the config resolved it (flag or --set, else ``MLFLOW_TRACKING_URI``,
    else the config file). The registry follows it unless ``MLFLOW_REGISTRY_URI`` names another one.
    """
    _telemetry_off()
    import mlflow

    variables = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in variables}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"] or uri)
    # MLflow 3 also writes the URIs into os.environ; engage never changes the user's environment
    # (the variable outranks the config file, so a later load_config would read this run's store)
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: ``mlartifacts`` beside the file.

    MLflow's own default for a database store is ``./mlruns`` in whatever folder the command ran
    from; this keeps a store and its artifacts together (the demo's stay under ``demo/``). None for
    other stores, whose server or workspace decides.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:":
        return None
    database = Path(uri.removeprefix(prefix).split("?")[0])
    return (database.resolve().parent / "mlartifacts").as_uri()


def code_version(cwd: Path | None = None) -> str:
    """The git commit of the working tree (with '-dirty' when it has changes), else 'unknown'."""
    from engage import __version__

    where = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"engage-{__version__}"
    return commit + ("-dirty" if dirty else "")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


@contextmanager
def run(experiment: str, run_name: str, *, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start a run in ``experiment`` (created when missing) and yield its id."""
    _telemetry_off()
    import mlflow

    if mlflow.get_experiment_by_name(experiment) is None:
        location = artifact_location(mlflow.get_tracking_uri())
        if location is not None:
            mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {})) as active:
        yield active.info.run_id


def log_config(config: EngageConfig) -> None:
    """Every setting as a param, and the full config as a YAML artifact."""
    _telemetry_off()
    import mlflow

    tree = config.model_dump(mode="json")
    mlflow.log_params({k: str(v)[:500] for k, v in flatten(tree).items()})
    mlflow.log_text(yaml.safe_dump(tree, sort_keys=False), "config.yaml")


def log_fingerprint(fingerprint: Mapping[str, Any], prefix: str = "data") -> None:
    """Rows, users, time range and content hash of the training data, as params."""
    _telemetry_off()
    import mlflow

    mlflow.log_params({f"{prefix}.{k}": str(v) for k, v in fingerprint.items()})


def log_metrics(metrics: Mapping[str, float]) -> None:
    clean = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    _telemetry_off()
    import mlflow

    mlflow.log_metrics(clean)


def log_figures(figures: Mapping[str, Figure], folder: str = "plots") -> None:
    """Matplotlib figures as PNG artifacts."""
    _telemetry_off()
    import mlflow

    for name, figure in figures.items():
        mlflow.log_figure(figure, f"{folder}/{name}.png")


def log_frame(frame: pd.DataFrame, artifact_file: str) -> None:
    """A table as a CSV artifact (readable in the MLflow UI)."""
    _telemetry_off()
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        frame.to_csv(path, index=False)
        folder = str(Path(artifact_file).parent)
        mlflow.log_artifact(str(path), artifact_path=None if folder == "." else folder)


def log_file(path: str | Path, folder: str | None = None) -> None:
    """A file (an HTML page, a JSON summary) as an artifact of the active run."""
    _telemetry_off()
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=folder)


def set_tags(tags: Mapping[str, str]) -> None:
    _telemetry_off()
    import mlflow

    mlflow.set_tags(dict(tags))


def log_dataset(
    frame: pd.DataFrame,
    *,
    name: str,
    source: str | None,
    digest: str | None = None,
    context: str = "training",
) -> None:
    """The run's input table as an MLflow dataset: schema and row count, ``source`` and ``digest``.

    ``digest`` is the data fingerprint engage already computes (``events.fingerprint``), so the
    dataset shown in the UI and the ``data.sha256`` param name the same content. ``source`` is the
    path or URI the table came from; None for a table engage built (the code version stands in).
    """
    _telemetry_off()
    import warnings

    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.pandas_dataset import from_pandas

    where: Any = source if source else CodeDatasetSource({"engage.code_version": code_version()})
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local path either way
        warnings.simplefilter("ignore", UserWarning)
        dataset = from_pandas(frame, source=where, name=name, digest=digest)
    mlflow.log_input(dataset, context=context)


def describe_model(
    model_name: str, version: str, *, model: str, version_text: str, tags: Mapping[str, str]
) -> None:
    """Descriptions of the registered model and of one version, and tags on both."""
    _telemetry_off()
    from mlflow import MlflowClient

    client = MlflowClient()
    client.update_registered_model(model_name, description=model)
    client.update_model_version(model_name, version, description=version_text)
    for key, value in tags.items():
        client.set_registered_model_tag(model_name, key, value)
        client.set_model_version_tag(model_name, version, key, value)


def requirements() -> list[str]:
    """engage's own dependencies (its package metadata, extras left out), pinned to what is installed.

    The logged model imports engage from its ``code`` folder, so it needs what engage needs: read
    from the package, never a second hand-kept list (polars included).
    """
    from packaging.requirements import Requirement

    pinned = []
    for line in metadata.requires("engage") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        try:
            pinned.append(f"{requirement.name}=={metadata.version(requirement.name)}")
        except metadata.PackageNotFoundError:
            pinned.append(str(requirement))
    return pinned


def write_bundle(bundle: Bundle, folder: Path) -> dict[str, str]:
    """``state.json`` and the booster files of ``bundle`` in ``folder``: artifact name -> path."""
    parts = to_parts(bundle)
    artifacts = {Path(STATE_FILE).stem: folder / STATE_FILE}
    (folder / STATE_FILE).write_text(json.dumps(parts.state))
    for file_name, text in parts.boosters.items():
        (folder / file_name).write_text(text)
        artifacts[Path(file_name).stem] = folder / file_name
    return {key: str(path) for key, path in artifacts.items()}


def read_bundle(artifacts: Mapping[str, str]) -> Bundle:
    """The bundle :func:`write_bundle` wrote, from its artifact paths (what ``context.artifacts`` holds)."""
    state_path = Path(artifacts[Path(STATE_FILE).stem])
    boosters = {
        Path(path).name: Path(path).read_text()
        for key, path in artifacts.items()
        if key != Path(STATE_FILE).stem
    }
    bundle = from_parts(BundleParts(state=json.loads(state_path.read_text()), boosters=boosters))
    if not isinstance(bundle, ChurnBundle | OfferBundle | TimingModel):
        raise TypeError(f"{state_path} holds a {type(bundle).__name__}, not an engage model bundle")
    return bundle


def predict_with(bundle: Bundle, method: str, frame: pd.DataFrame) -> Any:
    """What a logged model's ``predict`` answers: ``method`` of the bundle (``predict_proba``: column 1)."""
    result = getattr(bundle, method)(frame)
    if method == "predict_proba":
        return np.asarray(result)[:, 1]
    return result


def log_model(
    estimator: Bundle,
    *,
    name: str,
    input_example: pd.DataFrame,
    method: str = "predict_proba",
    registered_model_name: str | None = None,
) -> tuple[str, str | None]:
    """Log ``estimator`` as a model from code whose ``predict`` calls ``method``; register it when named.

    Returns (model URI, registered version or None). The bundle travels as files (``state.json``,
    ``booster_<n>.txt``), engage's source as ``code_paths`` and its dependencies as requirements,
    so the model loads with ``mlflow.pyfunc.load_model`` where engage is not installed.
    """
    _telemetry_off()
    from mlflow.models import infer_signature
    from mlflow.pyfunc import log_model as log_pyfunc

    signature = infer_signature(input_example, predict_with(estimator, method, input_example))
    with tempfile.TemporaryDirectory() as tmp:
        info = log_pyfunc(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts=write_bundle(estimator, Path(tmp)),
            model_config={"method": method},
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements(),
            code_paths=[str(Path(__file__).resolve().parent)],
            registered_model_name=registered_model_name,
        )
    version = str(info.registered_model_version) if registered_model_name else None
    return info.model_uri, version


def set_alias(model_name: str, alias: str, version: str) -> None:
    _telemetry_off()
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(model_name, alias, version)


def alias_version(model_name: str, alias: str) -> str | None:
    """The version number behind ``models:/name@alias``, or None when it does not exist."""
    _telemetry_off()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def load_model(uri: str) -> PyFuncModel:
    """A pyfunc model from any MLflow URI (``models:/engage-churn@champion``, ``runs:/...``)."""
    _telemetry_off()
    from mlflow.pyfunc import load_model as load_pyfunc

    return load_pyfunc(uri)


def load_estimator(uri: str) -> Bundle:
    """The engage bundle of a logged model (``models:/...``, ``runs:/...`` or a model folder).

    Reads ``state.json`` and the booster files directly, the same function the model's own pyfunc
    calls, without running the model's code. A model logged before that format (a pickled
    ``EngagePyfunc``) is still read through its pyfunc, so an old champion can be judged and replaced.
    """
    _telemetry_off()
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if Path(uri).is_dir():
        return _read_model_files(Path(uri) / "artifacts", uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:  # the bundle's files only, not the model's copy of engage's code
            files = Path(get_artifact_repository(uri).download_artifacts("artifacts", dst_path=tmp))
        except (MlflowException, OSError):
            files = Path(tmp) / "none"
        return _read_model_files(files, uri)


def _read_model_files(files: Path, uri: str) -> Bundle:
    if not (files / STATE_FILE).is_file():
        legacy = load_model(uri).unwrap_python_model().estimator
        if not isinstance(legacy, ChurnBundle | OfferBundle | TimingModel):
            raise TypeError(f"{uri} holds a {type(legacy).__name__}, not an engage model bundle")
        return legacy
    return read_bundle({path.stem: str(path) for path in files.iterdir() if path.is_file()})


def run_metrics(model_name: str, alias: str) -> dict[str, float]:
    """Metrics of the run that produced ``models:/name@alias`` (empty when no such alias)."""
    _telemetry_off()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return {}
    if not version.run_id:
        return {}
    return dict(client.get_run(version.run_id).data.metrics)
