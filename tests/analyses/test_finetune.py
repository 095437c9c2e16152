"""Early- vs late-layer fine-tuning: what is frozen stays bit-identical, budgets are equal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny import tiny_config

from tvlens.analyses.finetune import (
    block_indices,
    block_parameters,
    compare_finetuning,
    finetune,
    finetune_summary,
)
from tvlens.models import ModelConfig, TaskModel, TrainConfig, train
from tvlens.tasks import make_family


def _model(n_layers: int = 3):
    fam = make_family(name="dice", seq_len=8)
    return TaskModel(ModelConfig(n_layers=n_layers, d_model=16, n_heads=2, d_mlp=32), fam), fam


def test_block_indices_pick_the_first_or_last_n():
    assert block_indices(6, 2, "early") == [0, 1]
    assert block_indices(6, 2, "late") == [4, 5]
    with pytest.raises(ValueError, match="1..6"):
        block_indices(6, 7, "early")
    with pytest.raises(ValueError, match="'early' or 'late'"):
        block_indices(6, 2, "middle")  # type: ignore[arg-type]


def test_early_and_late_blocks_hold_the_same_number_of_parameters():
    model, _ = _model(4)
    early = block_parameters(model, block_indices(4, 2, "early"))
    late = block_parameters(model, block_indices(4, 2, "late"))
    assert sum(p.numel() for p in early.values()) == sum(p.numel() for p in late.values())
    assert all(name.startswith(("layers.0.", "layers.1.")) for name in early)
    with pytest.raises(ValueError, match="subset of 0..3"):
        block_parameters(model, [4])


@pytest.mark.parametrize("which", ["early", "late"])
def test_only_the_chosen_blocks_change(which):
    model, fam = _model(3)
    before = {k: v.clone() for k, v in model.raw.state_dict().items()}
    blocks = block_indices(3, 1, which)
    budget = TrainConfig(steps=5, batch_size=4, lr=1e-2, warmup_frac=0.0)
    losses = finetune(model, fam, blocks, budget)
    assert len(losses) == 5
    prefix = f"layers.{blocks[0]}."
    for name, value in model.raw.state_dict().items():
        same = torch.equal(value, before[name])
        if name.startswith(prefix) and "weight" in name and "ln" not in name:
            assert not same, f"{name} was not trained"
        elif not name.startswith(prefix):
            assert same, f"{name} changed but is frozen"
    # gradients are re-enabled afterwards (the model is usable for further training)
    assert all(p.requires_grad for p in model.raw.parameters())


def test_both_variants_see_the_same_batches():
    model, fam = _model(2)
    seen: dict[str, list] = {"early": [], "late": []}
    sample = fam.sample

    for which in ("early", "late"):

        def spy(split, n, *, seed=0, step=0, _which=which):
            seen[_which].append((split, n, seed, step))
            return sample(split, n, seed=seed, step=step)

        fam.sample = spy  # type: ignore[method-assign]
        finetune(model, fam, block_indices(2, 1, which), TrainConfig(steps=3, batch_size=2))
    fam.sample = sample  # type: ignore[method-assign]
    assert seen["early"] == seen["late"] and len(seen["early"]) == 3


def test_finetuning_lowers_the_training_loss():
    model, fam = _model(2)
    budget = TrainConfig(steps=20, batch_size=8, lr=1e-2, warmup_frac=0.1, seed=3)
    losses = finetune(model, fam, [0, 1], budget)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = tiny_config("dice", steps=12)
    cfg = replace(cfg, model=replace(cfg.model, n_layers=2))
    return train(cfg, tmp_path_factory.mktemp("ft") / "run", progress=False)


def test_compare_finetuning_table(tiny_run):
    df = compare_finetuning(
        tiny_run.dir, step=3, n_layers=1, steps=3, n=30, seeds=(0, 1), progress=False
    )
    assert set(df["variant"]) == {"start", "early", "late"}
    assert (df["start_step"] == 3).all() and (df["ft_steps"] == 3).all()
    start = df[df["variant"] == "start"]
    assert (start[["d_td", "d_icl_loss", "d_loss"]] == 0).all().all()
    assert set(df.loc[df["variant"] == "early", "blocks"]) == {"0"}
    assert set(df.loc[df["variant"] == "late", "blocks"]) == {"1"}
    assert len(df) == 2 * (1 + 2 * 2)  # layers × (start + 2 variants × 2 seeds)
    late = df[df["variant"] == "late"]
    assert np.allclose(late["d_icl_loss"], late["icl_loss"] - start["icl_loss"].iloc[0])
    summary = finetune_summary(df).set_index("variant")
    assert summary.loc["early", "d_td_count"] == 2
    # the checkpoint on disk is untouched
    again = compare_finetuning(tiny_run.dir, step=3, n_layers=1, steps=1, n=30, progress=False)
    assert again[again["variant"] == "start"]["td"].tolist() == start["td"].tolist()
