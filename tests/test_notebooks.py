"""The notebooks run top to bottom in a real Jupyter kernel (nbclient), in their small
version (HAILAN_NOTEBOOK_QUICK=1), and are committed without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_every_notebook_is_tested():
    assert {p.name for p in NOTEBOOKS} >= {"capacity-planning.ipynb", "breaker-sweep.ipynb", "findings.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_kernel(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        assert not cell.get("outputs") and not cell.get("execution_count"), "commit notebooks without outputs"
    monkeypatch.setenv("HAILAN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("HAILAN_NOTEBOOK_WORKERS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError with the cell's traceback on any failure
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    if path.name == "breaker-sweep.ipynb":
        assert "seed profile's breaker : " in text and "sliding-window breaker : " in text
    if path.name == "findings.ipynb":
        assert "VIOLATED" in text
