"""The notebooks run top to bottom (offline, temporary MLflow store) and are stored without outputs.

Execution uses a kernel spec written for this interpreter (``sys.executable``), so the notebooks run
against the same venv as the tests, whatever other ``python3`` kernels the machine has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIME_LIMIT_S = 180
KERNEL = "engage-test-python"


def test_there_are_the_three_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01-explore-events.ipynb",
        "02-churn-model.ipynb",
        "03-next-best-offer.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(book.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts (clear them)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_imports_engage_and_uses_a_temporary_store(path: Path) -> None:
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert "from engage" in source or "import engage" in source, f"{path.name} does not import engage"
    assert "tempfile.mkdtemp" in source, f"{path.name} does not log to a temporary MLflow store"
    assert "sqlite:///mlflow.db" not in source, f"{path.name} points at the repo's MLflow store"


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A kernel spec that launches this very interpreter (the venv's), in a private folder."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(kernels / KERNEL, overrides={"display_name": "engage tests"})
    yield KernelSpecManager(kernel_dirs=[str(kernels)], allowed_kernelspecs={KERNEL})


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_under_three_minutes(path: Path, kernel_spec_manager: object) -> None:
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_spec_manager)
    started = time.perf_counter()
    # Any cell error raises CellExecutionError (with the cell and traceback) and fails the test.
    NotebookClient(
        book, km=km, timeout=TIME_LIMIT_S, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    ).execute()
    elapsed = time.perf_counter() - started
    print(f"{path.name}: {elapsed:.0f} s")
    assert elapsed < TIME_LIMIT_S, f"{path.name} took {elapsed:.0f} s (limit {TIME_LIMIT_S} s)"
    after = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    assert after == before, f"{path.name} left files in notebooks/: {sorted(set(after) - set(before))}"
