"""Hendel-style task vectors in a pretrained LM (Hendel, Geva & Globerson 2023).

For every query ``x`` a *source* prompt ``S + x'`` (demonstrations and a dummy query, none of
them ``x``) is run and its last-token residual at layer ℓ is kept: the task vector θ(S). The
zero-shot query ``"x ->"`` is then run with its last-token residual at layer ℓ replaced by θ.
Sweeping ℓ gives accuracy by layer, beside the zero-shot and the full few-shot (ICL) accuracy
of the same queries. Patching uses :func:`tvlens.hooks.rowwise.patch_rows_hook`, an ordinary
TL hook acting at each row's query token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from torch import Tensor

from tvlens.hooks.core import check_layers, hook_name
from tvlens.hooks.rowwise import patch_rows_hook
from tvlens.llm.config import DEFAULT_TEMPLATE, TaskVectorOptions
from tvlens.llm.icl import accuracy_columns
from tvlens.llm.prompts import (
    BosPolicy,
    Scored,
    ScoreMode,
    Template,
    encode,
    layer_sweep,
    run_prompts,
    sample_prompts,
    tokenizer_of,
)
from tvlens.llm.tasks import NLTask, load_tasks
from tvlens.registry import driver


def condition_row(task: str, layer: int, condition: str, scored: Scored, **extra: Any) -> dict:
    """One tidy row of an intervention sweep."""
    return {
        "task": task,
        "layer": layer,
        "condition": condition,
        **accuracy_columns(scored),
        **extra,
    }


def task_vector_table(
    model: Any,
    task: NLTask,
    layers: Sequence[int] | None = None,
    shots: int = 5,
    n_prompts: int = 50,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    mode: ScoreMode = "first_token",
    point: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
    engine: str = "auto",
    bos: BosPolicy = "auto",
    dummy_query: bool = True,
) -> pd.DataFrame:
    """Accuracy of zero-shot queries patched with their task vector, by layer.

    ``dummy_query`` (Hendel et al.'s ``S + x'``) takes θ from a prompt ending in another
    query; without it θ comes from the full ICL prompt of the query itself (an upper bound
    that lets the answer leak through θ). Returns ``task, layer, condition, accuracy,
    p_answer, n, shots`` with ``condition`` in ``zero_shot`` and ``icl`` (the same at every
    layer, repeated for plotting), ``task_vector`` (each query its own θ) and
    ``mean_task_vector`` (θ averaged over the source prompts: the query-independent part,
    which on small models carries the task better than one prompt's θ). First-token scoring
    reruns each batch from layer ℓ only (:func:`~tvlens.llm.prompts.layer_sweep`).
    """
    tok = tokenizer_of(model)
    layers = check_layers(model, layers)
    names = {layer: hook_name(layer, point) for layer in layers}
    zero_prompts = sample_prompts(task, n_prompts, 0, template, seed)
    source_prompts = sample_prompts(task, n_prompts, shots, template, seed, dummy_query=dummy_query)
    if [p.target for p in zero_prompts] != [p.target for p in source_prompts]:
        raise RuntimeError("source and zero-shot prompts are misaligned; this is a bug.")
    zero = encode(tok, zero_prompts, bos)
    icl = encode(tok, sample_prompts(task, n_prompts, shots, template, seed), bos)
    source = encode(tok, source_prompts, bos)
    base = run_prompts(model, zero, mode=mode, batch_size=batch_size)
    full = run_prompts(model, icl, mode=mode, batch_size=batch_size)
    vectors = run_prompts(
        model, source, capture=list(names.values()), mode=mode, batch_size=batch_size
    ).states

    means = {name: v.mean(0, keepdim=True) for name, v in vectors.items()}

    def hooks_at(layer: int, rows: Tensor, pos: Tensor) -> list[tuple[str, Any]]:
        return [(names[layer], patch_rows_hook(vectors[names[layer]][rows], pos))]

    def mean_at(layer: int, rows: Tensor, pos: Tensor) -> list[tuple[str, Any]]:
        return [(names[layer], patch_rows_hook(means[names[layer]], pos))]

    patched = layer_sweep(
        model, zero, layers, hooks_at, batch_size, engine, progress, "task vectors", mode=mode
    )
    averaged = layer_sweep(
        model, zero, layers, mean_at, batch_size, engine, progress, "mean task vector", mode=mode
    )
    rows = []
    for layer in layers:
        for condition, scored in (
            ("zero_shot", base),
            ("icl", full),
            ("task_vector", patched[layer]),
            ("mean_task_vector", averaged[layer]),
        ):
            rows.append(condition_row(task.name, layer, condition, scored, shots=shots))
    return pd.DataFrame(rows)


@driver("task_vectors", TaskVectorOptions, kind="llm")
def analyse_task_vectors(run: Any, o: TaskVectorOptions, progress: bool) -> dict[str, pd.DataFrame]:
    """Task vectors and mean task vectors of every task, by layer (``llm_task_vectors``)."""
    s = run.settings
    frames = [
        task_vector_table(
            run.model,
            task,
            o.layers,
            o.shots,
            o.n_prompts,
            mode=s.mode,
            point=s.point,
            progress=progress,
            **run.prompt_kwargs,
        )
        for task in load_tasks(o.tasks)
    ]
    return {"llm_task_vectors": pd.concat(frames, ignore_index=True)}


def best_by_layer(df: pd.DataFrame, conditions: Sequence[str]) -> dict[str, float]:
    """The best accuracy over layers of each task × ``condition``, named with its layer."""
    out = {}
    for cond in conditions:
        for task, g in df[df["condition"] == cond].groupby("task"):
            best = g.loc[g["accuracy"].idxmax()]
            out[f"{cond} {task} best layer {int(best['layer'])}"] = float(best["accuracy"])
    return out


def headline(tables: dict[str, pd.DataFrame], run: Any = None) -> dict[str, float]:
    """The best task-vector and mean-vector accuracy of each task."""
    return best_by_layer(tables["llm_task_vectors"], ("task_vector", "mean_task_vector"))


#: deprecated name of :func:`task_vector_table` (kept for one release)
task_vector_sweep = task_vector_table
