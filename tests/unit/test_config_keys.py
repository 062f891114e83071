"""The config tells the truth: every leaf key of ``EngageConfig`` is read by ``src/engage``.

A read is an attribute access on a config object outside ``config.py``, found in the syntax tree:
``cfg.labels.horizon_days``, or ``cc.n_estimators`` where ``cc = config.churn``, or ``config.windows``
inside a function whose ``config`` argument is annotated ``FeatureConfig``. A key written only as a
``--set``/flag override (``"simulate.users": users``) is not a read.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pydantic import BaseModel

from engage.config import EngageConfig
from engage.models.churn import ChurnModel

SRC = Path(__file__).resolve().parents[2] / "src" / "engage"
Key = tuple[str, ...]
ROOT_NAMES = {"config", "cfg"}
"""Unannotated names that hold the whole ``EngageConfig`` (``cfg = build_config(...)``)."""


def _tree(model: type[BaseModel], prefix: Key = ()) -> tuple[set[Key], dict[str, Key]]:
    """Leaf keys, and the key path of every config class (``FeatureConfig`` -> ("features",))."""
    leaves: set[Key] = set()
    classes = {model.__name__: prefix}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sub_leaves, sub_classes = _tree(annotation, (*prefix, name))
            leaves |= sub_leaves
            classes |= sub_classes
        else:
            leaves.add((*prefix, name))
    return leaves, classes


LEAVES, CLASSES = _tree(EngageConfig)
SECTIONS = set(CLASSES.values())


class _Reads(ast.NodeVisitor):
    """Collects the config keys one module reads."""

    def __init__(self) -> None:
        self.aliases: dict[str, Key] = {}
        self.reads: set[Key] = set()

    def path(self, node: ast.expr) -> Key | None:
        """The config section an expression holds, if it holds one."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, () if node.id in ROOT_NAMES else None)
        if isinstance(node, ast.Attribute):
            inner = self.path(node.value)
            if inner is not None and (*inner, node.attr) in SECTIONS:
                return (*inner, node.attr)
            if inner is None and node.attr in ROOT_NAMES:  # self.config, settings.cfg
                return ()
        return None

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        """Arguments annotated with a config class hold that section, inside this function only."""
        outer = dict(self.aliases)
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            self.aliases.pop(arg.arg, None)
            text = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            for cls, key in CLASSES.items():
                if re.search(rf"\b{cls}\b", text):
                    self.aliases[arg.arg] = key
        self.generic_visit(node)
        self.aliases = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        key = self.path(node.value)
        if key is not None:
            self.aliases |= {t.id: key for t in node.targets if isinstance(t, ast.Name)}
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        key = self.path(node.value)
        if key is not None:
            self.reads.add((*key, node.attr))
        self.generic_visit(node)


def _reads(source: str) -> set[Key]:
    visitor = _Reads()
    tree = ast.parse(source)
    for _ in range(2):  # twice: aliases bound late in a module are known on the second pass
        visitor.visit(tree)
    return visitor.reads


def _read_keys() -> set[Key]:
    reads: set[Key] = set()
    for path in SRC.rglob("*.py"):
        if path.name != "config.py":
            reads |= _reads(path.read_text())
    # ChurnModel.from_config reads every churn field named like a ChurnModel parameter, by name.
    reads |= {("churn", name) for name in ChurnModel().get_params() if ("churn", name) in LEAVES}
    return reads


def test_the_finder_sees_reads_through_aliases_and_annotations() -> None:
    code = (
        "def f(cfg, config: FeatureConfig, other: Any):\n"
        "    cc = cfg.churn\n"
        "    return cfg.labels.horizon_days, cc.n_estimators, config.windows, other.engine\n"
        "def g(config: Any):\n"
        "    return config.seed\n"
        "overrides = {'simulate.users': 5}\n"
    )
    reads = _reads(code)
    assert reads >= {
        ("labels", "horizon_days"),
        ("churn", "n_estimators"),
        ("features", "windows"),
        ("seed",),
    }
    assert not reads & {("features", "engine"), ("simulate", "users"), ("features", "seed")}


def test_every_config_key_is_read_by_src() -> None:
    unread = sorted(".".join(k) for k in LEAVES - _read_keys())
    assert not unread, f"config keys that nothing in src/engage reads: {unread} (use them or remove them)"
