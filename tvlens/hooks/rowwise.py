"""Hooks that act at one position per sequence (the query token of each prompt).

Natural-language prompts differ in length; tvlens right-pads them, so the query token sits at
a different index in each row. These factories take ``positions`` of shape ``[batch]`` (one
index per row) and return ordinary TransformerLens hook functions for ``run_with_hooks``.
Right padding is exact for causal models: pad tokens come after every real token.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tvlens.hooks.core import HookFn


def _rows(act: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    if positions.dim() != 1 or positions.shape[0] != act.shape[0]:
        raise ValueError(
            f"positions must hold one index per row ({act.shape[0]}), got shape "
            f"{tuple(positions.shape)}."
        )
    pos = positions.to(act.device)
    if int(pos.max()) >= act.shape[1] or int(pos.min()) < 0:
        raise IndexError(f"positions {pos.tolist()} out of range for length {act.shape[1]}.")
    return torch.arange(act.shape[0], device=act.device), pos


def store_rows_hook(
    store: dict[str, Tensor], positions: Int[Tensor, " batch"], key: str | None = None
) -> HookFn:
    """Save ``act[b, positions[b]]`` (float32, CPU) into ``store[key]`` (default
    ``hook.name``; pass the requested name where TL aliases it, e.g. ``attn.hook_z`` reports
    ``attn.o.hook_in``); the activation is unchanged."""

    def hook(act: Tensor, hook: Any = None) -> None:
        rows, pos = _rows(act, positions)
        store[key or hook.name] = act[rows, pos].detach().float().cpu()

    return hook


def gather_rows_hook(
    store: dict[str, Tensor], key: str, positions: Int[Tensor, "batch ..."]
) -> HookFn:
    """Save ``act[b, positions[b, ...]]`` (flattened to ``[batch, k, ...]``, on the
    activation's device) into ``store[key]``: several positions per row; no change."""

    def hook(act: Tensor, hook: Any = None) -> None:
        b = torch.arange(act.shape[0], device=act.device)[:, None]
        store[key] = act[b, positions.flatten(1).to(act.device)].detach()

    return hook


def patch_rows_hook(values: Float[Tensor, "batch ..."], positions: Int[Tensor, " batch"]) -> HookFn:
    """Replace ``act[b, positions[b]]`` by ``values[b]`` (or one shared ``values`` row)."""

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        rows, pos = _rows(act, positions)
        act = act.clone()
        act[rows, pos] = values.to(act.device, act.dtype).expand_as(act[rows, pos])
        return act

    return hook


def project_out_rows_hook(
    basis: Float[Tensor, "r d"],
    positions: Int[Tensor, " batch"],
    centre: Float[Tensor, " d"] | None = None,
) -> HookFn:
    """Remove span(``basis``) (orthonormal rows) from ``act[b, positions[b]]`` only: the
    query token, where task vectors are read, leaving every other position (a BOS attention
    sink with massive activations, the demonstrations) as it was. With ``centre`` the
    component along the subspace is set to ``centre``'s (mean ablation: the variation inside
    the subspace goes, the typical state stays) instead of to zero."""
    from tvlens.hooks.core import _check_basis

    _check_basis(basis)

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        rows, pos = _rows(act, positions)
        b = basis.to(act.device, act.dtype)
        act = act.clone()
        h = act[rows, pos]
        c = centre.to(act.device, act.dtype) if centre is not None else torch.zeros_like(h[0])
        act[rows, pos] = h - ((h - c) @ b.T) @ b
        return act

    return hook


def add_rows_hook(
    vector: Float[Tensor, "*batch d"], positions: Int[Tensor, " batch"], scale: float = 1.0
) -> HookFn:
    """Add ``scale * vector`` at ``act[b, positions[b]]`` (a function-vector intervention)."""

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        if act.shape[-1] != vector.shape[-1]:
            raise ValueError(
                f"vector has width {vector.shape[-1]} but the activation {act.shape[-1]}; "
                "hook a residual-stream point."
            )
        rows, pos = _rows(act, positions)
        act = act.clone()
        act[rows, pos] = act[rows, pos] + scale * vector.to(act.device, act.dtype)
        return act

    return hook


def patch_head_rows_hook(
    value: Float[Tensor, "*batch d_head"], head: int, positions: Int[Tensor, " batch"]
) -> HookFn:
    """On ``attn.hook_z`` ``[batch, pos, head, d_head]``: set head ``head`` at
    ``positions[b]`` to ``value`` (e.g. its mean over clean ICL prompts)."""

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        if act.dim() != 4 or not 0 <= head < act.shape[2]:
            raise ValueError(
                f"head patching needs a [batch, pos, head, d_head] activation (attn.hook_z) "
                f"with head {head} < n_heads; got shape {tuple(act.shape)}."
            )
        rows, pos = _rows(act, positions)
        act = act.clone()
        act[rows, pos, head] = value.to(act.device, act.dtype).expand_as(act[rows, pos, head])
        return act

    return hook
