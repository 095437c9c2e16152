"""Smoke test of ``tvlens experiment decodability`` on a tiny model (seconds, not minutes).

(Named ``..._experiment`` so that it does not clash with tests/analyses/test_decodability.py:
the test folders are not packages.)
"""

from __future__ import annotations

import pandas as pd
import pytest

from tvlens.cli import main
from tvlens.experiments.registry import EXPERIMENTS
from tvlens.viz.decodability import FIGURES, SECTION

TINY = [
    "--steps", "16",
    "--layers", "2",
    "--d-model", "16",
    "--set", "model.n_heads=2",
    "--set", "model.d_mlp=32",
    "--set", "family.dim=4",
    "--set", "family.sparsity=1",
    "--set", "family.seq_len=10",
    "--set", "family.k=4",
    "--set", "train.eval_every=8",
    "--set", "train.eval_size=16",
    "--set", "train.batch_size=8",
    "--set", "train.n_checkpoints=4",
    "--n-per-class", "15",
    "--ft-steps", "2",
]  # fmt: skip


def test_decodability_experiment_end_to_end(tmp_path, capsys):
    assert "decodability" in EXPERIMENTS
    out = tmp_path / "run"
    assert main(["experiment", "decodability", "--out", str(out), *TINY]) == 0
    results = pd.read_csv(out / "results.csv")
    quantities = set(results["quantity"])
    for q in (
        "td_knn_vs_n_examples_spearman",
        "td_probe_vs_n_examples_spearman",
        "td_performance_r[class x n_examples]",
        "td_performance_r[class x n_examples, within n]",
        "td_gap_retrieval_r[class x n_examples, within n]",
        "td_icl_performance_r[checkpoints]",
        "td_vs_icl_loss_over_checkpoints_r",
        "td_half_step",
        "finetune_early_d_td_mean_over_layers",
        "finetune_late_d_icl_loss",
        "wall_seconds_total",
    ):
        assert q in quantities, q
    knn = results[(results["quantity"] == "td_knn") & (results["target"] == "concept:major")]
    assert sorted(knn["n_examples"]) == list(range(5)) and (knn["chance"] > 0).all()
    for name in (
        "decodability",
        "decodability_groups",
        "decodability_correlation",
        "decodability_dynamics",
        "decodability_emergence",
        "decodability_finetune",
    ):
        df = pd.read_csv(out / "analyses" / f"{name}.csv")
        assert not df.empty
        assert (out / "figures" / f"{name}.html").exists()
        FIGURES[name](df)  # the report draws the CSV as written
    td = pd.read_csv(out / "analyses" / "decodability.csv")
    assert set(td["method"]) == {"knn", "probe"} and td["shuffled"].notna().all()
    assert set(zip(td["label"], td["split"], strict=True)) == {
        ("concept", "major"),
        ("concept", "ood"),
    }
    ft = pd.read_csv(out / "analyses" / "decodability_finetune.csv")
    assert set(ft["variant"]) == {"start", "early", "late"} and set(ft["seed"]) == {-1, 0, 1}
    assert SECTION
    assert "results:" in capsys.readouterr().out

    # a second call reuses the finished run; a different config is refused, not overwritten
    mtime = (out / "metrics.csv").stat().st_mtime_ns
    args = ["experiment", "decodability", "--out", str(out), *TINY]
    assert main([*args, "--skip-dynamics", "--skip-finetune"]) == 0
    assert (out / "metrics.csv").stat().st_mtime_ns == mtime
    assert main([*args[:4], *TINY[2:], "--steps", "20"]) == 1
    assert "different config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--set", "family.sparsity=4"], "family.sparsity"),
        (["--n-per-class", "1"], "--n-per-class"),
        (["--decode", "concept"], "LABEL:SPLIT"),
        (["--decode", "task:ood"], "OOD sequences"),
    ],
)
def test_bad_experiment_arguments_fail_clearly_before_training(tmp_path, capsys, bad, message):
    out = tmp_path / "r"
    assert main(["experiment", "decodability", "--out", str(out), *TINY, *bad]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
