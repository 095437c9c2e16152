"""``tvlens report`` reports runs, sweeps and LLM runs only: any other folder is refused
before anything is written into it, naming what it holds."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from tiny import tiny_config

from tvlens.cli import main
from tvlens.models import train
from tvlens.viz import report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("report_folders") / "run"
    train(tiny_config(steps=8), d, progress=False)
    return d


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _refused(folder, capsys, *needles):
    before = _tree(folder)
    assert main(["report", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "not a tvlens run, sweep or LLM run" in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert _tree(folder) == before  # nothing written into the foreign folder
    with pytest.raises(report.NotAReportFolderError):
        report.write_report(folder)


def test_an_hf_model_folder_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 9}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 64)
    _refused(tmp_path, capsys, "Hugging Face model folder", "'llama'", "tvlens llm --model")


def test_an_unrelated_config_json_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"colour": "blue"}))
    _refused(tmp_path, capsys, "config.json")


def test_a_foreign_metrics_csv_is_refused_naming_it(tmp_path, capsys):
    pd.DataFrame({"epoch": [1, 2], "acc": [0.5, 0.6]}).to_csv(tmp_path / "metrics.csv")
    _refused(tmp_path, capsys, "metrics.csv", "no tvlens config.json")


def test_an_empty_folder_is_refused(tmp_path, capsys):
    _refused(tmp_path, capsys, "it is empty")


def test_a_run_that_load_run_refuses_is_refused(run_dir, tmp_path, capsys):
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["family"]["name"] = "markov"
    cfg["family"]["vocab"] = 6
    (bad / "config.json").write_text(json.dumps(cfg))
    before = _tree(bad)
    assert main(["report", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "family.name: 'dice' vs 'markov'" in err and "tvlens check" in err
    assert _tree(bad) == before


def test_runs_sweeps_and_llm_runs_are_reported(run_dir, tmp_path, capsys):
    assert report.report_kind(run_dir) == "run"
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"name": "s", "families": ["dice"]}))
    pd.DataFrame({"trial": ["a"], "k": [1]}).to_csv(sweep / "results.csv", index=False)
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "config.json").write_text(json.dumps({"kind": "llm", "model": "tiny"}))
    for folder, kind in ((sweep, "sweep"), (llm, "llm")):
        assert report.report_kind(folder) == kind
        assert main(["report", str(folder)]) == 0
        assert (folder / "report.html").exists()
    capsys.readouterr()


def test_report_out_an_existing_folder_is_a_clear_error(run_dir, tmp_path, capsys):
    folder = tmp_path / "reports"
    folder.mkdir()
    assert main(["report", str(run_dir), "--out", str(folder), "--no-attention"]) == 1
    err = capsys.readouterr().err
    assert f"--out {folder} is a folder" in err and str(folder / "report.html") in err
    assert ".tmp" not in err and list(folder.iterdir()) == []
