"""MLflow at the edge: runs, params, metrics, plots, pyfunc models and the registry aliases.

The only module that imports mlflow. Everything else hands it plain Python objects.
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.pyfunc import PyFuncModel, PythonModel

Bundle: TypeAlias = ChurnBundle | OfferBundle
"""What is logged as a model: a fitted churn or offers bundle."""

CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_REQUIREMENTS = ("lightgbm", "scikit-learn", "pandas", "numpy", "scipy", "cloudpickle", "pyyaml")


def _telemetry_off() -> None:
    """Called before mlflow is first imported: telemetry off unless the user decided otherwise."""
    for key in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        os.environ.setdefault(key, "true")


def configure(uri: str) -> None:
    """Point tracking and the model registry at one store (SQLite file, server URL, ...)."""
    _telemetry_off()
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


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


def _requirements() -> list[str]:
    reqs = []
    for name in PYFUNC_REQUIREMENTS:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def _pyfunc(bundle: Bundle, method: str) -> PythonModel:
    """``bundle`` wrapped as an MLflow pyfunc whose ``predict`` calls ``method``."""
    _telemetry_off()
    from mlflow.pyfunc import PythonModel

    class EngagePyfunc(PythonModel):
        """Wraps an engage model bundle; ``predict`` returns what ``method`` returns (probabilities)."""

        def __init__(self, estimator: Bundle, method: str) -> None:
            self.estimator = estimator
            self.method = method

        def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> Any:
            result = getattr(self.estimator, self.method)(model_input)
            if self.method == "predict_proba":
                return np.asarray(result)[:, 1]
            return result

    return EngagePyfunc(bundle, method)


def log_model(
    estimator: Bundle,
    *,
    name: str,
    input_example: pd.DataFrame,
    method: str = "predict_proba",
    registered_model_name: str | None = None,
) -> tuple[str, str | None]:
    """Log ``estimator`` as a pyfunc whose ``predict`` calls ``method``; register it when named.

    Returns (model URI, registered version or None). The engage package travels with the model
    (``code_paths``) so it loads where engage is not installed.
    """
    _telemetry_off()
    from mlflow.models import infer_signature
    from mlflow.pyfunc import log_model as log_pyfunc

    wrapper = _pyfunc(estimator, method)
    output = wrapper.predict(None, input_example)
    signature = infer_signature(input_example, output)
    info = log_pyfunc(
        name=name,
        python_model=wrapper,
        signature=signature,
        input_example=input_example,
        pip_requirements=_requirements(),
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
    """The engage model bundle inside a pyfunc logged by :func:`log_model` (for reasons and policy)."""
    bundle = load_model(uri).unwrap_python_model().estimator
    if not isinstance(bundle, ChurnBundle | OfferBundle):
        raise TypeError(f"{uri} holds a {type(bundle).__name__}, not an engage model bundle")
    return bundle


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
