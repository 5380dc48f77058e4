"""Every notebook runs end to end on the CPU, and is saved with its outputs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {"01_quickstart", "02_new_semiring", "03_long_sequences", "04_training"}

needs_jupyter = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("nbformat", "nbclient", "ipykernel")),
    reason="nbformat, nbclient and ipykernel are needed to run notebooks (pip install -e '.[dev]')")


def test_every_notebook_is_present():
    assert {p.stem for p in NOTEBOOKS} >= EXPECTED


@needs_jupyter
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_saved_with_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    unexecuted = [i for i, cell in enumerate(code) if cell.execution_count is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} were saved without running"
    errors = [o.get("ename") for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} was saved with errors: {errors}"


@needs_jupyter
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    """Execute a fresh copy (the saved file is not touched); a failing cell
    raises CellExecutionError with the cell's source and traceback."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
