"""Function vectors (Todd et al. 2024) in a pretrained LM.

1. **Mean head outputs.** Run clean ICL prompts of a task and average every head's output
   ``z`` (``blocks.{l}.attn.hook_z``) at the query token: ``z̄[l, h]``.
2. **Causal indirect effect (IE).** Run ICL prompts whose labels are shuffled (the
   input-output mapping is broken), patch ``z̄[l, h]`` into head ``(l, h)`` at the query
   token, and measure the rise in the probability of the correct answer's first token:
   ``IE(l, h) = mean_prompts P_patched(y) − P_corrupted(y)``.
3. **Function vector.** The heads with the largest IE are summed through their output
   projections: ``v = Σ_{(l,h) ∈ top-k} z̄[l, h] W_O[l, h]`` (a ``d_model`` vector).
4. **Intervention.** ``v`` is added to the residual stream (``resid_post`` of layer ℓ) at the
   query token of zero-shot prompts; sweeping ℓ gives accuracy by layer.

The IE sweep reuses the patching engine's bridge runner
(:class:`tvlens.hooks.suffix.BridgeSuffixRunner`): for each corrupted batch it records one
forward, then per head replays only blocks ``l..L-1`` (and, where the runner verified it
exact, only positions from the batch's first query token on) with an ordinary TL hook
(:func:`tvlens.hooks.rowwise.patch_head_rows_hook`) doing the patch, for any bridge.
(:func:`tvlens.analyses.patching.patch_sweep` patches a clean run's own activations into an
aligned corrupted input; Todd et al. patch the *task mean* at the query token of prompts of
different lengths, which that sweep does not express.) ``engine="full"`` runs complete
forwards instead; the tests check both agree.

Gemma-2 normalises the attention output (``post_attention_layernorm``) before adding it to
the residual, so there ``z̄ W_O`` is the head's contribution to the o-projection, not
exactly to the residual; the IE (step 2) is exact for every architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.hooks.core import hook_name
from tvlens.hooks.rowwise import add_rows_hook, patch_head_rows_hook
from tvlens.llm.prompts import (
    ScoreMode,
    Template,
    answer_probs,
    encode,
    model_device,
    prompt_batches,
    run_prompts,
    sample_prompts,
    tokenizer_of,
)
from tvlens.llm.task_vectors import check_layers, condition_row
from tvlens.llm.tasks import NLTask

log = logging.getLogger(__name__)
Engine = Literal["auto", "full"]
#: seed offset so the corrupted prompts are a different draw from the clean ones
CORRUPT_SEED_OFFSET = 7919


def z_name(layer: int) -> str:
    return hook_name(layer, "attn.hook_z")


@torch.no_grad()
def mean_head_outputs(
    model: Any,
    task: NLTask,
    shots: int = 10,
    n_prompts: int = 50,
    template: str | Template = "arrow",
    seed: int = 0,
    batch_size: int = 16,
) -> Float[Tensor, "layer head d_head"]:
    """``z̄[l, h]``: every head's output (``attn.hook_z``) at the query token, averaged over
    ``n_prompts`` clean ``shots``-shot prompts."""
    names = [z_name(layer) for layer in range(model.cfg.n_layers)]
    enc = encode(tokenizer_of(model), sample_prompts(task, n_prompts, shots, template, seed))
    states = run_prompts(model, enc, capture=names, batch_size=batch_size).states
    return torch.stack([states[n].mean(0) for n in names])


def head_outputs(
    model: Any, z: Float[Tensor, "layer head d_head"]
) -> Float[Tensor, "layer head d"]:
    """``z[l, h] @ W_O[l, h]``: each head's output in the residual basis (no bias)."""
    out = []
    for layer in range(z.shape[0]):
        w_o = model.blocks[layer].attn.W_O.detach().float().cpu()  # [head, d_head, d]
        out.append(torch.einsum("hk,hkd->hd", z[layer].float(), w_o))
    return torch.stack(out)


