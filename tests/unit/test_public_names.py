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


@pytest.mark.parametrize("package", PACKAGES)
def test_package_names_stay_what_they_are_after_every_submodule_is_imported(package: str) -> None:
    """A submodule named like a function its package exports (``analytics.funnel``) replaces that
    function on the package once imported; each lazily exported name must stay the function."""
    import pkgutil
    import types

    module = importlib.import_module(package)
    exports = getattr(module, "_EXPORTS", {})
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")
    shadowed = [name for name in exports if isinstance(getattr(module, name), types.ModuleType)]
    assert not shadowed, f"{package}: {shadowed} name submodules as well as exported objects"
