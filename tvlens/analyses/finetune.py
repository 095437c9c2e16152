"""Early- versus late-layer fine-tuning (Han et al., arXiv 2412.12276).

Start from a checkpoint and train only the first ``n`` blocks, or only the last ``n``, with
the same budget: the same number of steps, learning-rate schedule, batches and seed, and the
same number of trainable parameters (the blocks are identical in shape). Every other
parameter (embedding or read-in, the other blocks, final norm, read-out) is frozen and left
bit-for-bit unchanged. The paper finds that tuning the *early* layers improves task encoding
(TD) and ICL accuracy more than tuning the late ones.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from tvlens.analyses.decodability import DEFAULT_K, Label, max_examples
from tvlens.analyses.dynamics import td_and_loss
from tvlens.models.config import TrainConfig
from tvlens.models.model import TaskModel
from tvlens.models.train import Run, load_run, lr_at, train_step
from tvlens.tasks.base import TaskFamily, derive_seed

log = logging.getLogger(__name__)

Which = Literal["early", "late"]


def block_indices(n_layers: int, n: int, which: Which) -> list[int]:
    """The first ``n`` or the last ``n`` of ``n_layers`` blocks."""
    if not 1 <= n <= n_layers:
        raise ValueError(f"n={n} layers to fine-tune must lie in 1..{n_layers}.")
    if which == "early":
        return list(range(n))
    if which == "late":
        return list(range(n_layers - n, n_layers))
    raise ValueError(f"which={which!r}; choose 'early' or 'late'.")


def block_parameters(model: TaskModel, blocks: Sequence[int]) -> dict[str, torch.nn.Parameter]:
    """The parameters of ``blocks`` in the raw module (``layers.{i}.*``), by name."""
    n_layers = model.config.n_layers
    bad = [b for b in blocks if not 0 <= b < n_layers]
    if bad or not blocks:
        raise ValueError(f"blocks {list(blocks)} must be a non-empty subset of 0..{n_layers - 1}.")
    prefixes = tuple(f"layers.{i}." for i in blocks)
    chosen = {n: p for n, p in model.raw.named_parameters() if n.startswith(prefixes)}
    if not chosen:
        names = [n for n, _ in model.raw.named_parameters()][:6]
        raise ValueError(
            f"no parameter of blocks {list(blocks)} found (parameter names start {names}); "
            "this model does not name its blocks 'layers.{i}'."
        )
    return chosen


def finetune(
    model: TaskModel,
    family: TaskFamily,
    blocks: Sequence[int],
    train: TrainConfig,
    *,
    progress: bool = False,
) -> list[float]:
    """Train only ``blocks`` of ``model`` in place for ``train.steps`` steps; return the
    training loss per step.

    The optimiser holds only the blocks' parameters, so neither gradients nor weight decay
    touch the frozen ones. Batches are a pure function of ``train.seed`` and the step, so two
    calls with the same ``train`` see the same data in the same order.
    """
    train.validate()
    params = block_parameters(model, blocks)
    frozen = [p for n, p in model.raw.named_parameters() if n not in params]
    device = next(model.raw.parameters()).device
    opt = torch.optim.AdamW(
        params.values(), lr=train.lr, weight_decay=train.weight_decay, betas=(0.9, 0.98)
    )
    data_seed = derive_seed("finetune", train.seed) % (2**31)
    for p in frozen:
        p.requires_grad_(False)
    losses = []
    model.raw.train()
    try:
        for step in tqdm(range(train.steps), desc="finetune", disable=None if progress else True):
            batch = family.sample("train", train.batch_size, seed=data_seed, step=step)
            loss = train_step(
                model.raw,
                opt,
                family,
                batch.to(device),
                lr=lr_at(step, train),
                grad_clip=train.grad_clip,
            )
            losses.append(float(loss))
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
    return losses


def compare_finetuning(
    run: Run | Path | str,
    *,
    step: int | None = None,
    n_layers: int | None = None,
    steps: int = 200,
    lr: float | None = None,
    batch_size: int | None = None,
    seeds: Sequence[int] = (0,),
    n_examples: Sequence[int] | None = None,
    label: Label | None = None,
    split: str | None = None,
    n: int | None = None,
    k: int = DEFAULT_K,
    eval_seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Fine-tune the first vs the last ``n_layers`` blocks from checkpoint ``step``.

    Both variants get the same budget: ``steps`` AdamW steps on the run's training mixture
    with a fresh one-cycle schedule peaking at ``lr`` (default: the run's), batch size
    (default: the run's) and, per entry of ``seeds``, the same batches. ``n_layers``
    defaults to half the blocks. Evaluation uses one fixed prompt set (``eval_seed``).

    Returns one row per (variant, seed, layer, n_examples), variant ``start``, ``early`` or
    ``late``, with TD (LOO kNN), loss and ICL performance, and their changes from the start
    (``d_td``, ``d_loss``, ``d_icl_loss``, ``d_icl_performance``).
    """
    base_run = run if isinstance(run, Run) else load_run(run, step)
    if step is not None and base_run.step != step:
        base_run = load_run(base_run.dir, step)
    family, cfg = base_run.family, base_run.config
    n_total = cfg.model.n_layers
    n_layers = max(1, n_total // 2) if n_layers is None else n_layers
    if not seeds:
        raise ValueError("seeds is empty; pass at least one fine-tuning seed.")
    budget = replace(
        cfg.train,
        steps=steps,
        lr=cfg.train.lr if lr is None else lr,
        batch_size=cfg.train.batch_size if batch_size is None else batch_size,
    )
    if n_examples is None:
        n_examples = [max_examples(family)]
    ev = {"label": label, "split": split, "n": n, "n_examples": n_examples, "k": k}
    start = td_and_loss(base_run.model, family, seed=eval_seed, **ev)
    frames = [start.assign(variant="start", blocks="", seed=-1)]
    state = copy.deepcopy(base_run.model.raw.state_dict())
    for seed in seeds:
        for which in ("early", "late"):
            model = TaskModel(replace(cfg.model), family)
            model.raw.load_state_dict(state)
            blocks = block_indices(n_total, n_layers, which)
            log.info("fine-tuning blocks %s (%s), seed %d, %d steps", blocks, which, seed, steps)
            finetune(model, family, blocks, replace(budget, seed=seed), progress=progress)
            df = td_and_loss(model, family, seed=eval_seed, **ev)
            frames.append(df.assign(variant=which, blocks=",".join(map(str, blocks)), seed=seed))
    df = pd.concat(frames, ignore_index=True)
    front = ["variant", "blocks", "seed"]
    df = df[[*front, *[c for c in df.columns if c not in front]]]
    df.insert(0, "start_step", base_run.step)
    df.insert(1, "ft_steps", steps)
    keys = ["method", "layer", "n_examples"]
    ref = start.set_index(keys)
    idx = pd.MultiIndex.from_frame(df[keys])
    for col in ("td", "loss", "icl_loss", "icl_performance"):
        df[f"d_{col}"] = df[col].to_numpy() - ref[col].reindex(idx).to_numpy()
    return df


def finetune_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant (over seeds): mean and std of ΔTD (averaged over layers), ΔICL loss and
    the final ICL loss, at the largest number of examples in the frame."""
    d = df[(df["variant"] != "start") & (df["n_examples"] == df["n_examples"].max())]
    per_seed = d.groupby(["variant", "seed"], sort=False).agg(
        d_td=("d_td", "mean"),
        td=("td", "mean"),
        icl_loss=("icl_loss", "first"),
        d_icl_loss=("d_icl_loss", "first"),
    )
    out = per_seed.groupby("variant", sort=False).agg(["mean", "std", "count"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    return out.reset_index()
