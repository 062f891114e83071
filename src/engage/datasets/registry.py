"""Registry of real-data adapters, keyed by the name ``engage import NAME PATH`` takes.

Event adapters return an ``events.ValidationResult`` (accepted events + quarantine); table
adapters return a pandas DataFrame (the Hillstrom campaign table). ``EVENT_ADAPTERS`` tells the
CLI which is which, so it knows whether to write events plus a quarantine or a single table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeAlias

import pandas as pd

from engage.datasets.cdnow import load_cdnow
from engage.datasets.hillstrom import load_hillstrom
from engage.datasets.online_retail_ii import load_online_retail_ii
from engage.events import ValidationResult

Adapter: TypeAlias = Callable[[str | Path], ValidationResult | pd.DataFrame]

ADAPTERS: Final[dict[str, Adapter]] = {
    "online-retail-ii": load_online_retail_ii,
    "cdnow": load_cdnow,
    "hillstrom": load_hillstrom,
}
EVENT_ADAPTERS: Final[frozenset[str]] = frozenset({"online-retail-ii", "cdnow"})
TABLE_ADAPTERS: Final[frozenset[str]] = frozenset({"hillstrom"})


def get_adapter(name: str) -> Adapter:
    """The adapter for ``name``, or a ValueError listing the known names."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None
