"""The notebooks run top to bottom (offline, temporary MLflow store) and are stored without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_the_three_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01-explore-events.ipynb",
        "02-churn-model.ipynb",
        "03-next-best-offer.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_under_three_minutes(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(
        book, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    elapsed = time.perf_counter() - started
    print(f"{path.name}: {elapsed:.0f} s")
    assert elapsed < 180
