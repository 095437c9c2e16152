"""The mode diagnostic on models that *are* a reference, and over a run's checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_config

from tvlens.analyses.geometry import geometry_over_training
from tvlens.analyses.modes import mode_diagnostic, mode_heatmap_table, mode_scores
from tvlens.models import eval_batches, train
from tvlens.tasks import make_family
from tvlens.tasks.base import Batch, family_config


class ReferenceModel(torch.nn.Module):
    """Predicts exactly the family's retrieval or learning reference from the inputs."""

    def __init__(self, family, which: str) -> None:
        super().__init__()
        self.family, self.which = family, which
        self._p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        targets = torch.cat([inputs[:, 1:], torch.zeros_like(inputs[:, :1])], dim=1)
        ids = torch.zeros(inputs.shape[0], dtype=torch.long)
        mask = torch.ones_like(targets, dtype=torch.bool)
        batch = Batch(inputs, targets, mask, ids, ids, "x")
        fn = getattr(self.family, f"{self.which}_predictive")
        return fn(batch).clamp_min(1e-12).log()


@pytest.mark.parametrize("name", ["dice", "markov"])
def test_mode_scores_of_the_references(name):
    family = make_family(family_config(name=name, k=2, seq_len=16, vocab=4))
    batches = eval_batches(family, 32, seed=0)
    retrieval = mode_scores(ReferenceModel(family, "retrieval"), family, batches)
    learning = mode_scores(ReferenceModel(family, "learning"), family, batches)
    assert list(retrieval["split"]) == ["major", "minor", "ood"]
    assert (retrieval["kl_retrieval"] < 1e-6).all() and (retrieval["kl_learning"] > 1e-3).all()
    assert (learning["kl_learning"] < 1e-6).all()
    assert (retrieval["log_ratio"] < -5).all() and (learning["log_ratio"] > 5).all()
    row = retrieval.iloc[0]
    assert row["log_ratio"] == pytest.approx(
        math.log(max(row["kl_retrieval"], 1e-12) / row["kl_learning"])
    )


def test_mode_diagnostic_over_checkpoints(tmp_path):
    cfg = tiny_config(steps=8, k=1)
    train(cfg, tmp_path / "run", progress=False)
    df = mode_diagnostic(tmp_path / "run", n=16)
    steps = sorted(df["step"].unique())
    assert steps[0] == 0 and steps[-1] == 8
    assert set(df["split"]) == {"major", "minor", "ood"} and (df["k"] == 1).all()
    assert df[["kl_retrieval", "kl_learning", "log_ratio"]].notna().all().all()
    # the untrained model is far from both references; training moves it towards them
    first, last = df[df["step"] == 0], df[df["step"] == 8]
    assert last["kl_retrieval"].mean() < first["kl_retrieval"].mean()
    heat = mode_heatmap_table({1: tmp_path / "run"}, n=16, steps=[0, 8], splits=["ood"])
    assert set(heat["log2_n_minor"]) == {1} and len(heat) == 2
    with pytest.raises(ValueError, match="no checkpoints at steps"):
        mode_diagnostic(tmp_path / "run", steps=[5])
    geo = geometry_over_training(tmp_path / "run", steps=[0, 8], n=8, n_per_task=4)
    assert sorted(geo["step"].unique()) == [0, 8] and set(geo["layer"]) == {0, 1}
    assert set(geo["split"]) == {"major", "minor", "ood"}
    assert (geo["r2_affine"] <= 1).all() and (geo["n_states"] == 8 * 8).all()
    with pytest.raises(ValueError, match="no checkpoints at steps"):
        geometry_over_training(tmp_path / "run", steps=[5])
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        mode_diagnostic(tmp_path / "empty")
