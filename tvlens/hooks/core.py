"""Capture, patch and steer hooks over TransformerLens hook names.

Everything here speaks TL's vocabulary: hook names such as ``blocks.3.hook_resid_post`` and
the two verbs ``run_with_cache(names_filter=...)`` and ``run_with_hooks(fwd_hooks=[...])``.
The hook factories return ordinary TL hook functions ``fn(activation, hook) -> activation``
that a user can pass to ``run_with_hooks`` themselves.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

#: Positions: all (None), one index, a slice, or a 1-D tensor / list of indices.
Positions = int | slice | Sequence[int] | Tensor | None
HookFn = Callable[[Tensor, Any], Tensor]

RESID_POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def _get_act_name() -> Callable[..., str]:
    """TransformerLens's own ``get_act_name`` (imported on first use: TL is heavy)."""
    from transformer_lens.utilities import get_act_name

    return get_act_name


def hook_name(layer: int | None, point: str = "resid_post") -> str:
    """TL hook name for ``point`` at ``layer``: ``hook_name(3)`` → ``blocks.3.hook_resid_post``.

    ``point`` is any of TransformerLens's short names, resolved by TL's own ``get_act_name``
    (``z`` → ``blocks.{l}.attn.hook_z``, ``pattern``, ``q``/``k``/``v``, ``pre`` →
    ``blocks.{l}.mlp.hook_pre``, ``resid_pre``, ``attn_out``, ``mlp_out``, …), or a full
    sub-hook path below the block (``attn.hook_z``, ``hook_resid_post``, ``ln1.hook_scale``),
    which is kept as written. ``layer=None`` names a model-level hook (``embed`` →
    ``hook_embed``).
    """
    if not isinstance(point, str) or not point:
        raise ValueError(f"point={point!r} must be a TransformerLens hook name such as 'z'.")
    if layer is not None:
        if isinstance(layer, bool) or int(layer) != layer or layer < 0:
            raise ValueError(f"layer={layer!r} must be a block index >= 0 (or None).")
        layer = int(layer)
    if "." in point or point.startswith("hook_"):
        return point if layer is None else f"blocks.{layer}.{point}"
    return _get_act_name()(point, layer)


def as_bridge(model: Any) -> Any:
    """The TransformerBridge to hook: a bridge itself, a TaskModel's ``.bridge``, or a Run's
    model's. The one adapter every analysis uses."""
    for _ in range(3):  # Run -> TaskModel -> bridge
        if hasattr(model, "hook_dict"):
            return model
        inner = getattr(model, "bridge", None)
        model = inner if inner is not None else getattr(model, "model", None)
        if model is None:
            break
    raise TypeError(
        "expected a TransformerBridge, a tvlens TaskModel or a Run; got an object with "
        "neither .hook_dict nor .bridge."
    )


class LayerError(ValueError, IndexError):
    """Layers that are not blocks of the model (a ValueError, and an IndexError as indices)."""


def check_layers(model: Any, layers: Iterable[int] | None) -> list[int]:
    """``layers`` (default: every block) as a list of ints, each a block of ``model``.

    The one layer check: raises :class:`LayerError` (a ``ValueError`` and an ``IndexError``)
    naming the bad layers and the valid range.
    """
    n = int(as_bridge(model).cfg.n_layers)
    if layers is None:
        return list(range(n))
    layers = [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n]
    if bad or not layers:
        raise LayerError(
            f"layers {layers} are not valid for a {n}-layer model (empty or out of range); "
            f"use 0..{n - 1}."
        )
    return layers


def check_hook_names(model: Any, names: Iterable[str]) -> list[str]:
    """Return ``names`` as a list, raising ``KeyError`` (with close matches) for unknown ones."""
    names = list(names)
    known = model.hook_dict
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise KeyError(
                f"unknown hook name {name!r} for this model.{hint} "
                f"Names follow TransformerLens: e.g. {hook_name(0)!r}, "
                f"{hook_name(0, 'attn.hook_z')!r}; list them with sorted(model.hook_dict)."
            )
    return names


def resolve_positions(positions: Positions, seq_len: int) -> Tensor:
    """Positions as a 1-D long tensor of valid indices into ``[0, seq_len)``."""
    if positions is None:
        idx = torch.arange(seq_len)
    elif isinstance(positions, int):
        idx = torch.tensor([positions])
    elif isinstance(positions, slice):
        idx = torch.arange(seq_len)[positions]
    else:
        idx = torch.as_tensor(positions, dtype=torch.long).flatten()
    idx = torch.where(idx < 0, idx + seq_len, idx)
    if idx.numel() == 0 or idx.min() < 0 or idx.max() >= seq_len:
        raise IndexError(
            f"positions {positions!r} are empty or out of range for sequence length {seq_len}."
        )
    return idx


