"""The example notebook is current, small, stored with outputs, and runs without error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "mixed_workflow.ipynb"
GENERATOR = ROOT / "examples" / "make_mixed_workflow.py"

_NEEDED = ("nbformat", "nbclient", "ipykernel")
_MISSING = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"{', '.join(_MISSING)} not installed: pip install '.[test]' installs them",
)


def _generator():
    spec = importlib.util.spec_from_file_location("make_mixed_workflow", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_generated_by_the_committed_script():
    """Cells of the stored notebook are exactly the generator's (no hand edits)."""
    stored = _read()
    fresh = _generator().build()
    assert [(c.cell_type, c.source) for c in stored.cells] == [
        (c.cell_type, c.source) for c in fresh.cells
    ], "run: python examples/make_mixed_workflow.py"


def test_notebook_is_stored_with_outputs_and_small():
    nb = _read()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs for c in code), "stored without outputs"
    assert all(c.execution_count for c in code), "not fully executed"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert NOTEBOOK.stat().st_size < 1_000_000


def test_notebook_executes_without_error(tmp_path):
    """Run every cell in a fresh ``python3`` kernel, in a temporary folder."""
    from nbclient import NotebookClient

    nb = _read()
    gen = _generator()
    client = NotebookClient(
        nb,
        kernel_name=gen.KERNEL,
        timeout=gen.TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    assert (tmp_path / "mixed_workflow.h5").is_file()
    assert not (ROOT / "examples" / "mixed_workflow.h5").exists()
