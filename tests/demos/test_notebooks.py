"""The demo notebooks: committed without outputs, in sync with demos/build.py, and they run.

Each notebook is executed top to bottom with nbclient in a kernel started on *this* Python
(a kernelspec written into a temporary ``JUPYTER_PATH`` whose argv is ``sys.executable``, so
the venv's tvlens is the one imported, whatever kernels the machine has installed). The
kernel's working directory is a temporary folder, so the runs the notebooks write land there.
``HF_HUB_OFFLINE=1`` makes the LLM notebook take its documented fallback (a tiny local
checkpoint) at once instead of waiting on the network. ``PYTHONPATH`` gets ``demos/``, as a
kernel started beside the notebooks has it, for ``static_figures``.

A notebook fails when it prints a warning (any ``…Warning:`` line in a stream or an error
output; ``test_a_printed_warning_fails_the_notebook`` plants one), and when a plotly figure
it shows has no static PNG beside it (in the same output, and as a file under
``runs/figures/``), so that a viewer without JavaScript shows every figure.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
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
PLOTLY = "application/vnd.plotly.v1+json"
#: what Python's warnings module prints: "path:line: SomeWarning: message"
WARNING_LINE = re.compile(r"\b[A-Z]\w*Warning: ")
_timings: dict[str, float] = {}
#: notebooks being rewritten (03: for the real SmolLM2): their figures have no static copies
#: yet and a warning they print is an expected failure (xfail, naming it), not a failure.
#: The rewrite should start from demos/build.py's first_cell (static copies, no filters) and
#: then leave this set.
PENDING_REWRITE: set[str] = set()


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


def printed_warnings(nb: nbformat.NotebookNode) -> list[str]:
    """Every line of an executed notebook's stream and error outputs that names a warning
    category (``DeprecationWarning``, ``TqdmWarning``, ``UserWarning``, …), as
    ``cell-id: line``."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.output_type == "stream":
                text = out.text
            elif out.output_type == "error":
                text = "\n".join([out.ename, out.evalue, *out.traceback])
            else:
                continue
            found += [
                f"{cell.id}: {line}" for line in text.splitlines() if WARNING_LINE.search(line)
            ]
    return found


def plotly_outputs(nb: nbformat.NotebookNode) -> list[tuple[str, dict]]:
    """(cell id, output data) of every output that shows a plotly figure."""
    return [
        (cell.id, out.data)
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if PLOTLY in out.get("data", {})
    ]


def execute(nb: nbformat.NotebookNode, kernel_dir: Path, cwd: Path, monkeypatch) -> float:
    """Run ``nb`` in place in a kernel of this interpreter, in ``cwd``; returns seconds."""
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(DEMOS), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.delenv("TVLENS_MODEL", raising=False)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(cwd)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the traceback, on any failing cell
    return time.perf_counter() - start


@pytest.mark.slow
def test_a_printed_warning_fails_the_notebook(kernel_dir, tmp_path, monkeypatch):
    """The warning check sees what a kernel prints: a planted DeprecationWarning (shown in
    ``__main__`` by default, as a deprecated import in a notebook would be) is found."""
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(
        cells=[
            new_code_cell("print('no warning here')"),
            new_code_cell("import warnings\nwarnings.warn('planted', DeprecationWarning)"),
        ]
    )
    execute(nb, kernel_dir, tmp_path, monkeypatch)
    found = printed_warnings(nb)
    assert len(found) == 1 and found[0].endswith("DeprecationWarning: planted"), found


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_dir, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    _timings[path.name] = execute(nb, kernel_dir, tmp_path, monkeypatch)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert errors == []
    warned = printed_warnings(nb)
    if path.name not in PENDING_REWRITE:
        assert warned == [], "the notebook printed warnings"
    outputs = {c.id: c.outputs for c in nb.cells if c.cell_type == "code"}
    assert all(outputs.values()), "a code cell showed nothing"
    if path.name not in PENDING_REWRITE:
        figures = plotly_outputs(nb)
        assert figures, "the notebook shows no figure"
        bare = [cell for cell, data in figures if "image/png" not in data]
        assert bare == [], f"figures without a static PNG beside them: cells {bare}"
        for _, data in figures:
            assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG")
        files = sorted(tmp_path.glob("runs/figures/*.png"))
        assert len(files) == len(figures), "one PNG file per figure shown"
    reports = list(tmp_path.glob("runs/*/report.html"))
    assert len(reports) == 1, "each notebook ends by writing one report"
    page = reports[0].read_text()
    assert 'class="error-box"><strong>' not in page, "a figure in the report failed"
    assert page.count('class="plotly-graph-div"') >= 3
    print(f"{path.name}: {_timings[path.name]:.1f} s")  # timing is reported, not asserted
    if warned:
        pytest.xfail(f"{path.name} is being rewritten; it prints warnings: {warned}")
