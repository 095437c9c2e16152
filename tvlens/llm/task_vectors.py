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
from tqdm.auto import tqdm

from tvlens.hooks.core import hook_name
from tvlens.hooks.rowwise import patch_rows_hook
from tvlens.llm.prompts import (
    Scored,
    ScoreMode,
    Template,
    encode,
    run_prompts,
    sample_prompts,
    tokenizer_of,
)
from tvlens.llm.tasks import NLTask


def check_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    """``layers`` (default: all) as a list, with a clear error for out-of-range ones."""
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n))
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad or not layers:
        raise ValueError(
            f"layers {layers} are empty or out of range for a {n}-layer model (0..{n - 1})."
        )
    return layers


def condition_row(task: str, layer: int, condition: str, scored: Scored, **extra: Any) -> dict:
    """One tidy row of an intervention sweep."""
    return {
        "task": task,
        "layer": layer,
        "condition": condition,
        "accuracy": scored.accuracy,
        "p_answer": float(scored.p_answer.mean()),
        "n": int(scored.correct.numel()),
        **extra,
    }


def task_vector_sweep(
    model: Any,
    task: NLTask,
    layers: Sequence[int] | None = None,
    shots: int = 5,
    n_prompts: int = 50,
    template: str | Template = "arrow",
    seed: int = 0,
    mode: ScoreMode = "first_token",
    point: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy of zero-shot queries patched with their task vector, by layer.

    Returns ``task, layer, condition, accuracy, p_answer, n, shots`` with ``condition`` in
    ``zero_shot`` and ``icl`` (the same at every layer, repeated for plotting) and
    ``task_vector``.
    """
    tok = tokenizer_of(model)
    layers = check_layers(model, layers)
    names = [hook_name(layer, point) for layer in layers]
    zero_prompts = sample_prompts(task, n_prompts, 0, template, seed)
    source_prompts = sample_prompts(task, n_prompts, shots, template, seed, dummy_query=True)
    if [p.target for p in zero_prompts] != [p.target for p in source_prompts]:
        raise RuntimeError("source and zero-shot prompts are misaligned; this is a bug.")
    zero = encode(tok, zero_prompts)
    icl = encode(tok, sample_prompts(task, n_prompts, shots, template, seed))
    source = encode(tok, source_prompts)
    base = run_prompts(model, zero, mode=mode, batch_size=batch_size)
    full = run_prompts(model, icl, mode=mode, batch_size=batch_size)
    vectors = run_prompts(model, source, capture=names, mode=mode, batch_size=batch_size).states
    rows = []
    for layer, name in tqdm(
        list(zip(layers, names, strict=True)),
        desc="task vectors",
        disable=None if progress else True,
    ):
        theta = vectors[name]

        def hooks(idx, qpos, name=name, theta=theta):
            return [(name, patch_rows_hook(theta[idx], qpos))]

        patched = run_prompts(model, zero, hooks=hooks, mode=mode, batch_size=batch_size)
        for condition, scored in (("zero_shot", base), ("icl", full), ("task_vector", patched)):
            rows.append(condition_row(task.name, layer, condition, scored, shots=shots))
    return pd.DataFrame(rows)