def _batches(n: int, batch_size: int, progress: bool, desc: str) -> Iterable[int]:
    return tqdm(range(0, n, batch_size), desc=desc, disable=None if progress else True, leave=False)


@torch.no_grad()
def capture(
    model: Any,
    inputs: Tensor,
    names: Sequence[str],
    positions: Positions = None,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Float[Tensor, "batch pos ..."]]:
    """Activations at ``names`` for every sequence, kept only at ``positions``.

    Runs ``run_with_cache`` in batches with a ``names_filter`` so that nothing else is
    stored; returns CPU tensors of shape ``[N, P, ...]``.
    """
    from tvlens.validation import check_batch_size, check_model_inputs

    batch_size = check_batch_size(batch_size)
    check_model_inputs(model, inputs)
    names = check_hook_names(model, names)
    idx = resolve_positions(positions, inputs.shape[1])
    wanted = set(names)
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    device = model_device(model)
    for i in _batches(inputs.shape[0], batch_size, progress, "capture"):
        _, cache = model.run_with_cache(
            inputs[i : i + batch_size].to(device), names_filter=lambda n: n in wanted
        )
        for n in names:
            out[n].append(cache[n][:, idx.to(cache[n].device)].detach().float().cpu())
    return {n: torch.cat(v) for n, v in out.items()}


class StreamingMean:
    """Per-group running means ``[n_groups, *shape]`` in float64: memory does not grow
    with the number of sequences seen."""

    def __init__(self, n_groups: int, shape: Sequence[int]) -> None:
        self.sum = torch.zeros(n_groups, *shape, dtype=torch.float64)
        self.count = torch.zeros(n_groups, dtype=torch.float64)

    def update(self, x: Float[Tensor, "n ..."], groups: Int[Tensor, " n"]) -> None:
        if x.shape[0] != groups.shape[0]:
            raise ValueError(
                f"{x.shape[0]} activations but {groups.shape[0]} group labels; pass one per row."
            )
        self.sum.index_add_(0, groups.cpu(), x.detach().double().cpu())
        self.count.index_add_(0, groups.cpu(), torch.ones(groups.shape[0], dtype=torch.float64))

    @property
    def mean(self) -> Tensor:
        if (self.count == 0).any():
            empty = torch.nonzero(self.count == 0).flatten().tolist()
            raise ValueError(f"groups {empty} received no samples; sample every group.")
        shape = (-1,) + (1,) * (self.sum.dim() - 1)
        return (self.sum / self.count.view(shape)).float()


