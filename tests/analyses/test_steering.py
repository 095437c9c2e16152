"""Steering along the task simplex: planted read-outs with known answers, and TL models."""

from __future__ import annotations

import pytest
import torch
from test_geometry import planted_setup  # same folder: pytest puts it on sys.path

from tvlens.analyses.steering import (
    convexity_table,
    default_alphas,
    mixture_target,
    steered_prediction,
    steering_table,
)
from tvlens.analyses.task_vectors import task_vectors
from tvlens.models import TaskModel
from tvlens.models.config import ModelConfig
from tvlens.tasks import make_family
from tvlens.tasks.base import Batch, family_config


def test_default_alphas_lie_in_the_simplex():
    a = default_alphas(3)
    assert (a >= 0).all() and torch.allclose(a.sum(-1), torch.ones(len(a)))
    rows = {tuple(round(x, 4) for x in r.tolist()) for r in a}
    assert {(0.5, 0.5, 0.0), (0.0, 0.5, 0.5), (0.3333, 0.3333, 0.3333)} <= rows
    assert len(a) == 3 + 1 + 4 and (a.max(-1).values < 1).all()
    with pytest.raises(ValueError, match="at least 2 tasks"):
        default_alphas(1)


def test_mixture_target_validates_alpha():
    family, _, tv = planted_setup()
    alpha = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(mixture_target(tv, 0, alpha), alpha @ tv.vertices(0))
    with pytest.raises(ValueError, match="one weight per major task"):
        mixture_target(tv, 0, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="convex combination"):
        mixture_target(tv, 0, torch.tensor([1.5, -0.5, 0.0]))
    with pytest.raises(ValueError, match="no task vectors at layer 3"):
        mixture_target(tv, 3, alpha)


def test_convex_steering_gives_the_mixture_when_the_readout_mixes_probabilities():
    family, model, tv = planted_setup(mix="linear")
    batch = family.sample("major", 32, seed=1)
    df = convexity_table(model, family, tv, batch, [0])
    assert len(df) == len(default_alphas(family.n_major))
    assert df["div_mixture"].abs().max() < 1e-5
    mixed = df
    # the check can fail: the geometric mixture and the vertex are measurably different
    assert (mixed["div_geometric"] > 1e-3).all()
    assert (mixed["div_vertex"] > 1e-3).all()
    assert (mixed["div_mixture_vertex"] > 1e-3).all()


def test_convexity_check_detects_a_logit_space_readout():
    family, model, tv = planted_setup(mix="geometric")
    batch = family.sample("major", 32, seed=2)
    df = convexity_table(model, family, tv, batch, [0])
    assert df["div_geometric"].abs().max() < 1e-5
    mixed = df[df["alpha_max"] < 0.999]
    assert (mixed["div_mixture"] > 1e-3).all()


def test_steering_to_each_task_on_the_planted_model():
    family, model, tv = planted_setup(k=2)
    batch = family.sample("major", 32, seed=3)
    df = steering_table(model, family, tv, batch, [0])
    to_task = df[df["condition"] == "to_task"]
    assert len(to_task) == family.n_major and (to_task["accuracy"] == 1.0).all()
    assert to_task["div_target"].abs().max() < 1e-5
    own = df[df["condition"] == "own"].iloc[0]
    assert own["accuracy"] == 1.0 and own["div_target"] < 1e-5
    unsteered = df[df["condition"] == "unsteered"].iloc[0]
    assert unsteered["div_target"] > own["div_target"]  # the posterior is not yet one-hot
    ood = family.sample("ood", 16, seed=4)
    df_ood = steering_table(model, family, tv, ood, [0])
    assert set(df_ood["condition"]) == {"to_task"}  # OOD sequences have no own task


@pytest.fixture(scope="module")
def repeated():
    """A tiny TL model and a batch in which every sequence of a task is the same sequence,
    with task vectors read at one position: each state sits exactly on its vertex."""
    family = make_family(family_config(name="dice", k=0, seq_len=10, seed=1))
    model = TaskModel(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, seed=2), family)
    model.eval()
    one = family.sample("major", 64, seed=5)
    first = [int(torch.nonzero(one.task_ids == k)[0]) for k in range(family.n_major)]
    rows = torch.tensor(first).repeat_interleave(4)
    batch = Batch(
        one.inputs[rows],
        one.targets[rows],
        one.target_mask[rows],
        one.task_ids[rows],
        one.params[rows],
        "major",
    )
    pos = [7]
    tv = task_vectors(model, family, layers=[0, 1], positions=pos, batch=batch)
    return family, model, batch, tv, pos


def test_one_hot_steering_of_the_true_task_matches_the_unsteered_model(repeated):
    family, model, batch, tv, pos = repeated
    alpha = torch.nn.functional.one_hot(batch.task_ids, family.n_major).float()
    base = steered_prediction(model, family, batch, tv, 0, None)
    for layer in (0, 1):
        own = steered_prediction(model, family, batch, tv, layer, alpha, positions=pos)
        torch.testing.assert_close(own, base, atol=1e-5, rtol=0)
        other = steered_prediction(
            model, family, batch, tv, layer, alpha.roll(1, dims=1), positions=pos
        )
        assert (other - base).abs().max() > 1e-3  # steering elsewhere does change the output
    # per-sequence α in chunks smaller than the batch gives the same prediction
    chunked = steered_prediction(model, family, batch, tv, 1, alpha, positions=pos, batch_size=5)
    whole = steered_prediction(model, family, batch, tv, 1, alpha, positions=pos)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one row per sequence"):
        steered_prediction(model, family, batch, tv, 1, alpha[:3])
    df = steering_table(model, family, tv, batch, [0, 1], positions=pos)
    unsteered = df[df["condition"] == "unsteered"]["accuracy"].iloc[0]
    own = df[df["condition"] == "own"]
    assert (own["accuracy"] == unsteered).all()
    assert set(df.columns) >= {"layer", "condition", "target", "accuracy", "div_target"}
