"""An independent reference for Hendel task vectors and Todd function vectors.

Plain PyTorch forward hooks on the HF model (``AutoModelForCausalLM``): no TransformerBridge,
no suffix engine, no batching, no padding. Every prompt runs on its own, tokenised by the
model's own HF tokenizer exactly as shipped (BOS where it adds one), and every intervention
is a full forward. It is slow and simple on purpose: the tests compare
:mod:`tvlens.llm.task_vectors` and :mod:`tvlens.llm.function_vectors` with it, layer by
layer and head by head, on the same prompts.

Points in the HF model:

* ``resid_post`` of layer ℓ is the output of ``model.model.layers[ℓ]``;
* head outputs ``z`` are the input of ``layers[ℓ].self_attn.o_proj`` (``[heads · d_head]``);
* a head's contribution to the residual is ``W_O[:, h] z_h``, and where the layer
  normalises its attention output (Gemma's ``post_attention_layernorm``,
  ``(1 + w) ⊙ x / √(mean x² + ε)``) it is ``(1 + w) ⊙ W_O[:, h] z_h / √(mean o² + ε)`` with
  ``o`` the prompt's whole o-projection output, written out here from the formula.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.llm.prompts import Prompt


@dataclass
class HFModel:
    """A HF causal LM, its tokenizer and its decoder layers."""

    model: Any
    tokenizer: Any

    @property
    def layers(self) -> Any:
        inner = getattr(self.model, "model", None)
        layers = getattr(inner, "layers", None)
        if layers is None:
            raise TypeError(
                f"{type(self.model).__name__} has no model.layers; the reference supports "
                "Llama- and Gemma-style decoders."
            )
        return layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return int(self.model.config.num_attention_heads)


def load_hf(path: str | Path) -> HFModel:
    """The HF model (float32, eager attention, eval mode) and tokenizer in a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a HF model folder (no config.json).")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return HFModel(model.eval(), tok)


def prompt_ids(tokenizer: Any, prompt: Prompt) -> tuple[Tensor, int]:
    """``(ids [1, T], first answer token)``: the prompt as the HF tokenizer encodes it, and
    the first token of the answer encoded in context (a leading bare-space token joins the
    prompt)."""
    p = list(tokenizer(prompt.text)["input_ids"])
    full = list(tokenizer(prompt.text + prompt.answer_text)["input_ids"])
    if full[: len(p)] == p and len(full) > len(p):
        answer = full[len(p) :]
    else:
        answer = list(tokenizer(prompt.answer_text, add_special_tokens=False)["input_ids"])
    if len(answer) > 1 and tokenizer.decode(answer[:1]).strip() == "":
        p, answer = p + answer[:1], answer[1:]  # a bare space token is no answer token
    return torch.tensor([p]), int(answer[0])


