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


def _side_by_side_table(ret_gap, learn_gap, ref_gap):
    """A side-by-side table as demo_modes.side_by_side writes it, for one model."""
    from tvlens.experiments.demo_modes import HEADLINES

    rows = []
    for h in HEADLINES:
        value = {"gap_retrieval_ood": ret_gap, "gap_learning_ood": learn_gap}.get(h.metric, 0.5)
        base = {"gap_retrieval_ood": -ref_gap, "gap_learning_ood": ref_gap}.get(h.metric, 0.1)
        rows.append({"metric": h.metric, "description": h.description, "unit": h.unit,
                     "model": "m", "value": value, "value_sd": float("nan"), "n_seeds": 1,
                     "baseline": base, "baseline_sd": float("nan"),
                     "baseline_name": h.baseline_name, "ceiling": float("nan"),
                     "best_layer": "3"})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "ret_gap, learn_gap, ref_gap, nearer, margin",
    [
        (-0.15, 0.03, 0.18, "learning", 0.12),  # between the references, nearer the learner
        (-0.02, 0.66, 0.68, "retrieval", -0.64),  # at retrieval
        (-0.01, 0.02, 0.03, "unreadable", -0.01),  # references too close to tell apart
    ],
)
def test_demo_verdict_places_a_model_between_the_references(
    ret_gap, learn_gap, ref_gap, nearer, margin
):
    from tvlens.experiments.demo_modes import format_side_by_side, verdict

    table = _side_by_side_table(ret_gap, learn_gap, ref_gap)
    v = verdict(table)["models"]["m"]
    assert v["nearer"] == nearer
    assert v["margin_nats"] == pytest.approx(margin)
    assert v["ood_reference_gap"] == pytest.approx(ref_gap)
    text = format_side_by_side(table)
    assert "random subspace, same rank" in text and "one-hot true task" in text
    assert len(text.splitlines()) == len(table) + 1  # a header and one line per number