@torch.no_grad()
def head_indirect_effects(
    model: Any,
    task: NLTask,
    z_mean: Float[Tensor, "layer head d_head"],
    shots: int = 10,
    n_prompts: int = 25,
    template: str | Template = "arrow",
    seed: int = 0,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    engine: Engine = "auto",
    progress: bool = False,
) -> pd.DataFrame:
    """IE of every head: patch ``z_mean[l, h]`` at the query token of shuffled-label prompts.

    ``engine="auto"`` replays only the blocks a patch can change through the patching
    engine's :class:`~tvlens.hooks.suffix.BridgeSuffixRunner` (from layer ``l``, and from the
    batch's first query position when the bridge supports suffix runs); ``"full"`` runs
    complete forwards with ``run_with_hooks``. Returns ``task, layer, head, ie,
    p_corrupted, p_patched, n, engine`` (one row per head).
    """
    if engine not in ("auto", "full"):
        raise ValueError(f"engine={engine!r}; choose 'auto' or 'full'.")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if tuple(z_mean.shape[:2]) != (n_layers, n_heads):
        raise ValueError(
            f"z_mean has shape {tuple(z_mean.shape)} but the model has {n_layers} layers × "
            f"{n_heads} heads; compute it with mean_head_outputs on this model."
        )
    layers = check_layers(model, layers)
    prompts = sample_prompts(
        task, n_prompts, shots, template, seed + CORRUPT_SEED_OFFSET, corrupt=True
    )
    enc = encode(tokenizer_of(model), prompts)
    device = model_device(model)
    base_sum = 0.0
    patched_sum = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    cells = [(layer, h) for layer in layers for h in range(n_heads)]
    used = set()
    bar = tqdm(total=len(cells) * -(-len(enc) // batch_size), desc="head IE", disable=not progress)
    for _, tokens, qpos, answers in prompt_batches(enc, batch_size, device):
        first = torch.tensor([a[0] for a in answers])
        patched_logits, logits, how = _patcher(model, tokens, qpos, engine)
        used.add(how)
        base_sum += float(answer_probs(logits, qpos, first).sum())
        for layer, h in cells:
            out, rel = patched_logits(layer, h, z_mean[layer, h])
            patched_sum[layer, h] += float(answer_probs(out, rel, first).sum())
            bar.update(1)
    bar.close()
    n = len(enc)
    p_base = base_sum / n
    rows = [
        {
            "task": task.name,
            "layer": layer,
            "head": h,
            "ie": float(patched_sum[layer, h]) / n - p_base,
            "p_corrupted": p_base,
            "p_patched": float(patched_sum[layer, h]) / n,
            "n": n,
            "engine": "+".join(sorted(used)),
        }
        for layer, h in cells
    ]
    return pd.DataFrame(rows)


def _patcher(model: Any, tokens: Tensor, qpos: Tensor, engine: Engine) -> tuple[Any, Tensor, str]:
    """``(patched(layer, head, value) -> (logits, query rows), clean logits, engine used)``."""

    def full(layer: int, head: int, value: Tensor) -> tuple[Tensor, Tensor]:
        hook = (z_name(layer), patch_head_rows_hook(value, head, qpos))
        return model.run_with_hooks(tokens, fwd_hooks=[hook]), qpos

    if engine == "full":
        return full, model(tokens), "full"
    try:
        from tvlens.hooks.suffix import BridgeSuffixRunner
    except ImportError as e:  # the patching engine is absent from this build
        log.warning("patching engine unavailable (%s); head IE uses full forwards", e)
        return full, model(tokens), "full"
    resid: dict[str, Tensor] = {}
    names = [hook_name(layer, "resid_pre") for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=[(n, _saver(resid, n)) for n in names]):
        model(tokens)
    try:
        runner = BridgeSuffixRunner(model)
        logits = runner.prepare(tokens, resid[names[0]])
    except (TypeError, AttributeError, RuntimeError) as e:  # an engine this code predates
        log.warning("patching engine failed on this bridge (%s); head IE uses full forwards", e)
        return full, model(tokens), "full"
    if not runner.replay_ok:
        return full, logits, "full"
    p0 = int(qpos.min()) if runner.suffix_ok else 0
    rel = qpos - p0

    def replay(layer: int, head: int, value: Tensor) -> tuple[Tensor, Tensor]:
        hook = (z_name(layer), patch_head_rows_hook(value, head, rel))
        x = resid[hook_name(layer, "resid_pre")][:, p0:]
        return runner.run(x, layer, p0, 1, [hook]), rel

    return replay, logits, "suffix" if p0 else "replay"


def _saver(store: dict[str, Tensor], key: str):
    """Keep the whole activation under ``key`` (not ``hook.name``: TL aliases differ)."""

    def hook(act: Tensor, hook: Any = None) -> None:
        store[key] = act.detach()

    return hook


def top_heads(ie: pd.DataFrame, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest IE (ties: lower layer, then head), as (layer, head)."""
    if not 1 <= k <= len(ie):
        raise ValueError(f"k={k} heads requested but {len(ie)} were scored; use 1..{len(ie)}.")
    ranked = ie.sort_values(["ie", "layer", "head"], ascending=[False, True, True])
    return [(int(r.layer), int(r.head)) for r in ranked.head(k).itertuples()]


def function_vector(
    model: Any, z_mean: Float[Tensor, "layer head d_head"], heads: Sequence[tuple[int, int]]
) -> Float[Tensor, " d"]:
    """``Σ_{(l,h) ∈ heads} z̄[l, h] W_O[l, h]``: the function vector of the chosen heads."""
    if not heads:
        raise ValueError("no heads given; pass at least one (layer, head).")
    outs = head_outputs(model, z_mean)
    return torch.stack([outs[layer, h] for layer, h in heads]).sum(0)


def function_vector_sweep(
    model: Any,
    task: NLTask,
    vector: Float[Tensor, " d"],
    layers: Sequence[int] | None = None,
    n_prompts: int = 50,
    shots: int = 10,
    template: str | Template = "arrow",
    seed: int = 0,
    mode: ScoreMode = "first_token",
    point: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
    **extra: Any,
) -> pd.DataFrame:
    """Accuracy of zero-shot prompts with ``vector`` added at the query token of layer ℓ.

    Rows ``task, layer, condition, accuracy, p_answer, n`` (+ ``extra`` columns) with
    ``condition`` in ``zero_shot``, ``icl`` (``shots`` shots; both repeated per layer) and
    ``function_vector``.
    """
    tok = tokenizer_of(model)
    layers = check_layers(model, layers)
    if vector.shape != (model.cfg.d_model,):
        raise ValueError(
            f"vector has shape {tuple(vector.shape)}; a function vector is [d_model] = "
            f"[{model.cfg.d_model}]."
        )
    zero = encode(tok, sample_prompts(task, n_prompts, 0, template, seed))
    icl = encode(tok, sample_prompts(task, n_prompts, shots, template, seed))
    base = run_prompts(model, zero, mode=mode, batch_size=batch_size)
    full = run_prompts(model, icl, mode=mode, batch_size=batch_size)
    rows = []
    for layer in tqdm(layers, desc="function vector", disable=None if progress else True):
        name = hook_name(layer, point)

        def hooks(idx, qpos, name=name):
            return [(name, add_rows_hook(vector, qpos))]

        steered = run_prompts(model, zero, hooks=hooks, mode=mode, batch_size=batch_size)
        for condition, scored in (("zero_shot", base), ("icl", full), ("function_vector", steered)):
            rows.append(condition_row(task.name, layer, condition, scored, shots=shots, **extra))
    return pd.DataFrame(rows)


@dataclass
class FunctionVectorResult:
    """Everything one function-vector run produces."""

    z_mean: Float[Tensor, "layer head d_head"]
    heads: pd.DataFrame  # IE per head, with rank and selected
    vector: Float[Tensor, " d"]
    sweep: pd.DataFrame  # accuracy by layer


def function_vector_analysis(
    model: Any,
    task: NLTask,
    k_heads: int = 10,
    shots: int = 10,
    n_mean: int = 50,
    n_ie: int = 25,
    n_eval: int = 50,
    layers: Sequence[int] | None = None,
    template: str | Template = "arrow",
    seed: int = 0,
    mode: ScoreMode = "first_token",
    point: str = "resid_post",
    batch_size: int = 16,
    engine: Engine = "auto",
    progress: bool = False,
) -> FunctionVectorResult:
    """The whole pipeline: mean head outputs, IE of every head, top-``k_heads`` function
    vector, and its zero-shot accuracy when added at each layer in ``layers``."""
    k = min(k_heads, model.cfg.n_layers * model.cfg.n_heads)
    z_mean = mean_head_outputs(model, task, shots, n_mean, template, seed, batch_size)
    ie = head_indirect_effects(
        model,
        task,
        z_mean,
        shots,
        n_ie,
        template,
        seed,
        batch_size=batch_size,
        engine=engine,
        progress=progress,
    )
    heads = top_heads(ie, k)
    rank = {hd: i for i, hd in enumerate(heads)}
    ie["rank"] = [
        rank.get((int(a), int(b)), -1) for a, b in zip(ie["layer"], ie["head"], strict=True)
    ]
    ie["selected"] = ie["rank"] >= 0
    vector = function_vector(model, z_mean, heads)
    sweep = function_vector_sweep(
        model,
        task,
        vector,
        layers,
        n_eval,
        shots,
        template,
        seed,
        mode,
        point,
        batch_size,
        progress,
        k_heads=k,
        vector_norm=float(vector.norm()),
    )
    return FunctionVectorResult(z_mean, ie, vector, sweep)
