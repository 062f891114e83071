"""Imports point down the layers of DESIGN.md; heavy edge libraries stay at their edge module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "engage"

# Lower number = lower layer. A module may import its own layer or any layer below it.
LAYERS: dict[str, int] = {
    "engage": 0,
    "engage.schemas": 0,
    "engage.config": 0,
    "engage.hashing": 0,
    "engage.exports": 0,
    "engage.atomic": 0,
    "engage.events": 1,
    "engage.datasets": 1,
    "engage.offers.rules": 1,
    "engage.features": 2,
    "engage.offers.catalog": 2,  # reads the standard feature names (features.spec) to check templates
    "engage.offers.templates": 2,
    "engage.labels": 2,
    "engage.analytics": 2,
    "engage.audiences": 2,  # split (pure) and files; the webhook is the HTTP edge
    "engage.offers.outcomes": 2,
    "engage.timing": 2,  # timing features and the send-time model: pure, below the policy
    "engage.models": 3,
    "engage.explain": 3,
    "engage.offers.policy": 4,
    "engage.offers.evaluation": 4,
    "engage.evaluation": 4,
    "engage.evaluation.drift": 4,
    "engage.plots": 4,
    "engage.plots.monitor": 4,
    "engage.report": 4,
    "engage.loop_report": 4,
    "engage.offers.training": 4,
    "engage.offers": 4,
    "engage.tracking": 5,
    "engage.pyfunc_model": 5,  # the "model from code" file MLflow runs to load a model (beside tracking)
    "engage.training": 5,
    "engage.scoring": 5,
    "engage.serving.schemas": 5,
    "engage.scoring.job": 6,
    "engage.spark": 6,
    "engage.serving": 6,
    "engage.serving.settings": 6,
    "engage.serving.snapshot": 6,
    "engage.serving.history": 6,
    "engage.serving.inline": 6,
    "engage.serving.feedback": 6,
    "engage.serving.engine": 6,
    "engage.serving.auth": 6,
    "engage.serving.service": 6,
    "engage.serving.process": 6,
    "engage.online": 6,  # the online store: base and local beside serving.history, redis the edge
    "engage.audiences.webhook": 6,
    "engage.cli": 7,
}
EDGE_ONLY = {
    # engage.pyfunc_model: MLflow loads a model by running that file, which must subclass PythonModel
    # and call mlflow.models.set_model; nothing in engage imports it.
    "mlflow": {"engage.tracking", "engage.pyfunc_model"},
    "bentoml": {"engage.serving.service"},
    "pyspark": {"engage.spark"},
    "redis": {"engage.online.redis"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = max((key for key in LAYERS if module == key or module.startswith(key + ".")), key=len)
    return LAYERS[best]


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names if node.module == "engage"]
    return names


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_every_module_has_a_layer(path: Path) -> None:
    module = _module_name(path)
    assert (
        any(module == k or module.startswith(k + ".") for k in LAYERS if k != "engage") or module == "engage"
    ), f"{module} is not placed in a layer: add it to LAYERS in {__file__}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down(path: Path) -> None:
    module = _module_name(path)
    own = _layer(module)
    for name in _imports(path):
        if name.startswith("engage.") and name != "engage":
            assert _layer(name) <= own, f"{module} (layer {own}) imports {name} (layer {_layer(name)})"
        root = name.split(".")[0]
        if root in EDGE_ONLY:
            allowed = EDGE_ONLY[root]
            inside = any(module == edge or module.startswith(edge + ".") for edge in allowed)
            assert inside, f"{module} imports {root}; only {allowed} (and their submodules) may"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from engage.cli import app\nimport mlflow\n")
    names = _imports(bad)
    assert _layer("engage.features.spec") < max(_layer(n) for n in names if n.startswith("engage."))
    assert "mlflow" in names