@torch.no_grad()
def capture_means(
    model: Any,
    inputs: Tensor,
    groups: Int[Tensor, " batch"],
    names: Sequence[str],
    n_groups: int,
    positions: Positions = None,
    batch_size: int = 256,
    reduce_positions: bool = True,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Streaming per-group means of activations at ``names`` over ``positions``.

    With ``reduce_positions`` the positions are averaged too (→ ``[n_groups, d]``);
    otherwise the result keeps them (→ ``[n_groups, P, d]``).
    """
    from tvlens.validation import check_batch_size, check_group_ids, check_model_inputs

    batch_size = check_batch_size(batch_size)
    check_model_inputs(model, inputs)
    groups = check_group_ids(groups, n_groups, inputs.shape[0])
    names = check_hook_names(model, names)
    idx = resolve_positions(positions, inputs.shape[1])
    wanted = set(names)
    device = model_device(model)
    means: dict[str, StreamingMean] = {}
    for i in _batches(inputs.shape[0], batch_size, progress, "capture means"):
        g = groups[i : i + batch_size]
        _, cache = model.run_with_cache(
            inputs[i : i + batch_size].to(device), names_filter=lambda n: n in wanted
        )
        for n in names:
            act = cache[n][:, idx.to(cache[n].device)]  # [b, P, ...]
            if reduce_positions:
                rows = act.flatten(0, 1)
                rg = g.repeat_interleave(idx.numel())
            else:
                rows, rg = act, g
            if n not in means:
                means[n] = StreamingMean(n_groups, rows.shape[1:])
            means[n].update(rows, rg)
    return {n: m.mean for n, m in means.items()}


def model_device(model: Any) -> torch.device:
    """Where a model's inputs go: its first parameter's device (the embedding's, also when
    the model is split over devices), else ``cfg.device``, else the CPU."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        dev = getattr(getattr(model, "cfg", None), "device", None)
        return torch.device(dev) if dev is not None else torch.device("cpu")


def _check_width(act: Tensor, width: int, what: str) -> None:
    if act.shape[-1] != width:
        raise ValueError(
            f"{what} has width {width} but the hooked activation has width "
            f"{act.shape[-1]} (shape {tuple(act.shape)}); hook a residual-stream point."
        )


# --------------------------------------------------------------------------- hook factories
def patch_hook(value: Tensor, positions: Positions = None) -> HookFn:
    """Replace the activation at ``positions`` by ``value`` (broadcast over the batch)."""
    from tvlens.validation import check_tensor

    check_tensor(value, "value")

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        idx = resolve_positions(positions, act.shape[1]).to(act.device)
        act = act.clone()
        _check_broadcast(value, act[:, idx].shape, "patch_hook value")
        act[:, idx] = value.to(act.device, act.dtype).expand_as(act[:, idx])
        return act

    return hook


def _check_broadcast(value: Tensor, shape: torch.Size, what: str) -> None:
    """``value`` broadcasts to the patched activation's ``shape``, else a clear error."""
    from tvlens.validation import InvalidInputError

    try:
        ok = value.dim() <= len(shape) and torch.broadcast_shapes(
            tuple(value.shape), tuple(shape)
        ) == tuple(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise InvalidInputError(
            f"{what} has shape {tuple(value.shape)}, which does not broadcast to the patched "
            f"activation [batch, positions, ...] = {tuple(shape)}; pass one vector "
            f"{tuple(shape[2:])} or values of shape {tuple(shape[1:])} or {tuple(shape)}."
        )


def add_hook(
    vector: Float[Tensor, " d"], positions: Positions = None, scale: float = 1.0
) -> HookFn:
    """Add ``scale * vector`` to the residual at ``positions`` (steering by addition)."""
    from tvlens.validation import check_finite_value, check_tensor

    check_tensor(vector, "vector", dim=(1, 2))
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        from tvlens.validation import InputTypeError

        raise InputTypeError(f"scale must be a number; got {scale!r}.")
    check_finite_value(float(scale), "scale")

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        _check_width(act, vector.shape[-1], "steering vector")
        idx = resolve_positions(positions, act.shape[1]).to(act.device)
        act = act.clone()
        act[:, idx] = act[:, idx] + scale * vector.to(act.device, act.dtype)
        return act

    return hook


def orthonormal_basis(vectors: Float[Tensor, "k d"], tol: float = 1e-6) -> Float[Tensor, "r d"]:
    """An orthonormal basis (rows) of the span of ``vectors``, dropping null directions."""
    if vectors.numel() == 0:
        return vectors.reshape(0, vectors.shape[-1])
    u, s, vh = torch.linalg.svd(vectors.double(), full_matrices=False)
    keep = s > tol * max(1.0, float(s.max()))
    return vh[keep].to(vectors.dtype)


def _check_basis(basis: Any, name: str = "basis") -> None:
    """A finite ``[r, d]`` tensor with orthonormal rows (what the projections assume)."""
    from tvlens.validation import check_orthonormal, check_tensor

    check_tensor(basis, name, dim=2)
    check_orthonormal(basis, name)


def project_out_hook(basis: Float[Tensor, "r d"], positions: Positions = None) -> HookFn:
    """Ablate a subspace: ``h' = h − P_S h`` at ``positions``; ``basis`` rows are orthonormal.

    A basis with zero rows leaves the activation unchanged.
    """
    _check_basis(basis)

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        _check_width(act, basis.shape[-1], "subspace basis")
        if basis.shape[0] == 0:
            return act
        idx = resolve_positions(positions, act.shape[1]).to(act.device)
        b = basis.to(act.device, act.dtype)
        act = act.clone()
        h = act[:, idx]
        act[:, idx] = h - (h @ b.T) @ b
        return act

    return hook


def replace_subspace_hook(
    basis: Float[Tensor, "r d"], target: Float[Tensor, "*batch d"], positions: Positions = None
) -> HookFn:
    """Steer: replace the component of ``h`` inside span(basis) by that of ``target``.

    ``h' = h − P_S h + P_S target``: the part of ``h`` orthogonal to the task subspace is
    kept, the task part is set to ``target``'s (e.g. θ_k, or Σ α_k θ_k plus the centre).
    ``target`` is one vector ``[d]`` or one per sequence ``[batch, d]``.
    """
    from tvlens.validation import InvalidInputError, check_tensor

    _check_basis(basis)
    check_tensor(target, "target", dim=(1, 2), width=basis.shape[-1])

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        _check_width(act, basis.shape[-1], "subspace basis")
        if target.dim() == 2 and target.shape[0] not in (1, act.shape[0]):
            raise InvalidInputError(
                f"target has {target.shape[0]} rows but the batch has {act.shape[0]} "
                "sequences; pass one target [d] or one per sequence [batch, d]."
            )
        idx = resolve_positions(positions, act.shape[1]).to(act.device)
        b = basis.to(act.device, act.dtype)
        t = target.to(act.device, act.dtype)
        inside = (t @ b.T) @ b
        if inside.dim() == 2:
            inside = inside[:, None]
        act = act.clone()
        h = act[:, idx]
        act[:, idx] = h - (h @ b.T) @ b + inside
        return act

    return hook
