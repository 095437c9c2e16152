"""The mode diagnostic: is the model retrieving a known task or learning a new one?

log(KL(model ‖ retrieval) / KL(model ‖ learning)) per checkpoint and split (docs/concepts.md,
section A). Negative: the model sits closer to the Bayesian retrieval reference (posterior
over the known pool); positive: closer to the prior-conjugate learner. On OOD data this is
the signature of the two modes; across runs with ``2**k`` minor tasks it gives the heatmap
over training step × log2 N_minor. Both references come from the family
(:class:`tvlens.models.References`); nothing is re-derived here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from tvlens.analyses.geometry import masked_mean
from tvlens.hooks.core import Positions
from tvlens.models import References, eval_batches, list_checkpoints, load_run, predict
from tvlens.tasks.base import Batch, TaskFamily

#: floor for a divergence before taking the log ratio (a model equal to a reference)
KL_FLOOR = 1e-12


def mode_scores(
    model: torch.nn.Module,
    family: TaskFamily,
    batches: Mapping[str, Batch],
    refs: Mapping[str, References] | None = None,
    positions: Positions = None,
) -> pd.DataFrame:
    """The mode diagnostic of one model on each batch.

    ``model`` maps a batch's inputs to read-outs (a :class:`~tvlens.models.TaskModel` or its
    ``raw`` module). Columns: split, kl_retrieval, kl_learning (mean divergences over the
    scored ``positions``; squared errors for regression), log_ratio (natural log of their
    ratio, each floored at ``KL_FLOOR``).
    """
    refs = refs or {s: References(family, b) for s, b in batches.items()}
    rows = []
    for split, batch in batches.items():
        pred = predict(model, family, batch)
        kl_r = masked_mean(
            family.divergence(pred, refs[split].preds["retrieval"]), batch, positions
        )
        kl_l = masked_mean(family.divergence(pred, refs[split].preds["learning"]), batch, positions)
        rows.append(
            {
                "split": split,
                "kl_retrieval": kl_r,
                "kl_learning": kl_l,
                "log_ratio": math.log(max(kl_r, KL_FLOOR) / max(kl_l, KL_FLOOR)),
            }
        )
    return pd.DataFrame(rows)


def mode_table(
    run_dir: Path | str,
    steps: Sequence[int] | None = None,
    splits: Sequence[str] = ("major", "minor", "ood"),
    n: int = 256,
    positions: Positions = None,
    seed: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """The mode diagnostic at every checkpoint ``steps`` (default: all) of a run.

    The same ``n`` sequences per split are scored at every step (``minor`` is skipped when
    the run has no minor tasks). Columns: step, k, split, kl_retrieval, kl_learning,
    log_ratio.
    """
    run_dir = Path(run_dir)
    available = list_checkpoints(run_dir)
    steps = available if steps is None else sorted(int(s) for s in steps)
    if not steps:
        raise FileNotFoundError(f"{run_dir} holds no checkpoints; train the run first.")
    missing = sorted(set(steps) - set(available))
    if missing:
        raise ValueError(
            f"no checkpoints at steps {missing} in {run_dir}; available steps: {available}."
        )
    last = load_run(run_dir, steps[-1])
    family = last.family
    wanted = [s for s in splits if not (s == "minor" and family.n_minor == 0)]
    batches = eval_batches(family, n, seed=seed, splits=wanted)
    refs = {s: References(family, b) for s, b in batches.items()}
    frames = []
    for step in tqdm(steps, desc="mode diagnostic", disable=None if progress else True):
        run = last if step == steps[-1] else load_run(run_dir, step)
        df = mode_scores(run.model, family, batches, refs, positions)
        df.insert(0, "k", family.config.k)
        df.insert(0, "step", step)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def mode_heatmap_table(runs: Mapping[int, Path | str], **kwargs) -> pd.DataFrame:
    """:func:`mode_diagnostic` over several runs keyed by ``k`` (log2 N_minor; −1 = none).

    Adds the column ``log2_n_minor`` (= k) for the heatmap over step × log2 N_minor; keyword
    arguments go to :func:`mode_diagnostic`.
    """
    if not runs:
        raise ValueError("no runs given; pass {k: run_dir} for at least one run.")
    frames = []
    for k, run_dir in sorted(runs.items()):
        df = mode_table(run_dir, **kwargs)
        df["log2_n_minor"] = k
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


#: deprecated name of :func:`mode_table` (kept for one release)
mode_diagnostic = mode_table
