"""Function vectors (Todd et al. 2024) in a pretrained LM.

1. **Mean head outputs.** Run clean ICL prompts of a task and average every head's output
   ``z`` (``blocks.{l}.attn.hook_z``) at the query token: ``z̄[l, h]``.
2. **Causal indirect effect (IE).** Run ICL prompts whose labels are shuffled (the
   input-output mapping is broken), patch ``z̄[l, h]`` into head ``(l, h)`` at the query
   token, and measure the rise in the probability of the correct answer's first token:
   ``IE(l, h) = mean_prompts P_patched(y) − P_corrupted(y)``.
3. **Function vector.** The heads with the largest IE are summed through their output
   projections: ``v = Σ_{(l,h) ∈ top-k} z̄[l, h] W_O[l, h]`` (a ``d_model`` vector).
   Gemma-2/3 normalise the attention output (``post_attention_layernorm``, TL's
   ``ln1_post``) before the residual add; there each head's contribution is split exactly
   (:func:`head_contributions`: the head's share of the normalised output, scaled by the
   whole output's RMS on that prompt) and averaged over the clean prompts, so ``v`` is the
   top heads' mean contribution *to the residual stream* for every architecture.
4. **Intervention.** ``v`` is added to the residual stream (``resid_post`` of layer ℓ) at the
   query token of zero-shot prompts; sweeping ℓ gives accuracy by layer.

Speed. Corrupted prompts are batched by length; each batch runs once
(:class:`tvlens.llm.prompts.QueryReplay`, over the patching engine's
:class:`tvlens.hooks.suffix.BridgeSuffixRunner`) and is then rerun from layer ``l`` only, from
the batch's first query position on (prefix keys and values cached, where the runner verified
it exact), with the ``n_heads`` patches of layer ``l`` as stacked copies of the batch and only
each row's query token unembedded. ``engine="full"`` runs complete forwards instead; the tests
check both agree, and :mod:`tvlens.llm.reference` (plain HF hooks) agrees with both.
(:func:`tvlens.analyses.patching.patch_sweep` patches a clean run's own activations into an
aligned corrupted input; Todd et al. patch the *task mean* at the query token of prompts of
different lengths, which that sweep does not express.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.hooks.core import check_layers, hook_name, model_device
from tvlens.hooks.rowwise import add_rows_hook
from tvlens.llm.config import DEFAULT_TEMPLATE, FunctionVectorOptions
from tvlens.llm.prompts import (
    BosPolicy,
    QueryReplay,
    ScoreMode,
    Template,
    encode,
    layer_sweep,
    length_order,
    prompt_batches,
    query_scores,
    run_prompts,
    sample_prompts,
    tokenizer_of,
)
from tvlens.llm.task_vectors import best_by_layer, condition_row
from tvlens.llm.tasks import NLTask, load_tasks
from tvlens.registry import driver

log = logging.getLogger(__name__)
Engine = Literal["auto", "full"]
#: seed offset so the corrupted prompts are a different draw from the clean ones
CORRUPT_SEED_OFFSET = 7919


def z_name(layer: int) -> str:
    """``blocks.{layer}.attn.hook_z`` (TL's short name ``z``, via :func:`tvlens.hooks.hook_name`)."""
    return hook_name(layer, "z")


@torch.no_grad()
def query_head_outputs(
    model: Any,
    task: NLTask,
    shots: int = 10,
    n_prompts: int = 50,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    batch_size: int = 16,
    bos: BosPolicy = "auto",
) -> Float[Tensor, "n layer head d_head"]:
    """Every head's output (``attn.hook_z``) at the query token of ``n_prompts`` clean
    ``shots``-shot prompts."""
    names = [z_name(layer) for layer in range(model.cfg.n_layers)]
    prompts = sample_prompts(task, n_prompts, shots, template, seed)
    enc = encode(tokenizer_of(model), prompts, bos)
    states = run_prompts(model, enc, capture=names, batch_size=batch_size).states
    return torch.stack([states[n] for n in names], dim=1)


def mean_head_outputs(
    model: Any,
    task: NLTask,
    shots: int = 10,
    n_prompts: int = 50,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    batch_size: int = 16,
    bos: BosPolicy = "auto",
) -> Float[Tensor, "layer head d_head"]:
    """``z̄[l, h]``: :func:`query_head_outputs` averaged over the prompts."""
    z = query_head_outputs(model, task, shots, n_prompts, template, seed, batch_size, bos)
    return z.mean(0)


def head_outputs(
    model: Any, z: Float[Tensor, "*n layer head d_head"]
) -> Float[Tensor, "*n layer head d"]:
    """``z[l, h] @ W_O[l, h]``: each head's output in the residual basis (no bias), before
    any post-attention norm."""
    out = []
    for layer in range(z.shape[-3]):
        w_o = model.blocks[layer].attn.W_O.detach().float().cpu()  # [head, d_head, d]
        out.append(torch.einsum("...hk,hkd->...hd", z[..., layer, :, :].float(), w_o))
    return torch.stack(out, dim=-3)


def post_attention_norm(model: Any, layer: int) -> Any:
    """The RMSNorm a block applies to its attention output before the residual add
    (Gemma-2/3's ``post_attention_layernorm``, TL's ``ln1_post``), or ``None``."""
    from tvlens.hooks.suffix import unwrap

    norm = getattr(model.blocks[layer], "ln1_post", None)
    return None if norm is None else unwrap(norm)


def head_contributions(
    model: Any, z: Float[Tensor, "n layer head d_head"]
) -> Float[Tensor, "n layer head d"]:
    """What each head adds to the residual stream at the query token, per prompt.

    Without a post-attention norm this is ``z W_O``. With an RMSNorm ``N(o) = g ⊙ o /
    √(mean o² + ε)`` after the o-projection (Gemma-2/3) the attention output ``N(Σ_h o_h)``
    splits exactly into ``c_h = g ⊙ o_h / √(mean o² + ε)``: each head scaled by the norm of
    the *whole* attention output of that prompt. ``c_h`` is computed through the norm
    module itself as ``N(o_h) · √(mean o_h² + ε) / √(mean o² + ε)``; ``Σ_h c_h`` equals the
    block's attention output (a test checks it).
    """
    outs = head_outputs(model, z)  # [n, layer, head, d]
    for layer in range(outs.shape[1]):
        norm = post_attention_norm(model, layer)
        if norm is None:
            continue
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
        if eps is None:
            raise TypeError(
                f"post-attention norm {type(norm).__name__} of layer {layer} has no eps; "
                "only RMSNorm-style norms are supported."
            )
        o_h = outs[:, layer]  # [n, head, d]
        total = o_h.sum(1, keepdim=True)
        param = next(norm.parameters())
        normed = norm(o_h.to(param)).float()
        scale = (
            (o_h.pow(2).mean(-1, keepdim=True) + eps) / (total.pow(2).mean(-1, keepdim=True) + eps)
        ).sqrt()
        outs[:, layer] = normed * scale
    return outs


def stacked_heads_hook(
    values: Float[Tensor, "copies d_head"], heads: Sequence[int], positions: Int[Tensor, " rows"]
) -> Any:
    """On ``attn.hook_z`` of ``copies`` stacked copies of a batch (copy-major): copy ``k``
    gets head ``heads[k]`` set to ``values[k]`` at its rows' ``positions``."""
    copies = len(heads)

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        if act.dim() != 4 or act.shape[0] != positions.shape[0]:
            raise ValueError(
                f"expected attn.hook_z of shape [{positions.shape[0]}, pos, head, d_head], got "
                f"{tuple(act.shape)}."
            )
        b = act.shape[0] // copies
        rows = torch.arange(act.shape[0], device=act.device)
        head = torch.as_tensor(list(heads), device=act.device).repeat_interleave(b)
        act = act.clone()
        act[rows, positions.to(act.device), head] = values.to(act).repeat_interleave(b, 0)
        return act

    return hook


@torch.no_grad()
def head_indirect_effects(
    model: Any,
    task: NLTask,
    z_mean: Float[Tensor, "layer head d_head"],
    shots: int = 10,
    n_prompts: int = 25,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    engine: Engine = "auto",
    progress: bool = False,
    bos: BosPolicy = "auto",
) -> pd.DataFrame:
    """IE of every head of ``layers`` (default: all): patch ``z_mean[l, h]`` at the query
    token of shuffled-label prompts and measure the rise in P(first answer token).

    Prompts are batched by length; for each batch and layer the ``n_heads`` patches run as
    stacked copies in one rerun of blocks ``l..`` (``engine="auto"``: through
    :class:`~tvlens.llm.prompts.QueryReplay`, from the batch's first query position on where
    the suffix engine verified it exact), and only each row's query token is unembedded.
    ``engine="full"`` runs complete forwards with ``run_with_hooks``. Returns ``task, layer,
    head, ie, p_corrupted, p_patched, n, engine`` (one row per head).
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
    enc = encode(tokenizer_of(model), prompts, bos)
    device = model_device(model)
    base_sum = 0.0
    patched_sum = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    used = set()
    heads = list(range(n_heads))
    n_batches = -(-len(enc) // batch_size)
    bar = tqdm(total=n_batches * len(layers), desc="head IE", disable=None if progress else True)
    for _, tokens, qpos, answers in prompt_batches(
        enc, batch_size, device, order=length_order(enc), answer_tokens_read=1
    ):
        first = torch.tensor([a[0] for a in answers])
        replay = QueryReplay(model, tokens, qpos, engine)
        used.add(replay.how)
        base_sum += float(query_scores(replay.base, first)[1].sum())
        pos = replay.pos.repeat(n_heads)
        for layer in layers:
            hook = stacked_heads_hook(z_mean[layer], heads, pos)
            out = replay.run(layer, [(z_name(layer), hook)], copies=n_heads)
            p = query_scores(out, first.repeat(n_heads))[1].view(n_heads, -1)
            patched_sum[layer] += p.sum(1).double()
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
        for layer in layers
        for h in heads
    ]
    return pd.DataFrame(rows)


def top_heads(ie: pd.DataFrame, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest IE (ties: lower layer, then head), as (layer, head)."""
    if not 1 <= k <= len(ie):
        raise ValueError(f"k={k} heads requested but {len(ie)} were scored; use 1..{len(ie)}.")
    ranked = ie.sort_values(["ie", "layer", "head"], ascending=[False, True, True])
    return [(int(r.layer), int(r.head)) for r in ranked.head(k).itertuples()]


@torch.no_grad()
def function_vector(
    model: Any,
    z: Float[Tensor, "*n layer head d_head"],
    heads: Sequence[tuple[int, int]],
) -> Float[Tensor, " d"]:
    """``Σ_{(l,h) ∈ heads}`` mean contribution of head ``(l, h)`` to the residual stream.

    ``z`` holds head outputs per prompt (``[n, layer, head, d_head]``, from
    :func:`query_head_outputs`) or their mean (``[layer, head, d_head]``). Without a
    post-attention norm this is Todd et al.'s ``Σ z̄ W_O`` (the mean commutes with ``W_O``);
    with one (Gemma) the per-prompt :func:`head_contributions` are averaged, which needs
    per-prompt ``z``.
    """
    if not heads:
        raise ValueError("no heads given; pass at least one (layer, head).")
    per_prompt = z if z.dim() == 4 else z[None]
    normed = any(post_attention_norm(model, layer) is not None for layer, _ in heads)
    if normed and z.dim() == 3:
        raise ValueError(
            "this model normalises attention outputs (post-attention norm), so the function "
            "vector needs per-prompt head outputs [n, layer, head, d_head] "
            "(query_head_outputs), not their mean."
        )
    outs = head_contributions(model, per_prompt).mean(0)
    return torch.stack([outs[layer, h] for layer, h in heads]).sum(0)


def function_vector_sweep(
    model: Any,
    task: NLTask,
    vector: Float[Tensor, " d"],
    layers: Sequence[int] | None = None,
    n_prompts: int = 50,
    shots: int = 10,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    mode: ScoreMode = "first_token",
    point: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
    engine: Engine = "auto",
    bos: BosPolicy = "auto",
    **extra: Any,
) -> pd.DataFrame:
    """Accuracy of zero-shot prompts with ``vector`` added at the query token of layer ℓ.

    Rows ``task, layer, condition, accuracy, p_answer, n`` (+ ``extra`` columns) with
    ``condition`` in ``zero_shot``, ``icl`` (``shots`` shots; both repeated per layer) and
    ``function_vector``. First-token scoring reruns each batch from layer ℓ only
    (:func:`~tvlens.llm.prompts.layer_sweep`).
    """
    tok = tokenizer_of(model)
    layers = check_layers(model, layers)
    if vector.shape != (model.cfg.d_model,):
        raise ValueError(
            f"vector has shape {tuple(vector.shape)}; a function vector is [d_model] = "
            f"[{model.cfg.d_model}]."
        )
    zero = encode(tok, sample_prompts(task, n_prompts, 0, template, seed), bos)
    icl = encode(tok, sample_prompts(task, n_prompts, shots, template, seed), bos)
    base = run_prompts(model, zero, mode=mode, batch_size=batch_size)
    full = run_prompts(model, icl, mode=mode, batch_size=batch_size)

    def hooks_at(layer: int, rows: Tensor, pos: Tensor) -> list[tuple[str, Any]]:
        return [(hook_name(layer, point), add_rows_hook(vector, pos))]

    steered = layer_sweep(
        model, zero, layers, hooks_at, batch_size, engine, progress, "function vector", mode=mode
    )
    rows = []
    for layer in layers:
        for condition, scored in (
            ("zero_shot", base),
            ("icl", full),
            ("function_vector", steered[layer]),
        ):
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
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    mode: ScoreMode = "first_token",
    point: str = "resid_post",
    batch_size: int = 16,
    engine: Engine = "auto",
    progress: bool = False,
    bos: BosPolicy = "auto",
) -> FunctionVectorResult:
    """The whole pipeline: mean head outputs, IE of every head of ``layers``, the
    top-``k_heads`` function vector, and its zero-shot accuracy when added at each layer in
    ``layers``."""
    z = query_head_outputs(model, task, shots, n_mean, template, seed, batch_size, bos)
    z_mean = z.mean(0)
    ie = head_indirect_effects(
        model,
        task,
        z_mean,
        shots,
        n_ie,
        template,
        seed,
        layers=layers,
        batch_size=batch_size,
        engine=engine,
        progress=progress,
        bos=bos,
    )
    k = min(k_heads, len(ie))
    heads = top_heads(ie, k)
    rank = {hd: i for i, hd in enumerate(heads)}
    ie["rank"] = [
        rank.get((int(a), int(b)), -1) for a, b in zip(ie["layer"], ie["head"], strict=True)
    ]
    ie["selected"] = ie["rank"] >= 0
    vector = function_vector(model, z, heads)
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
        engine,
        bos,
        k_heads=k,
        vector_norm=float(vector.norm()),
    )
    return FunctionVectorResult(z_mean, ie, vector, sweep)


