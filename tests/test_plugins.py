"""The extension contract, kept true: a new task family with a field of its own is one module
(its registry line included), and a new LLM analysis is one module plus its figure module;
both run through the ``tvlens`` command line as plug-ins (``$TVLENS_PLUGINS``)."""

from __future__ import annotations

import json
import sys
import textwrap

import pandas as pd
import pytest
import torch

from tvlens import registry
from tvlens.cli import main
from tvlens.io import read_provenance

COIN = '''
"""A coin whose bias has a Beta(a, a) prior: a plug-in family in one module."""
from dataclasses import dataclass

import numpy as np
import torch

from tvlens.tasks import register_family
from tvlens.tasks.base import ConfigError, VocabConfig
from tvlens.tasks.dice import Dice


@dataclass(frozen=True)
class CoinConfig(VocabConfig):
    name: str = "coin"
    vocab: int = 2
    beta_a: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.vocab != 2 or self.beta_a <= 0:
            raise ConfigError("coin: vocab must be 2 and beta_a > 0.")


class Coin(Dice):
    name = "coin"
    config_class = CoinConfig

    def sample_prior(self, n, g):
        seed = int(torch.randint(2**31 - 1, (1,), generator=g))
        p = torch.as_tensor(np.random.default_rng(seed).beta(self.config.beta_a, self.config.beta_a, n))
        return torch.stack([p, 1 - p], -1).float()

    def learning_predictive(self, batch):
        counts, t = self._counts(batch)
        return (counts + self.config.beta_a) / (t + 2 * self.config.beta_a)


register_family("coin", "toyplug.coin:Coin")
'''

RESID_NORM = '''
"""A plug-in LLM analysis: the residual-stream norm at a prompt's last token, by layer."""
from dataclasses import dataclass

import pandas as pd

from tvlens.hooks.core import check_layers, hook_name
from tvlens.options import Options, option
from tvlens.registry import Analysis, driver, register


@dataclass(frozen=True)
class ResidNormOptions(Options):
    section = "resid_norm"
    prompt: str = option("cold -> hot\\nbig ->", "the prompt")
    layers: tuple[int, ...] | None = option(None, "layers to sweep", min=0)


@driver("resid_norm", ResidNormOptions, kind="llm")
def analyse_resid_norm(run, o, progress):
    layers = check_layers(run.model, o.layers)
    names = [hook_name(layer, run.settings.point) for layer in layers]
    _, cache = run.model.run_with_cache(o.prompt, names_filter=names)
    rows = [{"layer": l, "norm": float(cache[n][0, -1].norm())} for l, n in zip(layers, names)]
    return {"llm_resid_norm": pd.DataFrame(rows)}


register(Analysis("resid_norm", analyse_resid_norm, ("llm_resid_norm",),
                  ("toyplug.resid_norm_viz",), "residual norm by layer", kind="llm"))
'''

RESID_NORM_VIZ = """
import plotly.express as px

FIGURES = {"llm_resid_norm": lambda df: px.line(df, x="layer", y="norm")}
"""


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    pkg = tmp_path / "toyplug"
    pkg.mkdir()
    files = {"coin.py": COIN, "resid_norm.py": RESID_NORM, "resid_norm_viz.py": RESID_NORM_VIZ}
    (pkg / "__init__.py").write_text("from toyplug import coin, resid_norm  # noqa: F401\n")
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TVLENS_PLUGINS", "toyplug")
    saved = dict(registry.ANALYSES)
    yield pkg
    registry.ANALYSES.clear()
    registry.ANALYSES.update(saved)
    registry._PLUGINS_LOADED.discard("toyplug")
    from tvlens.tasks.registry import FAMILY_CLASSES

    FAMILY_CLASSES.pop("coin", None)
    for mod in [m for m in sys.modules if m.startswith("toyplug")]:
        del sys.modules[mod]


def test_a_family_with_its_own_field_is_one_module(plugin, tmp_path, capsys):
    out = tmp_path / "coin_run"
    tiny = ["--steps", "4", "--layers", "1", "--d-model", "16", "--set", "model.n_heads=2",
            "--set", "model.d_mlp=32", "--set", "train.batch_size=8", "--set", "family.seq_len=8",
            "--set", "train.eval_size=8"]  # fmt: skip
    argv = ["train", "--family", "coin", "--set", "family.beta_a=0.5", "--out", str(out)]
    assert main(argv + tiny) == 0, capsys.readouterr().err
    family = json.loads((out / "config.json").read_text())["family"]
    # the run's config holds the coin's fields, and only them
    assert family["beta_a"] == 0.5 and family["vocab"] == 2
    assert "dim" not in family and "extra" not in family
    # the family's own learner is used: Beta(a, a) posterior mean after one head is (1+a)/(1+2a)
    from tvlens.models import load_run

    run = load_run(out)
    batch = run.family.sample("major", 4, seed=0)
    pred = run.family.learning_predictive(batch)
    first = batch.targets[:, 0]
    expected = (1 + 0.5) / (1 + 2 * 0.5)
    assert torch.allclose(pred[torch.arange(4), 1, first], torch.tensor(expected))
    tables, _ = registry.run_analyses(run, ["attention"])
    assert not tables["attention"].empty
    # a field of another family, or a typo, is refused with the valid ones named
    assert (
        main(
            ["train", "--family", "coin", "--set", "family.beta_b=1", "--out", str(tmp_path / "x")]
        )
        == 1
    )
    assert "unknown field(s) ['beta_b'] for family 'coin'" in capsys.readouterr().err


def test_an_llm_analysis_is_one_module_plus_its_figure(plugin, tmp_path, capsys):
    from tvlens.llm.tiny import build_tiny_checkpoint

    model_dir = build_tiny_checkpoint(tmp_path / "llama", "llama", seed=1)
    out = tmp_path / "llm_run"
    argv = ["llm", "--model", str(model_dir), "--out", str(out), "--analyses", "resid_norm,icl"]
    argv += ["--layers", "1", "--prompt", "up -> down\nleft ->", "--shots", "0", "--n-prompts", "3"]
    assert main(argv) == 0, capsys.readouterr().err
    df = pd.read_csv(out / "analyses" / "llm_resid_norm.csv")
    assert df["layer"].tolist() == [1] and (df["norm"] > 0).all()
    prov = read_provenance(out / "analyses")["llm_resid_norm.csv"]
    assert prov["analysis"] == "resid_norm"
    assert prov["options"] == {"prompt": "up -> down\nleft ->", "layers": [1]}
    assert prov["source"]["template"] and "weights_sha256" in prov["source"]
    config = json.loads((out / "config.json").read_text())
    assert set(config["analyses"]) == {"resid_norm", "icl"}
    figure = registry.get("resid_norm", "llm").figure_functions()["llm_resid_norm"](df)
    assert len(figure.data) == 1
    # the generated flag validates like any option
    assert main([*argv[:-8], "--analyses", "resid_norm", "--layers", "-1", "--force"]) == 1
    assert "resid_norm.layers=(-1,) must be at least 0" in capsys.readouterr().err
