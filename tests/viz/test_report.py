"""The offline HTML report, training curves and attention patterns."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
import pytest
import torch

from tvlens.analyses import attention as attn_a
from tvlens.models import RunConfig, list_checkpoints, load_run, train
from tvlens.viz import attention as attn
from tvlens.viz import report, training

# This module doubles as a viz module for the synthetic-CSV tests below.
SECTION = "Planted section"


def _good(df: pd.DataFrame) -> go.Figure:
    return go.Figure(go.Scatter(x=df["x"], y=df["y"]))


def _broken(df: pd.DataFrame) -> go.Figure:
    return go.Figure(go.Scatter(x=df["no_such_column"]))


FIGURES = {"good": _good, "also_good": _good, "broken": _broken, "absent": _good}
HERE = __name__


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = RunConfig.for_family(
        "dice",
        family={"seq_len": 12},
        model={"n_layers": 1, "d_model": 16, "n_heads": 2, "d_mlp": 32},
        train={"steps": 20, "batch_size": 8, "eval_every": 5, "eval_size": 16, "n_checkpoints": 2},
    )
    run_dir = tmp_path_factory.mktemp("report") / "run"
    train(cfg, run_dir, progress=False)
    return run_dir


@pytest.fixture
def planted_dir(tmp_path):
    d = tmp_path / "planted"
    (d / "analyses").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"kind": "llm", "model": "toy", "layers": [3, 5]}))
    xy = pd.DataFrame({"x": [0, 1, 2], "y": [1.0, 0.5, 0.25]})
    xy.to_csv(d / "analyses" / "good.csv", index=False)
    xy.to_csv(d / "analyses" / "also_good.csv", index=False)
    xy.to_csv(d / "analyses" / "broken.csv", index=False)
    xy.to_csv(d / "analyses" / "unregistered.csv", index=False)
    return d


def _script_and_link_sources(page: str) -> list[str]:
    return re.findall(
        r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?([^\"' >]+)", page
    )


class _Refs(HTMLParser):
    """Every URL-valued attribute of every tag (script bodies are not parsed as tags)."""

    URL_ATTRS = {"src", "href", "srcset", "data", "poster", "action", "xlink:href"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        self.urls += [v or "" for k, v in attrs if k in self.URL_ATTRS]
        self.styles += [v or "" for k, v in attrs if k == "style"]

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def external_references(page: str) -> list[str]:
    """URLs in the page that a browser would fetch from the network (or open off the page)."""
    refs = _Refs()
    refs.feed(page)
    remote = re.compile(r"^\s*(https?:|//|ftp:)", re.IGNORECASE)
    found = [u for u in refs.urls if remote.match(u)]
    for css in refs.styles:
        found += re.findall(r"url\(\s*['\"]?((?:https?:)?//[^)'\"]+)", css)
        found += re.findall(r"@import\s+['\"]?([^;'\"]+)", css)
    return found


def test_report_is_self_contained_and_renders_every_registered_csv(planted_dir):
    out = report.write_report(planted_dir, modules=[HERE, "tvlens.viz.no_such_module"])
    page = out.read_text()
    assert out == planted_dir / "report.html"
    # no external resources of any kind
    assert _script_and_link_sources(page) == []
    assert external_references(page) == []
    # plotly.js inlined exactly once
    head = plotly.offline.get_plotlyjs()[:300]
    assert page.count(head) == 1
    # one figure div per good registered CSV, with the planted data
    assert page.count('class="plotly-graph-div"') == 2
    assert 'id="fig-test_report-good"' in page and 'id="fig-test_report-also_good"' in page
    # the broken figure is an error box naming the file and the exception, not a crash
    box = re.search(r'<div class="error-box"><strong>([^<]*)</strong><pre>([^<]*)</pre>', page)
    assert box is not None
    assert "analyses/broken.csv" in box.group(1)
    assert "KeyError" in box.group(2) and "no_such_column" in box.group(2)
    # registered-but-absent CSVs and missing modules are skipped; unregistered ones listed
    assert "fig-test_report-absent" not in page
    assert "no_such_module" not in page
    other = page[page.index('id="sec-other"') :]
    assert "analyses/unregistered.csv" in other and "analyses/good.csv" not in other
    # table of contents links every section; the generic config table is there
    assert '<a href="#sec-test-report">Planted section</a>' in page
    assert "layers" in page and "[3, 5]" in page


def test_report_without_any_results_is_a_clear_error(tmp_path):
    with pytest.raises(report.NotAReportFolderError, match="not a tvlens run, sweep or LLM"):
        report.write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.write_report(tmp_path / "nope")


def test_training_curves_plot_the_metrics_and_all_references(tiny_run):
    df = pd.read_csv(tiny_run / "metrics.csv")
    fig = training.training_curves(df)
    names = {t.name for t in fig.data}
    assert names == {
        "model",
        "retrieval reference",
        "learning reference",
        "true task",
        "divergence to retrieval",
        "divergence to learning",
    }
    splits = training.ordered_splits(df)
    assert splits == ["major", "ood"]  # k = -1: no minor split
    assert len(fig.data) == 6 * len(splits)
    model_major = fig.data[0]
    want = df[df["split"] == "major"].sort_values("step")
    np.testing.assert_allclose(model_major.y, want["loss"])
    np.testing.assert_array_equal(model_major.x, want["step"])
    with pytest.raises(ValueError, match="lacks column"):
        training.training_curves(df.drop(columns=["loss"]))


def test_widest_band_keeps_the_whole_context():
    df = pd.DataFrame(
        {
            "step": [1, 1, 1],
            "split": ["major"] * 3,
            "band": ["0-8", "8-32", "0-64"],
            "loss": [3.0, 2.0, 1.0],
        }
    )
    assert training.widest_band(df)["loss"].tolist() == [1.0]


def test_attention_rows_are_causal_distributions_that_match_the_cache(tiny_run):
    run = load_run(tiny_run)
    batch = run.family.sample("major", 1, seed=3)
    df = attn_a.attention_patterns(run, batch.inputs)
    assert list(df.columns) == list(attn.COLUMNS)
    assert (df["k"] <= df["q"]).all()
    sums = df.groupby(["layer", "head", "q"])["value"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    _, cache = run.bridge.run_with_cache(batch.inputs)
    pattern = cache["blocks.0.attn.hook_pattern"][0, 1]
    h = df[(df["layer"] == 0) & (df["head"] == 1)]
    np.testing.assert_allclose(
        h["value"], pattern[torch.tensor(h["q"].tolist()), torch.tensor(h["k"].tolist())], atol=1e-6
    )
    assert h[h["q"] == 0]["q_token"].item() == "BOS"


def test_zero_queries_give_the_planted_uniform_pattern(tiny_run):
    run = load_run(tiny_run)
    with torch.no_grad():
        run.model.raw.layers[0].attn.q.weight.zero_()
        run.model.raw.layers[0].attn.q.bias.zero_()
    df = attn_a.attention_patterns(run, heads=[(0, 0)], split="ood", seed=1)
    assert set(zip(df["layer"], df["head"], strict=True)) == {(0, 0)}
    np.testing.assert_allclose(df["value"], 1.0 / (df["q"] + 1), atol=1e-6)
    fig = attn.attention_figure(df)
    z = np.asarray(fig.data[0].z, dtype=float)
    t = run.family.seq_len
    assert z.shape == (t, t)
    np.testing.assert_allclose(np.diag(z), 1.0 / np.arange(1, t + 1), atol=1e-6)
    assert np.isnan(z[np.triu_indices(t, 1)]).all()


def test_attention_head_choice_is_validated(tiny_run):
    run = load_run(tiny_run)
    with pytest.raises(ValueError, match=r"head \(3, 0\) does not exist"):
        attn_a.attention_patterns(run, heads=[(3, 0)])
    with pytest.raises(ValueError, match="one sequence"):
        attn_a.attention_patterns(run, run.family.sample("major", 2, seed=0).inputs)
    assert attn_a.parse_heads("0.1, 2.3") == [(0, 1), (2, 3)]
    with pytest.raises(ValueError, match="LAYER.HEAD"):
        attn_a.parse_heads("0-1")


def test_attention_view_builds_a_circuitsvis_widget(tiny_run):
    df = attn_a.attention_patterns(load_run(tiny_run))
    view = attn.attention_view(df, layer=0)
    assert "AttentionHeads" in view.cdn_src and "L0H1" in view.cdn_src
    with pytest.raises(ValueError, match="layers present"):
        attn.attention_view(df, layer=4)


def test_report_of_a_trained_run_has_summary_training_and_attention(tiny_run, capsys):
    from tvlens.cli import main

    assert main(["report", str(tiny_run), "--out", str(tiny_run / "r.html")]) == 0
    assert f"report: {tiny_run / 'r.html'}" in capsys.readouterr().out
    page = (tiny_run / "r.html").read_text()
    assert (tiny_run / "analyses" / "attention.csv").exists()  # computed on demand
    assert 'id="fig-training-metrics"' in page and 'id="fig-attention-attention"' in page
    assert 'error-box"><strong>' not in page
    # the summary shows the final loss and each reference, as in metrics.csv
    metrics = pd.read_csv(tiny_run / "metrics.csv")
    last = metrics[metrics["step"] == metrics["step"].max()]
    summary = page[page.index('id="summary"') : page.index('id="sec-training"')]
    for value in last[["loss", "loss_retrieval", "loss_learning", "loss_true"]].to_numpy().ravel():
        assert f"{value:.4f}" in summary
    assert _script_and_link_sources(page) == [] and external_references(page) == []


def test_external_reference_checks_can_fail():
    page = (
        '<html><head><script src="https://cdn.plot.ly/plotly.min.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.com/a.css">'
        "<style>body { background: url('https://x.example/bg.png'); }</style></head>"
        '<body><img src="data:image/png;base64,AAAA"><a href="#sec-x">x</a>'
        "<script>var s = '<script src=\"https://in.a.string/\">';</script></body></html>"
    )
    assert external_references(page) == [
        "https://cdn.plot.ly/plotly.min.js",
        "//fonts.example.com/a.css",
        "https://x.example/bg.png",
    ]


def test_summary_shows_root_tables_and_lists_missing_sections(planted_dir):
    pd.DataFrame({"k": [-1, 8], "ood_r2": [0.9123, -0.2345]}).to_csv(
        planted_dir / "results.csv", index=False
    )
    pd.DataFrame({"split": ["major"], "positions": ["32-64"], "gap_retrieval": [0.00071]}).to_csv(
        planted_dir / "summary.csv", index=False
    )
    (planted_dir / "demo.json").write_text(json.dumps({"within_0.05_nats": True, "steps": 1500}))
    page = report.write_report(planted_dir, modules=["tvlens.viz.training", HERE]).read_text()
    summary = page[page.index('id="summary"') : page.index('id="sec-test-report"')]
    assert "Headline results" in summary and "0.9123" in summary and "-0.2345" in summary
    assert "position band" in summary and "0.0007" in summary and "32-64" in summary
    assert "Demo verdict" in summary and "within_0.05_nats" in summary and "1500" in summary
    # the training module is installed but this run has no metrics.csv
    assert "Not in this run" in summary and "Training curves" in summary
    assert "metrics.csv" in summary[summary.index("Not in this run") :]
    assert 'id="sec-training"' not in page
    # an experiment's results.csv beside its runs is reportable too
    for name in ("config.json", "summary.csv", "demo.json"):
        (planted_dir / name).unlink()
    for path in (planted_dir / "analyses").glob("*.csv"):
        path.unlink()
    (planted_dir / "k1").mkdir()
    (planted_dir / "k1" / "trial.json").write_text("{}")
    assert "0.9123" in report.write_report(planted_dir, modules=[HERE]).read_text()


def test_default_heads_of_a_large_model_are_the_most_focused(tiny_run, monkeypatch):
    run = load_run(tiny_run)
    d_head = run.config.model.d_model // run.config.model.n_heads
    with torch.no_grad():  # head 0 of layer 0 gets zero queries: uniform, maximal entropy
        run.model.raw.layers[0].attn.q.weight[:d_head].zero_()
        run.model.raw.layers[0].attn.q.bias[:d_head].zero_()
    full = attn_a.attention_patterns(run, split="major", seed=2)
    h0 = full[full["head"] == 0]
    np.testing.assert_allclose(h0["value"], 1.0 / (h0["q"] + 1), atol=1e-6)  # planted
    assert set(full["head"]) == {0, 1}  # 2 heads <= MAX_DEFAULT_HEADS: all of them
    monkeypatch.setattr(attn_a, "MAX_DEFAULT_HEADS", 1)
    chosen = attn_a.attention_patterns(run, split="major", seed=2)
    assert set(zip(chosen["layer"], chosen["head"], strict=True)) == {(0, 1)}
    # explicit choices are never overridden
    both = attn_a.attention_patterns(run, heads=[(0, 0), (0, 1)], split="major", seed=2)
    assert set(both["head"]) == {0, 1}


def test_prompt_attention_on_a_pretrained_style_bridge(tmp_path):
    """A tiny random Llama checkpoint booted like a hub model: tokens label the rows, the
    values are the cache's, and the table goes where the report finds it."""
    from tvlens.llm import load
    from tvlens.llm.tiny import build_tiny_checkpoint

    corpus = ["hot -> cold", "big -> small", "up -> down"] * 4
    path = build_tiny_checkpoint(tmp_path / "tiny", vocab_words=corpus, n_layers=2, d_model=32)
    bridge = load(path, device="cpu")
    text = "hot -> cold\nbig ->"
    df = attn_a.prompt_attention(bridge, text, heads=[(1, 2), (0, 0)])
    ids = bridge.tokenizer(text, return_tensors="pt")["input_ids"]
    tokens = bridge.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert set(zip(df["layer"], df["head"], strict=True)) == {(0, 0), (1, 2)}
    first = df[(df["layer"] == 1) & (df["head"] == 2) & (df["k"] == 0)].sort_values("q")
    assert first["q_token"].tolist() == tokens
    _, cache = bridge.run_with_cache(ids)
    want = cache["blocks.1.attn.hook_pattern"][0, 2]
    h = df[(df["layer"] == 1) & (df["head"] == 2)]
    q, k = torch.tensor(h["q"].tolist()), torch.tensor(h["k"].tolist())
    np.testing.assert_allclose(h["value"], want[q, k].float(), atol=1e-6)
    out = attn_a.save_attention(df, tmp_path / "run")
    assert out == tmp_path / "run" / "analyses" / "attention.csv"
    assert report.discover_results(tmp_path / "run") == {"attention": out}
    with pytest.raises(ValueError, match="one sequence"):
        attn_a.bridge_attention(bridge, ids.repeat(2, 1), tokens)


def test_stale_attention_is_recomputed_and_hand_saved_attention_kept(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    steps = list_checkpoints(run_dir)
    assert len(steps) >= 2
    attn_a.write_attention(run_dir, step=steps[0])
    path = run_dir / "analyses" / "attention.csv"
    assert set(pd.read_csv(path)["step"]) == {steps[0]}
    # `tvlens report` recomputes a stale table (write_report itself never runs a model)
    from tvlens.cli import main

    assert main(["report", str(run_dir)]) == 0
    assert set(pd.read_csv(path)["step"]) == {steps[-1]}  # recomputed at the last checkpoint
    hand = pd.read_csv(path).drop(columns="step").query("head == 0")
    attn_a.save_attention(hand, run_dir)
    assert main(["report", str(run_dir)]) == 0
    assert set(pd.read_csv(path)["head"]) == {0}  # no step column: kept as saved