def _out(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_last(value: Tensor) -> Callable:
    """Forward hook: a decoder layer's output at the last position becomes ``value``."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        h = _out(output).clone()
        h[:, -1] = value.to(h)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    return hook


def _add_last(vector: Tensor) -> Callable:
    """Forward hook: ``vector`` is added to a decoder layer's output at the last position."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        h = _out(output).clone()
        h[:, -1] = h[:, -1] + vector.to(h)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    return hook


@torch.no_grad()
def _last_logits(hf: HFModel, ids: Tensor, hooks: Sequence[tuple[Any, Callable]] = ()) -> Tensor:
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    try:
        return hf.model(ids).logits[0, -1].float()
    finally:
        for h in handles:
            h.remove()


def _score(logits: Tensor, first: int) -> tuple[bool, float]:
    return bool(int(logits.argmax()) == first), float(logits.softmax(-1)[first])


@torch.no_grad()
def layer_outputs(hf: HFModel, ids: Tensor) -> Float[Tensor, "layer d"]:
    """Every decoder layer's output at the last position (``resid_post``)."""
    got: dict[int, Tensor] = {}

    def grab(i: int) -> Callable:
        def hook(module: Any, args: Any, output: Any) -> None:
            got[i] = _out(output)[0, -1].detach().float().clone()

        return hook

    _last_logits(hf, ids, [(layer, grab(i)) for i, layer in enumerate(hf.layers)])
    return torch.stack([got[i] for i in range(hf.n_layers)])


def _rows(task: str, layer: int, condition: str, scores: list[tuple[bool, float]]) -> dict:
    return {
        "task": task,
        "layer": layer,
        "condition": condition,
        "accuracy": sum(ok for ok, _ in scores) / len(scores),
        "p_answer": sum(p for _, p in scores) / len(scores),
        "n": len(scores),
    }


@torch.no_grad()
def reference_task_vectors(
    hf: HFModel,
    zero: Sequence[Prompt],
    source: Sequence[Prompt],
    layers: Sequence[int],
    progress: bool = False,
) -> pd.DataFrame:
    """Hendel task vectors: the source prompt's layer-ℓ output at its last token replaces
    the zero-shot prompt's there. Rows ``task, layer, condition (zero_shot, task_vector),
    accuracy, p_answer, n``; task-vector rows also give ``dummy_answer``, the share of
    prompts whose patched prediction is the *dummy* query's answer (θ carrying the source
    prompt's own answer rather than the task)."""
    if len(zero) != len(source) or [p.target for p in zero] != [p.target for p in source]:
        raise ValueError("zero-shot and source prompts must pair up (same targets, in order).")
    base, patched = [], {layer: [] for layer in layers}
    dummy = {layer: 0 for layer in layers}
    pairs = list(zip(zero, source, strict=True))
    for z, s in tqdm(pairs, desc="reference TV", disable=not progress):
        ids, first = prompt_ids(hf.tokenizer, z)
        source_ids, dummy_first = prompt_ids(hf.tokenizer, s)  # the dummy query's own answer
        theta = layer_outputs(hf, source_ids)
        base.append(_score(_last_logits(hf, ids), first))
        for layer in layers:
            hook = (hf.layers[layer], _replace_last(theta[layer]))
            logits = _last_logits(hf, ids, [hook])
            patched[layer].append(_score(logits, first))
            dummy[layer] += int(int(logits.argmax()) == dummy_first != first)
    task = zero[0].task
    rows = []
    for layer in layers:
        rows.append(_rows(task, layer, "zero_shot", base))
        tv = _rows(task, layer, "task_vector", patched[layer])
        rows.append({**tv, "dummy_answer": dummy[layer] / len(zero)})
    return pd.DataFrame(rows)


@torch.no_grad()
def query_head_outputs(
    hf: HFModel, prompts: Sequence[Prompt]
) -> Float[Tensor, "n layer head d_head"]:
    """Each head's output (the o-projection's input) at the last token, per prompt."""
    out = []
    for pr in prompts:
        got: dict[int, Tensor] = {}

        def grab(i: int, got: dict[int, Tensor] = got) -> Callable:
            def hook(module: Any, args: tuple) -> None:
                got[i] = args[0][0, -1].detach().float().clone()

            return hook

        handles = [
            layer.self_attn.o_proj.register_forward_pre_hook(grab(i))
            for i, layer in enumerate(hf.layers)
        ]
        try:
            hf.model(prompt_ids(hf.tokenizer, pr)[0])
        finally:
            for h in handles:
                h.remove()
        out.append(torch.stack([got[i].view(hf.n_heads, -1) for i in range(hf.n_layers)]))
    return torch.stack(out)


@torch.no_grad()
def reference_head_ie(
    hf: HFModel,
    corrupted: Sequence[Prompt],
    z_mean: Float[Tensor, "layer head d_head"],
    layers: Sequence[int],
    progress: bool = False,
) -> pd.DataFrame:
    """Todd et al.'s indirect effect: head ``(l, h)``'s o-projection input at the last token
    set to ``z_mean[l, h]`` on each shuffled-label prompt; mean rise of P(first answer token).
    Rows ``layer, head, ie, p_corrupted, p_patched``."""
    d_head = z_mean.shape[-1]
    base, patched = 0.0, torch.zeros(len(layers), hf.n_heads, dtype=torch.float64)
    for pr in tqdm(corrupted, desc="reference IE", disable=not progress):
        ids, first = prompt_ids(hf.tokenizer, pr)
        base += _score(_last_logits(hf, ids), first)[1]
        for li, layer in enumerate(layers):
            for h in range(hf.n_heads):

                def patch(module: Any, args: tuple, h: int = h, layer: int = layer) -> tuple:
                    x = args[0].clone()
                    x[0, -1, h * d_head : (h + 1) * d_head] = z_mean[layer, h].to(x)
                    return (x, *args[1:])

                o_proj = hf.layers[layer].self_attn.o_proj
                handle = o_proj.register_forward_pre_hook(patch)
                try:
                    patched[li, h] += _score(_last_logits(hf, ids), first)[1]
                finally:
                    handle.remove()
    n = len(corrupted)
    return pd.DataFrame(
        [
            {
                "layer": layer,
                "head": h,
                "ie": float(patched[li, h]) / n - base / n,
                "p_corrupted": base / n,
                "p_patched": float(patched[li, h]) / n,
            }
            for li, layer in enumerate(layers)
            for h in range(hf.n_heads)
        ]
    )


def _post_norm_factor(layer: Any) -> tuple[Tensor, float] | None:
    """``(g, ε)`` of a Gemma-style post-attention RMSNorm ``g ⊙ x / √(mean x² + ε)``.

    Llama's ``post_attention_layernorm`` is the MLP's *input* norm; only a layer that also
    has a ``pre_feedforward_layernorm`` (Gemma-2/3) normalises its attention output."""
    norm = getattr(layer, "post_attention_layernorm", None)
    if norm is None or getattr(layer, "pre_feedforward_layernorm", None) is None:
        return None
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    w = norm.weight.detach().float()
    gemma = "gemma" in type(norm).__name__.lower()
    return (1.0 + w if gemma else w), eps


@torch.no_grad()
def reference_function_vector(
    hf: HFModel, z: Float[Tensor, "n layer head d_head"], heads: Sequence[tuple[int, int]]
) -> Float[Tensor, " d"]:
    """``Σ_{(l,h)}`` mean over prompts of head ``(l, h)``'s contribution to the residual."""
    total = 0
    for layer, h in heads:
        mod = hf.layers[layer]
        w_o = mod.self_attn.o_proj.weight.detach().float()  # [d, heads · d_head]
        d_head = z.shape[-1]
        o_h = z[:, layer, h] @ w_o[:, h * d_head : (h + 1) * d_head].T  # [n, d]
        post = _post_norm_factor(mod)
        if post is not None:
            g, eps = post
            o = z[:, layer].flatten(1) @ w_o.T  # the whole o-projection output, [n, d]
            o_h = g * o_h / (o.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        total = total + o_h.mean(0)
    return total


@torch.no_grad()
def reference_function_vector_sweep(
    hf: HFModel,
    zero: Sequence[Prompt],
    vector: Float[Tensor, " d"],
    layers: Sequence[int],
    progress: bool = False,
) -> pd.DataFrame:
    """Zero-shot accuracy with ``vector`` added to layer ℓ's output at the last token."""
    base, steered = [], {layer: [] for layer in layers}
    for pr in tqdm(zero, desc="reference FV", disable=not progress):
        ids, first = prompt_ids(hf.tokenizer, pr)
        base.append(_score(_last_logits(hf, ids), first))
        for layer in layers:
            hook = (hf.layers[layer], _add_last(vector))
            steered[layer].append(_score(_last_logits(hf, ids, [hook]), first))
    task = zero[0].task
    rows = []
    for layer in layers:
        rows.append(_rows(task, layer, "zero_shot", base))
        rows.append(_rows(task, layer, "function_vector", steered[layer]))
    return pd.DataFrame(rows)
