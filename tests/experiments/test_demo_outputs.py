"""What a fresh ``tvlens demo`` writes, at tiny size: a report that states its findings for
both models and side by side, a folder ``tvlens check`` passes, and quiet logs; and the
same check on a fresh sweep folder and a fresh LLM run."""

from __future__ import annotations

import html
import json
import logging
import re

import pandas as pd
import pytest

from tvlens.check_cmd import check_run
from tvlens.cli import main
from tvlens.viz.findings import claim_sentences, fmt, training_sentences

TINY = [
    "--steps", "8", "--layers", "2", "--d-model", "16",
    "--set", "model.n_heads=2", "--set", "model.d_mlp=32", "--set", "family.seq_len=12",
    "--set", "train.batch_size=8", "--set", "train.eval_every=4", "--set", "train.eval_size=16",
    "--learning-steps", "8", "--learning-k", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    logger = logging.getLogger("tvlens")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        assert main(["demo", *TINY, "--out", str(out)]) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    return out, [r.getMessage() for r in records]


def _sections(page: str) -> dict[str, str]:
    """Section title -> its text (tags stripped)."""
    out = {}
    for m in re.finditer(r'<section id="[^"]+"><h2>([^<]*)</h2>(.*?)</section>', page, re.S):
        out[html.unescape(m.group(1))] = html.unescape(re.sub(r"<[^>]+>", " ", m.group(2)))
    return out


def test_demo_report_states_findings_for_both_models_and_side_by_side(demo):
    out, _ = demo
    page = (out / "report.html").read_text()
    sections = _sections(page)
    titles = list(sections)
    assert titles[1] == "The two modes side by side"
    main_geo = [t for t in titles if t.startswith("main model") and "geometry" in t]
    second_geo = [t for t in titles if t.startswith("learning_k2") and "geometry" in t]
    assert main_geo and second_geo
    # the verdict of demo_modes, word for word, opens the two-modes section
    verdict = json.loads((out / "demo.json").read_text())["two_modes"]["statement"]
    assert " ".join(verdict.split()) in " ".join(sections[titles[1]].split())
    # each model's geometry opens with its own numbers beside their baselines
    from tvlens.experiments.demo_modes import run_headline

    for title, run in ((main_geo[0], out), (second_geo[0], out / "learning_k2")):
        row = run_headline(run)
        text = sections[title]
        assert "Finding" in text
        assert (
            f"OOD variance share in the major-task subspace: {fmt(row['ood_task_share'])}" in text
        )
        assert fmt(row["ood_task_share_random"]) in text
        assert "upported:" in text  # "Supported:" or "Not supported:"
    # the second model's figures are drawn, with ids of their own
    ids = re.findall(r'id="(fig-[^"]+)"', page)
    assert len(ids) == len(set(ids))
    assert any("learning_k2" in i for i in ids)
    # the summary formats floats: no 17-digit numbers anywhere in it
    summary = page[page.index('id="summary"') : page.index('id="sec-two-modes"')]
    assert not re.search(r"\d\.\d{6,}", summary)


def test_a_fresh_demo_folder_passes_check(demo, capsys):
    out, _ = demo
    problems = [str(f) for f in check_run(out) if f.level == "problem"]
    assert problems == []
    assert any(f.what.startswith("learning_k2/") and f.level == "ok" for f in check_run(out))
    assert main(["check", str(out)]) == 0


def test_check_still_finds_a_stale_table_of_the_second_model(demo, tmp_path):
    import shutil

    out, _ = demo
    copy = tmp_path / "demo"
    shutil.copytree(out, copy)
    table = copy / "learning_k2" / "analyses" / "simplex_fit.csv"
    table.write_text(table.read_text() + "\n")
    problems = [str(f) for f in check_run(copy) if f.level == "problem"]
    assert len(problems) == 1 and "learning_k2/analyses/simplex_fit.csv" in problems[0]


def test_demo_logs_are_quiet(demo):
    _, messages = demo
    loads = [m for m in messages if m.startswith("loaded ")]
    assert loads == []  # checkpoint loads are DEBUG


def test_claims_say_when_they_are_not_supported():
    yes = claim_sentences({"ood_task_share": (0.6, 0.1)})
    no = claim_sentences({"ood_task_share": (0.05, 0.1), "convex_kl": (0.5, 0.2)})
    assert yes[0].startswith("Supported:") and "0.6 share" in yes[0] and "0.1)" in yes[0]
    assert [s.split(":")[0] for s in no] == ["Not supported", "Not supported"]


def test_training_findings_say_when_the_references_cannot_place_the_model():
    metrics = pd.DataFrame(
        {"step": [10, 10], "split": ["major", "ood"], "band": ["0-8", "0-8"],
         "loss": [1.0, 2.0], "loss_retrieval": [1.0, 2.2], "loss_learning": [1.01, 2.0]}
    )  # fmt: skip
    major, ood = training_sentences(metrics)
    assert "cannot place the model" in major
    assert "nearer the learning reference by 0.2" in ood


def test_a_fresh_sweep_folder_passes_check(tmp_path):
    from test_sweep import tiny

    cfg = tmp_path / "sweep.json"
    cfg.write_text(json.dumps(tiny(ks=[-1])))
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--jobs", "1"]) == 0
    findings = check_run(out)
    assert [str(f) for f in findings if f.level == "problem"] == []
    assert findings[0].level == "note" and "sweep" in findings[0].detail
    assert main(["check", str(out)]) == 0


def test_training_without_a_terminal_logs_its_progress(tmp_path, monkeypatch, caplog):
    import importlib

    from tiny import tiny_config

    train_mod = importlib.import_module("tvlens.models.train")
    monkeypatch.setattr(train_mod, "LOG_EVERY_S", 0.0)  # every step, for the test
    with caplog.at_level(logging.INFO, logger="tvlens.models.train"):
        train_mod.train(tiny_config(steps=4), tmp_path / "run")  # pytest's stderr: no tty
    lines = [r.getMessage() for r in caplog.records if "step" in r.getMessage()]
    assert lines[-1].startswith("train dice k=-1: step 4/4 (100%), loss ")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tvlens.models.train"):
        train_mod.train(tiny_config(steps=4), tmp_path / "quiet", progress=False)
    assert not [r for r in caplog.records if "step 4/4" in r.getMessage()]


def test_a_fresh_llm_run_passes_check(tmp_path):
    from tvlens.llm.tiny import build_tiny_checkpoint

    model = build_tiny_checkpoint(tmp_path / "gemma2", "gemma2", seed=1)
    out = tmp_path / "llm"
    small = ["--n-prompts", "6", "--n-td", "11", "--td-shots", "1,2", "--shots", "0,2",
             "--tv-shots", "2", "--fv-shots", "2", "--n-ie", "3", "--k-heads", "3",
             "--n-mixture", "3", "--batch-size", "8"]  # fmt: skip
    assert main(["llm", "--model", str(model), "--task", "antonym", "--out", str(out), *small]) == 0
    findings = check_run(out)
    assert [str(f) for f in findings if f.level == "problem"] == []
    assert sum(f.level == "ok" and f.what.startswith("analyses/llm_") for f in findings) >= 5
    assert main(["check", str(out)]) == 0
