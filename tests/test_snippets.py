"""Every ```python block of README.md and docs/*.md runs as written, at tiny size.

The blocks of one file run in order in one namespace (a page's later block may use an
earlier one's names), in a scratch folder holding the run directories the docs name
(``runs/demo`` with its second model ``runs/demo/learning_k10``), trained tiny; every
:meth:`RunConfig.for_family` a block calls is shrunk to the tiny test size. A block preceded
by ``<!-- no-run ... -->`` is a signature overview, not a program, and is skipped (keep
those few). Warnings raised by a block fail it. Also: ``tvlens --help`` and the public names.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)
TINY = {
    "model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32},
    "train": {"steps": 8, "batch_size": 8, "eval_every": 4, "eval_size": 16, "n_checkpoints": 2},
}


def blocks(page: Path) -> list[str]:
    """The runnable python blocks of ``page``, in order."""
    return [
        m["code"]
        for m in BLOCK.finditer(page.read_text(encoding="utf-8"))
        if not m["before"].strip().startswith("<!-- no-run")
    ]


RUNNABLE = [p for p in PAGES if blocks(p)]


def _tiny(original):
    def for_family(name, family=None, model=None, train=None, **kw):
        fam = dict(family or {})  # the default context: docs sample batches themselves
        return original(name, family=fam, model={**TINY["model"], **(model or {})},
                        train={**TINY["train"], **(train or {})}, **kw)  # fmt: skip

    return for_family


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder with the runs the docs load: runs/demo and runs/demo/learning_k10."""
    from tvlens.models import RunConfig, train

    root = tmp_path_factory.mktemp("snippets")
    tiny = _tiny(RunConfig.for_family)
    train(tiny("dice", family={"vocab": 32}), root / "runs" / "demo", progress=False)
    learning = tiny("dice", family={"vocab": 32, "k": 10, "p_minor": 0.9})
    train(learning, root / "runs" / "demo" / "learning_k10", progress=False)
    return root


def test_some_blocks_are_checked_and_few_are_skipped():
    every = sum(p.read_text().count("```python") for p in PAGES)
    ran = sum(len(blocks(p)) for p in PAGES)
    # the few skipped: a plug-in module (tests/test_plugins.py runs it), a real model's run,
    # a list of signatures; each says why
    assert ran >= 5 and every - ran <= 4
    for p in PAGES:
        for marker in re.findall(r"<!-- no-run(.*?)-->", p.read_text()):
            assert marker.startswith(":") and len(marker.strip(": ")) > 10, (p, marker)


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run_as_written(page, scratch, monkeypatch):
    from tvlens.models import RunConfig

    monkeypatch.chdir(scratch)
    monkeypatch.setattr(RunConfig, "for_family", staticmethod(_tiny(RunConfig.for_family)))
    namespace: dict = {"__name__": "__snippet__"}
    for i, code in enumerate(blocks(page)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", module="torch|transformer_lens|jaxtyping")
            try:
                exec(compile(code, f"{page.name}, block {i + 1}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{page.name} block {i + 1} fails:\n{code}") from e


def test_help_describes_the_command(capsys):
    from tvlens.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "task vectors" in text


def test_public_objects_named_in_the_docs_are_exported():
    import tvlens

    for name in ("TaskVectors", "Run", "TaskFamily"):
        assert name in tvlens.__all__ and getattr(tvlens, name).__name__ == name
