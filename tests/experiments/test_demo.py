"""`tvlens demo` and `tvlens train` end to end, at tiny sizes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tvlens.cli import main
from tvlens.models import load_run

TINY = [
    "--steps", "8", "--layers", "1", "--d-model", "16",
    "--set", "model.n_heads=2", "--set", "model.d_mlp=32", "--set", "family.seq_len=12",
    "--set", "train.batch_size=8", "--set", "train.eval_every=4", "--set", "train.eval_size=16",
]  # fmt: skip


def test_demo_trains_summarises_and_reuses(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", *TINY, "--out", str(out), "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "second half of the context" in printed

    table = pd.read_csv(out / "summary.csv")
    assert set(table.split) == {"major", "ood"}
    # The gap is model − retrieval, and the references are ordered as theory says on
    # major tasks: knowing the true task can only help (true ≤ retrieval in expectation).
    assert (table.gap_retrieval - (table.model - table.retrieval)).abs().max() < 1e-6
    major = table[table.split == "major"]
    assert (major.true_task <= major.retrieval + 1e-3).all()

    verdict = json.loads((out / "demo.json").read_text())
    last = major.iloc[-1]
    assert verdict["major_second_half_gap_nats"] == pytest.approx(last.gap_retrieval)
    assert verdict["within_0.05_nats"] == (abs(last.gap_retrieval) <= 0.05)

    # A finished run is reused, not retrained: the weights are untouched.
    ckpt = out / "checkpoints" / "step_000008.safetensors"
    mtime = ckpt.stat().st_mtime_ns
    assert main(["demo", *TINY, "--out", str(out), "--no-report"]) == 0
    assert ckpt.stat().st_mtime_ns == mtime
    assert load_run(out).step == 8


def test_train_command_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert "run directory" in capsys.readouterr().out
    # Training into a directory that holds a run without --resume is refused, clearly.
    assert main(["train", *TINY, "--out", str(out)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_bad_set_flag_is_named(capsys):
    assert main(["train", "--set", "nonsense", "--out", "/nonexistent/x"]) == 1
    assert "SECTION.FIELD=VALUE" in capsys.readouterr().err


def test_a_broken_subcommand_does_not_disable_the_others(monkeypatch, capsys):
    from tvlens import cli

    monkeypatch.setitem(cli.COMMANDS, "broken", ("tvlens._no_such_module", "a broken command"))
    assert main(["broken"]) == 2
    assert "tvlens._no_such_module" in capsys.readouterr().err
    assert main(["train", "--set", "nonsense", "--out", "/nonexistent/x"]) == 1
