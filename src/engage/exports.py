"""Lazy public names for subpackages whose modules sit on different layers.

``engage.scoring`` holds the pure scoring core and the batch job; importing one of its modules must
not import the others (and their heavy libraries). A package declares its public names once, as
``name -> submodule``, and gets PEP 562 ``__getattr__``/``__dir__`` that import on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` exporting ``name`` from ``package.<submodule>``."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