@driver("function_vectors", FunctionVectorOptions, kind="llm")
def analyse_function_vectors(
    run: Any, o: FunctionVectorOptions, progress: bool
) -> dict[str, pd.DataFrame]:
    """Head indirect effects (``llm_fv_heads``) and the function vector's accuracy by layer
    (``llm_function_vectors``) of every task; the vectors go to
    ``RUN_DIR/function_vectors.safetensors``."""
    from safetensors.torch import save_file

    from tvlens.io import atomic_path

    s = run.settings
    heads, sweeps, vectors = [], [], {}
    for task in load_tasks(o.tasks):
        res = function_vector_analysis(
            run.model,
            task,
            k_heads=o.k_heads,
            shots=o.shots,
            n_mean=o.n_prompts,
            n_ie=o.n_ie,
            n_eval=o.n_prompts,
            layers=o.layers,
            mode=s.mode,
            point=s.point,
            progress=progress,
            **run.prompt_kwargs,
        )
        heads.append(res.heads)
        sweeps.append(res.sweep)
        vectors[task.name] = res.vector.float().contiguous()
    with atomic_path(run.dir / "function_vectors.safetensors") as tmp:
        save_file(vectors, str(tmp))
    return {
        "llm_fv_heads": pd.concat(heads, ignore_index=True),
        "llm_function_vectors": pd.concat(sweeps, ignore_index=True),
    }


def headline(tables: dict[str, pd.DataFrame], run: Any = None) -> dict[str, float]:
    """The best function-vector accuracy of each task."""
    return best_by_layer(tables["llm_function_vectors"], ("function_vector",))
