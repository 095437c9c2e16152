"""The demo notebooks: committed without outputs, in sync with demos/build.py, and they run.

Each notebook is executed top to bottom with nbclient in a kernel started on *this* Python
(a kernelspec written into a temporary ``JUPYTER_PATH`` whose argv is ``sys.executable``, so
the venv's tvlens is the one imported, whatever kernels the machine has installed). The
kernel's working directory is a temporary folder, so the runs the notebooks write land there.
``HF_HUB_OFFLINE=1`` makes the LLM notebook take its documented fallback (a tiny local
checkpoint) at once instead of waiting on the network.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
DEMOS = ROOT / "demos"
NOTEBOOKS = sorted(DEMOS.glob("*.ipynb"))
KERNEL = "tvlens-test"
CELL_TIMEOUT_S = 300
_timings: dict[str, float] = {}


def _build_module():
    spec = importlib.util.spec_from_file_location("demos_build", DEMOS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_notebooks_committed_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_two_modes_dice.ipynb",
        "02_patching_and_steering.ipynb",
        "03_llm_task_vectors.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, f"{path.name} has no code"
        dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
        assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them"


def test_notebooks_match_their_build_script(tmp_path):
    """The committed notebooks are exactly what ``python demos/build.py`` writes."""
    for path in _build_module().main(tmp_path):
        assert path.read_text() == (DEMOS / path.name).read_text(), (
            f"demos/{path.name} differs from demos/build.py; run `python demos/build.py`"
        )


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A JUPYTER_PATH holding one kernelspec that runs this interpreter."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "tvlens (test)", "language": "python"})
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("TVLENS_MODEL", raising=False)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the traceback, on any failing cell
    _timings[path.name] = time.perf_counter() - start
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert errors == []
    outputs = {c.id: c.outputs for c in nb.cells if c.cell_type == "code"}
    assert all(outputs.values()), "a code cell showed nothing"
    reports = list(tmp_path.glob("runs/*/report.html"))
    assert len(reports) == 1, "each notebook ends by writing one report"
    page = reports[0].read_text()
    assert 'class="error-box"><strong>' not in page, "a figure in the report failed"
    assert page.count('class="plotly-graph-div"') >= 3
    print(f"{path.name}: {_timings[path.name]:.1f} s")  # timing is reported, not asserted
