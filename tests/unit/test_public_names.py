"""Every subpackage declares its public names, and each declared name resolves."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "engage"
PACKAGES = sorted(
    "engage." + ".".join(init.parent.relative_to(SRC).parts) for init in SRC.rglob("*/__init__.py")
)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_subpackage_declares_names_that_resolve(package: str) -> None:
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    assert names, f"{package} declares no public names (__all__)"
    for name in names:
        value = getattr(module, name, None)
        if value is None:  # a public submodule
            value = importlib.import_module(f"{package}.{name}")
        assert value is not None, f"{package}.{name} is declared but does not resolve"


def test_an_undeclared_name_is_an_attribute_error() -> None:
    scoring = importlib.import_module("engage.scoring")
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        scoring.nothing_here  # noqa: B018
