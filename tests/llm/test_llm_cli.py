"""``tvlens llm --model <tiny local checkpoint> --task antonym`` end to end, and its figures."""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import pytest
from safetensors.torch import load_file

from tvlens.cli import main
from tvlens.llm.config import DecodabilityOptions
from tvlens.viz.llm import FIGURES, SECTION

SMALL = [
    "--n-prompts", "6", "--n-td", "11", "--td-shots", "1,2", "--shots", "0,2",
    "--tv-shots", "2", "--fv-shots", "2", "--n-ie", "3", "--k-heads", "3",
    "--n-mixture", "3", "--batch-size", "8",
]  # fmt: skip
EXPECTED = {
    "llm_icl",
    "llm_task_vectors",
    "llm_fv_heads",
    "llm_function_vectors",
    "llm_decodability",
    "llm_td_icl",
    "llm_td_correlation",
    "llm_pca",
    "llm_mixture",
    "llm_simplex",
}


@pytest.fixture(scope="module")
def run_dir(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("llm_run") / "gemma"
    argv = ["llm", "--model", str(tiny_dirs["gemma2"]), "--task", "antonym", "--out", str(out)]
    argv += ["--td-tasks", "pos_first_noun,pos_first_verb,bitwise_and,bitwise_or,null"]
    assert main(argv + SMALL) == 0
    return out


def test_cli_writes_a_run_directory(run_dir, tiny_dirs, capsys):
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["kind"] == "llm" and cfg["model"]["n_layers"] == 2
    assert cfg["settings"]["template"] == "qa" and cfg["settings"]["seed"] == 0
    assert cfg["analyses"]["icl"]["tasks"] == "antonym"
    assert cfg["analyses"]["decodability"]["n_prompts"] == 11
    assert cfg["analyses"]["geometry"]["n_prompts"] == 11  # --n-td sets both
    # every table has a provenance record: model, weights, template, seed, options
    prov = json.loads((run_dir / "analyses" / "provenance.json").read_text())
    assert set(prov) == {f"{name}.csv" for name in EXPECTED}
    for rec in prov.values():
        assert rec["source"]["template"] == "qa" and rec["source"]["seed"] == 0
        assert "weights_sha256" in rec["source"] and rec["options"]
    assert prov["llm_icl.csv"]["analysis"] == "icl"
    assert prov["llm_icl.csv"]["options"]["shots"] == [0, 2]
    assert {p.stem for p in (run_dir / "analyses").glob("*.csv")} == EXPECTED
    icl = pd.read_csv(run_dir / "analyses" / "llm_icl.csv")
    assert icl[["task", "shots"]].values.tolist() == [["antonym", 0], ["antonym", 2]]
    td = pd.read_csv(run_dir / "analyses" / "llm_decodability.csv")
    assert set(td["group"]) == {"pos", "bitwise"}
    assert (td["n_classes"] == 3).all()  # two tasks + Null in each group
    assert td["chance"].round(4).eq(round(1 / 3, 4)).all()
    vectors = load_file(run_dir / "function_vectors.safetensors")
    assert vectors["antonym"].shape == (cfg["model"]["d_model"],)
    # a second run into the same directory is refused
    argv = ["llm", "--model", str(tiny_dirs["gemma2"]), "--out", str(run_dir)]
    assert main(argv + ["--analyses", "icl"]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_forced_rerun_replaces_old_tables(tiny_dirs, tmp_path):
    out = tmp_path / "run"
    argv = ["llm", "--model", str(tiny_dirs["llama"]), "--out", str(out), "--n-prompts", "4"]
    assert main(argv + ["--analyses", "icl,task_vectors", "--shots", "0"]) == 0
    assert main(argv + ["--analyses", "icl", "--shots", "0,1", "--force"]) == 0
    assert [p.stem for p in (out / "analyses").glob("*.csv")] == ["llm_icl"]
    assert pd.read_csv(out / "analyses" / "llm_icl.csv")["shots"].tolist() == [0, 1]


def test_every_csv_draws_a_figure(run_dir):
    assert SECTION
    for name, fn in FIGURES.items():
        if name not in EXPECTED:  # the opt-in analyses' figures: tests/llm/test_llm_modes.py
            continue
        fig = fn(pd.read_csv(run_dir / "analyses" / f"{name}.csv"))
        assert isinstance(fig, go.Figure) and len(fig.data) > 0, name
    with pytest.raises(ValueError, match="lacks column"):
        FIGURES["llm_icl"](pd.DataFrame({"task": ["a"]}))


def test_report_renders_the_llm_section(run_dir):
    from tvlens.viz.report import write_report

    html = write_report(run_dir, attention=False).read_text()
    assert SECTION in html
    for name in EXPECTED:
        assert f"analyses/{name}.csv" in html
    assert "Could not draw" not in html


def test_cli_errors_are_clear(tiny_dirs, tmp_path, capsys):
    assert main(["llm", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    argv = ["llm", "--model", str(tiny_dirs["llama"]), "--out", str(tmp_path / "o")]
    assert main(argv + ["--analyses", "icl,magic"]) == 1
    assert "unknown analysis 'magic' for llm runs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="kNN with k = 10"):
        DecodabilityOptions(n_prompts=5)
    # a flag that no analysis that runs reads is refused, not ignored
    assert main(argv + ["--analyses", "icl", "--layers", "999"]) == 1
    err = capsys.readouterr().err
    assert "--layers is not read by the analyses that run" in err and "task_vectors" in err
