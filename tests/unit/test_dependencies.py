"""Dependencies mean something: every declared runtime dependency is imported by ``src/engage``,
every third-party import is declared, and a batch-only install (no ``[serve]``, no ``[spark]``)
imports every module but the two edge modules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "engage"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
IMPORT_NAMES = {"scikit-learn": "sklearn", "pyyaml": "yaml"}
"""Distribution name -> import name, where they differ."""
EXTRAS_IN_SRC = ("serve", "spark")
"""Extras that add a runtime capability (``dev`` only adds tools)."""


def _distribution(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.\-]+", requirement)
    assert match, requirement
    return match.group(0).lower()


def _import_name(requirement: str) -> str:
    name = _distribution(requirement)
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def _imported_top_levels() -> set[str]:
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_every_runtime_dependency_is_imported_by_src() -> None:
    imported = _imported_top_levels()
    declared = [*PROJECT["dependencies"]]
    for extra in EXTRAS_IN_SRC:
        declared += [r for r in PROJECT["optional-dependencies"][extra] if not r.startswith("engage")]
    unused = sorted(_distribution(r) for r in declared if _import_name(r) not in imported)
    assert not unused, f"declared but imported nowhere in src/engage: {unused} (remove, or move to [dev])"


def test_every_third_party_import_of_src_is_declared() -> None:
    declared = {_import_name(r) for r in PROJECT["dependencies"]}
    for extra in EXTRAS_IN_SRC:
        declared |= {_import_name(r) for r in PROJECT["optional-dependencies"][extra]}
    third_party = _imported_top_levels() - set(sys.stdlib_module_names) - {"engage", "__future__"}
    assert third_party - declared == set(), "imported by src/engage but not declared in pyproject.toml"


def test_serving_and_spark_are_extras_that_dev_installs() -> None:
    runtime = {_distribution(r) for r in PROJECT["dependencies"]}
    extras = PROJECT["optional-dependencies"]
    assert {"bentoml", "pyspark"}.isdisjoint(runtime)
    assert {_distribution(r) for r in extras["serve"]} == {"bentoml", "prometheus-client"}
    assert {_distribution(r) for r in extras["spark"]} == {"pyspark"}
    assert "engage[serve,spark,postgres]" in extras["dev"]  # make demo / make test install .[dev]


def test_a_batch_only_install_imports_everything_but_the_edges(tmp_path: Path) -> None:
    """With bentoml and pyspark absent, every module except serving.service and spark imports."""
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['bentoml'] = None\n"  # `import bentoml` now raises ImportError
        "sys.modules['pyspark'] = None\n"
        "import engage\n"
        "for m in pkgutil.walk_packages(engage.__path__, 'engage.'):\n"
        "    if m.name not in ('engage.serving.service', 'engage.spark'):\n"
        "        importlib.import_module(m.name)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=300)


def test_the_bento_packs_pyprojects_dependencies() -> None:
    """bentofile.yaml (the Bento's build config, required at the top level) lists the packages
    ``pyproject.toml`` declares, in the same order: one list, copied, never edited on its own."""
    import yaml

    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["packages"] == PROJECT["dependencies"]
    assert bentofile["service"] == "engage.serving.service:EngageService"
    assert bentofile["python"]["lock_packages"] is True
