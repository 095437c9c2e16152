"""Training dynamics of encoding and decoding: TD and ICL loss over a run's checkpoints.

Han et al. (arXiv 2412.12276) find that the latent task becomes decodable from the middle
layers (encoding) at the same time as the in-context loss falls (decoding). Here every saved
checkpoint is scored on the *same* prompts: TD per layer (leave-one-out kNN, k = 10, by
default) and the model's ICL loss. The correlation between TD and ICL performance, across
checkpoints or across classes (tasks / concepts), is reported as a number with its p-value
(scipy).

ICL **performance** is ``1 − loss / loss_context_free``: the fraction of a context-free
predictor's loss that the model removes (regression: the context-free predictor says 0, so
the denominator is ``E[y²]``; token families: the uniform distribution, ``log V``). It is
1 for a perfect predictor and 0 for one that ignores the context.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from jaxtyping import Float
from scipy import stats
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.analyses.decodability import (
    DEFAULT_K,
    Label,
    Method,
    Representations,
    collect_representations,
    knn_loo_predict,
    max_examples,
)
from tvlens.models.evaluate import predict
from tvlens.models.train import list_checkpoints, load_run
from tvlens.options import Options, option
from tvlens.registry import driver
from tvlens.tasks.base import Batch, TaskFamily

log = logging.getLogger(__name__)


def context_free_loss(family: TaskFamily, batch: Batch) -> Float[Tensor, "batch pos"]:
    """Loss of a predictor that ignores the context (0 for regression, uniform otherwise):
    :meth:`TaskFamily.context_free_loss <tvlens.tasks.base.TaskFamily.context_free_loss>`."""
    return family.context_free_loss(batch)


def model_losses(model: Any, family: TaskFamily, batch: Batch) -> Float[Tensor, "batch pos"]:
    """The model's per-position loss on ``batch`` (0 where unscored)."""
    model = getattr(model, "model", model)  # a Run
    return family.prediction_loss(predict(model, family, batch), batch)


def reference_losses(family: TaskFamily, batch: Batch) -> dict[str, Float[Tensor, "batch pos"]]:
    """Per-position losses of the family's references on ``batch``.

    Always ``learning`` (the prior-conjugate learner: ridge for regression) and
    ``retrieval`` (posterior over the pool); concept families add ``bayes`` (Bayes-optimal
    under the prior over concepts) and ``oracle`` (knows each sequence's concept).
    """
    preds = {
        "retrieval": family.retrieval_predictive(batch),
        "learning": family.learning_predictive(batch),
    }
    if family.has("bayes_predictive"):
        preds["bayes"] = family.bayes_predictive(batch)
    if family.has("oracle_predictive"):
        preds["oracle"] = family.oracle_predictive(batch)
    return {name: family.prediction_loss(p, batch) for name, p in preds.items()}


def _performance(loss: float, base: float) -> float:
    return 1.0 - loss / base if base > 0 else float("nan")


