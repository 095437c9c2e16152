"""``tvlens check`` proves a run resumable: a resume state it passes loads into the run's
model and optimiser, and one it cannot is a problem there and a clear error at --resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny import tiny_config

from tvlens.check_cmd import check_run
from tvlens.cli import main
from tvlens.models import CheckpointError, train
from tvlens.models.checkpoint import load_checkpoint, save_checkpoint

STEM = Path("checkpoints") / "resume"


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run interrupted at step 4 of 12: --resume has work to do."""
    d = tmp_path_factory.mktemp("stopped") / "run"
    train(tiny_config(steps=12), d, progress=False, stop_at=4)
    return d


def _problems(run_dir: Path) -> list[str]:
    return [str(f) for f in check_run(run_dir) if f.level == "problem"]


def _drop_group_key(key):
    def edit(tensors, meta):
        meta["param_groups"][0].pop(key)

    return edit


def _edit_meta(field, value):
    def edit(tensors, meta):
        if value is KeyError:
            meta.pop(field)
        else:
            meta[field] = value

    return edit


def _drop_tensor(suffix):
    def edit(tensors, meta):
        name = next(k for k in tensors if k.endswith(suffix))
        tensors.pop(name)

    return edit


def _reshape_tensor(suffix):
    def edit(tensors, meta):
        name = next(k for k in tensors if k.endswith(suffix))
        tensors[name] = tensors[name].flatten()[:3].clone()

    return edit


EDITS = {
    "no param_groups": (_edit_meta("param_groups", KeyError), "no optimiser param_groups"),
    "empty param_groups": (_edit_meta("param_groups", []), "0 optimiser param group"),
    "group without lr": (_drop_group_key("lr"), r"group 0 lacks \['lr'\]"),
    "group without betas": (_drop_group_key("betas"), r"lacks \['betas'\]"),
    "group params shortened": (
        lambda t, m: m["param_groups"][0].update(params=[0]),
        "lists .* as its parameters",
    ),
    "step missing": (_edit_meta("step", KeyError), "records step None"),
    "step a string": (_edit_meta("step", "4"), "records step '4'"),
    "garbage index": (_edit_meta("checkpoints", {"x": 1}), "checkpoint index"),
    "metrics not rows": (_edit_meta("metrics", "none"), "metrics are not a list"),
    "optimiser moment missing": (_drop_tensor(".exp_avg_sq"), r"lacks \['exp_avg_sq'\]"),
    "optimiser moment reshaped": (_reshape_tensor(".exp_avg"), "exp_avg of parameter"),
}


@pytest.mark.parametrize("case", EDITS)
def test_check_fails_exactly_when_resume_would(stopped, tmp_path, case, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    assert _problems(run_dir) == []  # the untouched copy is clean ...
    tensors, meta = load_checkpoint(run_dir / STEM)
    meta.pop("sha256")
    edit, message = EDITS[case]
    edit(tensors, meta)
    save_checkpoint(run_dir / STEM, tensors, meta)  # rewritten with a valid hash
    problems = _problems(run_dir)
    assert problems and any("resume" in p for p in problems), problems
    assert main(["check", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM resume state" in out
    with pytest.raises(CheckpointError, match=message):  # and --resume says what, no KeyError
        train(tiny_config(steps=12), run_dir, resume=True, progress=False)
    assert main(["train", "--resume", "--out", str(run_dir)]) == 1
    assert "error:" in capsys.readouterr().err


def test_a_run_that_checks_clean_resumes(stopped, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    assert _problems(run_dir) == []
    assert train(tiny_config(steps=12), run_dir, resume=True, progress=False).step == 12
    assert _problems(run_dir) == []
