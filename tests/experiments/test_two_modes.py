"""Smoke test of ``tvlens experiment two-modes`` with tiny settings (a few seconds per k)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest

from tvlens.cli import main
from tvlens.experiments.two_modes import headline, load_tables
from tvlens.viz.geometry import FIGURES as GEOMETRY
from tvlens.viz.paper import FIGURES as PAPER
from tvlens.viz.steering import FIGURES as STEERING

TINY = [
    "--steps", "12",
    "--layers", "2",
    "--d-model", "16",
    "--set", "model.n_heads=2",
    "--set", "model.d_mlp=32",
    "--set", "family.seq_len=8",
    "--set", "train.batch_size=8",
    "--set", "train.eval_every=4",
    "--set", "train.eval_size=16",
    "--set", "train.n_checkpoints=3",
    "--n-eval", "16",
    "--jobs", "1",
    "--threads", "1",
]  # fmt: skip


@pytest.mark.parametrize("family", ["dice", "markov"])
def test_two_modes_sweep_end_to_end(tmp_path, capsys, family):
    out = tmp_path / "exp"
    argv = ["experiment", "two-modes", "--family", family, "--ks", "-1", "1", "--out", str(out)]
    assert main(argv + TINY) == 0
    printed = capsys.readouterr().out
    assert "id_simplex_r2" in printed and "results:" in printed

    results = pd.read_csv(out / "results.csv")
    assert list(results["k"]) == [-1, 1] and list(results["n_minor"]) == [0, 2]
    for col in ("id_simplex_r2", "beta_posterior_corr", "ood_proj_r2", "ablate_major",
                "ablate_ood", "convex_kl", "mode_log_ratio_ood", "best_layer"):  # fmt: skip
        assert results[col].notna().all(), col
    assert results["best_layer"].between(0, 1).all()

    expected = {
        "task_vectors", "anova_r2", "simplex_fit", "alignment", "alignment_summary",
        "beta_posterior", "principal_angles", "geometry_points", "ablation", "steering",
        "convexity", "modes", "geometry_training", "paper_ood_r2", "paper_anova",
        "alignment_baselines", "subspace_share", "reference_gap",
    }  # fmt: skip
    registry = {**GEOMETRY, **STEERING, **PAPER}
    for k in (-1, 1):
        tables = load_tables(out / f"k{k}")
        assert set(tables) == expected
        assert all((df["k"] == k).all() for df in tables.values())
        for name, df in tables.items():  # every table the run holds draws a figure
            assert isinstance(registry[name](df), go.Figure), name
        row = headline(tables)
        assert row["k"] == k
        # every headline number carries its baseline, computed in the same run
        for col in ("beta_posterior_corr_one_hot", "ood_task_share_random",
                    "ood_task_share_top", "ref_gap_ood", "ablate_random_ood"):  # fmt: skip
            assert col in row and row[col] == row[col], col
        assert row["ood_task_share_random"] <= row["ood_task_share_top"] + 1e-9
    assert "minor" not in set(load_tables(out / "k-1")["simplex_fit"]["split"])
    assert "minor" in set(load_tables(out / "k1")["simplex_fit"]["split"])

    across = {p.stem for p in (out / "analyses").glob("*.csv")}
    assert across == {
        "ood_r2_vs_k", "mode_heatmap", "ablation_vs_k", "convexity_vs_k", "paper_ood_r2_vs_k",
    }  # fmt: skip
    for name in across:
        assert isinstance(registry[name](pd.read_csv(out / "analyses" / f"{name}.csv")), go.Figure)
    figures = {p.name for p in (out / "figures").glob("*.html")}
    assert {"results.html", "ood_r2_vs_k.html", "mode_heatmap.html",
            "k-1_geometry_points.html"} <= figures  # fmt: skip
    html = (out / "figures" / "results.html").read_text()
    assert "cdn.plot.ly" not in html and "plotly.min.js" in html
    assert (out / "figures" / "plotly.min.js").exists()

    # a second invocation reuses the trained runs instead of retraining them; one with a
    # subset of the ks would replace the summary by a subset, and is refused (nothing lost)
    ckpt = out / "k1" / "checkpoints" / "step_000012.safetensors"
    before = ckpt.stat().st_mtime_ns
    rows = len(pd.read_csv(out / "results.csv"))
    assert main(argv[:4] + ["--ks", "1", "--out", str(out)] + TINY) == 1
    assert len(pd.read_csv(out / "results.csv")) == rows
    assert main(argv + TINY) == 0
    assert ckpt.stat().st_mtime_ns == before


def test_two_modes_rejects_single_k_and_mismatched_runs(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "two-modes", "--k", "2", "--out", str(out)]) == 1
    assert "--ks" in capsys.readouterr().err
    assert main(["experiment", "two-modes", "--ks", "0", "--out", str(out)] + TINY) == 0
    changed = [a if a != "12" else "16" for a in TINY]
    assert main(["experiment", "two-modes", "--ks", "0", "--out", str(out)] + changed) == 1
    assert "--retrain" in capsys.readouterr().err


def test_two_modes_rejects_bad_jobs(tmp_path, capsys):
    argv = ["experiment", "two-modes", "--ks", "0", "--out", str(tmp_path / "e")]
    assert main(argv + TINY + ["--jobs", "0"]) == 1  # the last --jobs wins
    assert "jobs=0" in capsys.readouterr().err


def test_r2_figures_keep_extreme_values_off_axis():
    from tvlens.viz.geometry import ood_r2_vs_k

    df = pd.DataFrame(
        {
            "log2_n_minor": [0, 0, 2, 2],
            "layer": [0, 0, 0, 0],
            "split": ["ood", "minor", "ood", "minor"],
            "r2_affine": [0.8, -300.0, 0.3, -0.2],
        }
    )
    fig = ood_r2_vs_k(df)
    assert tuple(fig.layout.yaxis.range) == (-1.05, 1.05)
    assert "1 value(s) below" in fig.layout.annotations[0].text
    assert ood_r2_vs_k(df[df["r2_affine"] > -1]).layout.yaxis.range is None


def test_two_modes_seeds_give_an_interval(tmp_path):
    out = tmp_path / "exp"
    argv = ["experiment", "two-modes", "--ks", "1", "--seeds", "0", "1", "--out", str(out)]
    assert main(argv + TINY) == 0
    assert {p.name for p in out.iterdir() if p.is_dir()} >= {"k1", "k1_s1"}
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["seed"]) == [0, 1]
    seeds = pd.read_csv(out / "results_seeds.csv")
    assert list(seeds["n_seeds"]) == [2]
    r = results["id_simplex_r2"]
    assert seeds["id_simplex_r2_mean"].iloc[0] == pytest.approx(r.mean())
    assert seeds["id_simplex_r2_sd"].iloc[0] == pytest.approx(r.std())