def td_and_loss(
    model: Any,
    family: TaskFamily,
    *,
    n_examples: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    methods: Sequence[Method] = ("knn",),
    label: Label | None = None,
    split: str | None = None,
    n: int | None = None,
    k: int = DEFAULT_K,
    seed: int = 0,
) -> pd.DataFrame:
    """TD per layer and the model's ICL loss, on one fixed set of prompts.

    Columns: method, layer, n_examples, td, chance, loss (at that query position),
    performance, icl_loss (mean over all scored positions), icl_performance. The prompts
    depend only on ``seed``, so scores of different checkpoints or fine-tunes are paired.
    """
    if n_examples is None:
        top = max_examples(family)
        n_examples = sorted({0, top // 4, top // 2, top})
    reps = collect_representations(
        model,
        family,
        label=label,
        split=split,
        n=n,
        n_examples=n_examples,
        layers=layers,
        seed=seed,
    )
    loss = model_losses(model, family, reps.batch)
    base = context_free_loss(family, reps.batch)
    df = reps.decode(methods=methods, k=k, seed=seed)
    by_pos = {
        pos: (float(loss[:, pos].mean()), float(base[:, pos].mean())) for pos in reps.positions
    }
    df["loss"] = [by_pos[p][0] for p in df["pos"]]
    df["performance"] = [_performance(*by_pos[p]) for p in df["pos"]]
    mask = reps.batch.target_mask
    df["icl_loss"] = float(loss.sum() / mask.sum())
    df["icl_performance"] = _performance(float(loss.sum()), float(base.sum()))
    cols = ["method", "layer", "n_examples", "td", "chance", "loss", "performance"]
    return df[[*cols, "icl_loss", "icl_performance", "n", "n_classes"]]


def decodability_dynamics(
    run_dir: Path | str,
    *,
    steps: Sequence[int] | None = None,
    n_examples: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    methods: Sequence[Method] = ("knn",),
    label: Label | None = None,
    split: str | None = None,
    n: int | None = None,
    k: int = DEFAULT_K,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`td_and_loss` at every checkpoint of a run (same prompts throughout).

    Columns: step plus those of :func:`td_and_loss`. This is the coupled-emergence frame.
    """
    run_dir = Path(run_dir)
    steps = list_checkpoints(run_dir) if steps is None else list(steps)
    if not steps:
        raise FileNotFoundError(f"{run_dir} holds no checkpoints; train the run first.")
    frames = []
    for step in tqdm(steps, desc="checkpoints", disable=None if progress else True):
        run = load_run(run_dir, step)
        df = td_and_loss(
            run.model,
            run.family,
            n_examples=n_examples,
            layers=layers,
            methods=methods,
            label=label,
            split=split,
            n=n,
            k=k,
            seed=seed,
        )
        df.insert(0, "step", step)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class DynamicsOptions(Options):
    """Options of :func:`analyse_dynamics`."""

    section = "dynamics"
    seed: int = option(0, "seed of the probe sequences")
    n: int | None = option(None, "sequences per class (default: the family's)", min=2)


@driver("dynamics", DynamicsOptions)
def analyse_dynamics(run: Any, o: DynamicsOptions, progress: bool) -> dict[str, pd.DataFrame]:
    """TD and ICL loss at every checkpoint of a trained run (:func:`decodability_dynamics`);
    writes ``analyses/decodability_dynamics.csv``. A run with a single checkpoint has no
    dynamics: the result is then empty and nothing is written."""
    if len(run.checkpoint_steps()) <= 1:
        log.info("%s has one checkpoint: no decodability dynamics", run.dir)
        return {}
    return {
        "decodability_dynamics": decodability_dynamics(
            run.dir, n=o.n, seed=o.seed, progress=progress
        )
    }


# ---------------------------------------------------------------------- correlations
def td_performance_correlation(
    df: pd.DataFrame,
    x: str = "td",
    y: str = "performance",
    method: Literal["pearson", "spearman"] = "pearson",
    within: str | None = None,
) -> dict[str, float]:
    """Correlation of ``df[x]`` with ``df[y]`` across rows: ``{"r", "p", "n"}`` (scipy).

    ``within`` names a column to control for: both variables are centred within each of its
    groups (e.g. ``within="n_examples"`` removes what TD and performance share only because
    both grow with the number of examples), and the p-value uses ``n − 2 − (groups − 1)``
    degrees of freedom. ``r`` is NaN with fewer than 3 rows or a constant column.
    """
    for col in (x, y, *([within] if within else [])):
        if col not in df:
            raise KeyError(f"column {col!r} missing; the frame has {list(df.columns)}.")
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method={method!r}; choose 'pearson' or 'spearman'.")
    d = df[[x, y, *([within] if within else [])]].dropna()
    n = len(d)
    a, b = d[x].to_numpy(float), d[y].to_numpy(float)
    if method == "spearman":
        a, b = stats.rankdata(a), stats.rankdata(b)
    n_groups = 1
    if within:
        groups = d[within].to_numpy()
        n_groups = len(np.unique(groups))
        a = a - pd.Series(a).groupby(groups).transform("mean").to_numpy()
        b = b - pd.Series(b).groupby(groups).transform("mean").to_numpy()
    dof = n - 2 - (n_groups - 1)
    if dof < 1 or np.ptp(a) < 1e-12 or np.ptp(b) < 1e-12:
        return {"r": np.nan, "p": np.nan, "n": n}
    r = float(np.corrcoef(a, b)[0, 1])
    r = max(-1.0, min(1.0, r))
    t = r * math.sqrt(dof / max(1e-300, 1 - r * r))
    p = float(2 * stats.t.sf(abs(t), dof))
    return {"r": r, "p": p, "n": n}


def group_scores(
    reps: Representations,
    model: Any,
    family: TaskFamily,
    *,
    layer: int,
    k: int = DEFAULT_K,
) -> pd.DataFrame:
    """Per class (task or concept) × number of examples: TD and the model's ICL performance.

    TD of a class is its leave-one-out kNN recall at ``layer``; performance is computed on
    the same prompts at the same query position. The references' performance
    (``perf_<name>``, see :func:`reference_losses`) is given beside the model's, and
    ``gap_retrieval`` is the model's loss minus the retrieval reference's (the Bayes
    predictor of the training mixture): classes differ in how hard they are even for Bayes,
    which the raw performance mixes in. Columns: layer, n_examples, group, td, loss,
    performance, perf_*, gap_retrieval, n.
    """
    if layer not in reps.layers:
        raise ValueError(f"layer {layer} was not captured; captured layers are {reps.layers}.")
    li = reps.layers.index(layer)
    loss = model_losses(model, family, reps.batch)
    base = context_free_loss(family, reps.batch)
    refs = reference_losses(family, reps.batch)
    rows = []
    for pi, (n_ex, pos) in enumerate(zip(reps.n_examples, reps.positions, strict=True)):
        pred = knn_loo_predict(reps.reps[:, li, pi], reps.labels, k)
        for group in reps.labels.unique().tolist():
            sel = reps.labels == group
            bg = float(base[sel, pos].mean())
            lg = float(loss[sel, pos].mean())
            row = {
                "layer": layer,
                "n_examples": n_ex,
                "group": group,
                "td": float((pred[sel] == group).double().mean()),
                "loss": lg,
                "performance": _performance(lg, bg),
            }
            for name, ref in refs.items():
                row[f"perf_{name}"] = _performance(float(ref[sel, pos].mean()), bg)
            # excess loss over the exact posterior predictive of the training prior: how far
            # the model is from Bayes on this class, free of the class's own difficulty
            row["gap_retrieval"] = lg - float(refs["retrieval"][sel, pos].mean())
            row["n"] = int(sel.sum())
            rows.append(row)
    return pd.DataFrame(rows)


def emergence_correlation(
    dynamics: pd.DataFrame, n_examples: int | None = None, method: str = "knn"
) -> pd.DataFrame:
    """Across checkpoints, per layer: correlation of TD with ICL performance (r, p, n).

    Uses the rows at ``n_examples`` (default: the largest in the frame).
    """
    n_ex = int(dynamics["n_examples"].max()) if n_examples is None else n_examples
    d = dynamics[(dynamics["n_examples"] == n_ex) & (dynamics["method"] == method)]
    rows = []
    for layer, g in d.groupby("layer"):
        res = td_performance_correlation(g, "td", "icl_performance")
        rows.append({"layer": layer, "n_examples": n_ex, "over": "checkpoints", **res})
    return pd.DataFrame(rows)


def half_rise_step(steps: Sequence[float], values: Sequence[float]) -> float:
    """The first step at which ``values`` has covered half its way from the first value to
    its extreme (max if it rises overall, min if it falls), linearly interpolated."""
    s, v = np.asarray(steps, float), np.asarray(values, float)
    order = np.argsort(s)
    s, v = s[order], v[order]
    if len(v) < 2:
        return float("nan")
    rising = v[-1] >= v[0]
    extreme = v.max() if rising else v.min()
    target = v[0] + 0.5 * (extreme - v[0])
    if abs(extreme - v[0]) < 1e-12:
        return float("nan")
    past = (v >= target) if rising else (v <= target)
    i = int(np.argmax(past))
    if i == 0:
        return float(s[0])
    frac = (target - v[i - 1]) / (v[i] - v[i - 1])
    return float(s[i - 1] + frac * (s[i] - s[i - 1]))


def emergence_steps(
    dynamics: pd.DataFrame, n_examples: int | None = None, method: str = "knn"
) -> pd.DataFrame:
    """Per layer: the step at which TD has risen half-way (:func:`half_rise_step`) beside the
    step at which the ICL loss has fallen half-way. Close steps mean the two emerge together.

    Columns: layer, n_examples, td_half_step, loss_half_step, td_start, td_end.
    """
    n_ex = int(dynamics["n_examples"].max()) if n_examples is None else n_examples
    d = dynamics[(dynamics["n_examples"] == n_ex) & (dynamics["method"] == method)]
    loss = d.groupby("step")["icl_loss"].first()
    loss_half = half_rise_step(loss.index.to_numpy(), loss.to_numpy())
    rows = []
    for layer, g in d.groupby("layer"):
        g = g.sort_values("step")
        rows.append(
            {
                "layer": layer,
                "n_examples": n_ex,
                "td_half_step": half_rise_step(g["step"].to_numpy(), g["td"].to_numpy()),
                "loss_half_step": loss_half,
                "td_start": float(g["td"].iloc[0]),
                "td_end": float(g["td"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)
