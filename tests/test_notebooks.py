"""The demo notebooks execute cleanly (so they cannot rot) and match their builder's sources."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (a dev dependency)")
pytest.importorskip("nbclient", reason="notebook tests need nbclient (a dev dependency)")

DEMOS = Path(__file__).parent.parent / "demos"
sys.path.insert(0, str(DEMOS))
import build_notebooks  # noqa: E402


@pytest.mark.parametrize("name", list(build_notebooks.NOTEBOOKS))
def test_notebook_executes(name):
    committed = nbformat.read(DEMOS / name, as_version=4)
    fresh = build_notebooks.build(name, build_notebooks.NOTEBOOKS[name])
    assert [c.source for c in committed.cells] == [c.source for c in fresh.cells], (
        "notebook is stale: run python demos/build_notebooks.py"
    )
    executed = build_notebooks.execute(fresh, DEMOS)  # raises CellExecutionError on any failing cell
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
