"""Run a bridge from the middle: from one layer on, and (under causal attention) from one position on.

Activation patching changes one activation and reruns the model. Two facts make most of that
rerun unnecessary:

1. Blocks *before* the patched layer cannot see the patch. Their output is the cached
   residual of the unpatched run, so the rerun starts at the patched layer. (TL 4.3's
   ``bridge(x, start_at_layer=k)`` still executes blocks ``0..k-1`` and discards them, so it
   saves nothing; the runners below call the blocks themselves.)
2. Under causal attention, positions *before* the patched one cannot see it either. Their
   residuals, keys and values in every later layer equal the unpatched run's, so only the
   suffix ``p0..T-1`` is recomputed: queries from the suffix, keys and values from the cached
   prefix plus the recomputed suffix.

Both runners take ``n`` stacked copies of the batch (patch-major: row ``k * batch + b`` is
copy ``k``), so several patches can share one forward.

- :class:`NativeSuffixRunner` is the fast path for TL-native bridges (a ``TransformerBridge``
  over a :class:`~transformer_lens.model_bridge.sources.native.NativeModel`, which is what
  :class:`tvlens.models.TaskModel` builds). It computes the blocks straight from the wrapped
  modules' weights (plain ``nn.Linear`` / norm modules, fused attention kernels), so hook
  points do not fire inside it; :meth:`NativeSuffixRunner.check` compares it with the bridge.
- :class:`BridgeSuffixRunner` works on any bridge, e.g. Llama or Gemma-2 booted with
  ``TransformerBridge.boot_transformers``. It records the arguments each block received on
  the unpatched run and calls the bridge's own blocks from the patched layer on, so ordinary
  TL hook functions fire and do the patching. Where the bridge's attention honours
  ``past_key_values`` (TL's reimplemented HF attention does), it hands each block a cache
  holding the unpatched prefix's keys and values and runs the suffix only. Every shortcut is
  checked against the bridge's own forward and dropped when it does not reproduce it: by
  :meth:`BridgeSuffixRunner.prepare` on its own forward, or, in sweeps, by
  :meth:`BridgeSuffixRunner.record` (the sweep's unpatched run, recording what replays need)
  and :meth:`BridgeSuffixRunner.verify`, which checks once per model and hook set, keeps the
  verdict on the bridge and spot-checks it on later sweeps. Head patches can start after their
  layer's attention (:meth:`BridgeSuffixRunner.run_from_mid`) where the block allows it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge.sources.native.model import (
    NativeAttention,
    NativeGatedMLP,
    NativeMLP,
    NativeModel,
)
from transformer_lens.utilities.activation_functions import apply_softcap

from tvlens.hooks.core import hook_name
from tvlens.hooks.tl_compat import rotate_half

log = logging.getLogger(__name__)

HookList = Sequence[tuple[str, Any]]


def unembed(bridge: Any, resid: Float[Tensor, "... d"]) -> Float[Tensor, "... vocab"]:
    """A bridge's logits from the last block's output: final norm, unembedding, and the
    adapter's output transform (Gemma-2's final soft-cap), as its forward computes them."""
    logits = bridge.unembed(bridge.ln_final(resid))
    transform = getattr(getattr(bridge, "adapter", None), "apply_output_logits_transform", None)
    return logits if transform is None else transform(logits)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain torch module under any number of TL bridge wrappers."""
    for _ in range(8):
        inner = getattr(module, "original_component", None)
        if not isinstance(inner, nn.Module) or inner is module:
            return module
        module = inner
    return module


def native_model(bridge: Any) -> NativeModel | None:
    """The TL-native module under ``bridge``, or ``None`` for other (e.g. HF) bridges."""
    model = getattr(bridge, "original_model", None)
    return model if isinstance(model, NativeModel) else None


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _close(a: Tensor, b: Tensor, atol: float) -> bool:
    """``a`` equals ``b`` up to ``atol`` relative to the logits' scale (at least 1)."""
    return a.shape == b.shape and max_abs_diff(a, b) <= atol * max(1.0, float(b.abs().max()))


def _read(x: Tensor, rows: Tensor | None) -> Tensor:
    """Positions ``rows`` of ``x`` ``[n, S, ...]``: ``[R]`` shared by every row, or
    ``[n, R]`` per row (e.g. each prompt's own query token)."""
    if rows is None:
        return x
    if rows.dim() == 1:
        return x[:, rows]
    idx = rows.to(x.device).reshape(*rows.shape, *([1] * (x.dim() - 2)))
    return x.gather(1, idx.expand(*rows.shape, *x.shape[2:]))


def _stack(x: Tensor, copies: int) -> Tensor:
    """``copies`` copies of ``x`` along dim 0, patch-major (copy k holds rows k·B..)."""
    return x if copies == 1 else x.repeat(copies, *([1] * (x.dim() - 1)))


# =========================================================================== native path
class _Layer:
    """The plain modules of one native block."""

    def __init__(self, block: nn.Module) -> None:
        block = unwrap(block)
        attn = unwrap(block.attn)
        if not isinstance(attn, NativeAttention):
            raise TypeError(f"expected a NativeAttention, got {type(attn).__name__}")
        self.ln1 = unwrap(block.ln1)
        self.q, self.k, self.v, self.o = (unwrap(getattr(attn, n)) for n in ("q", "k", "v", "o"))
        self.rotary = attn.rotary
        self.n_heads, self.n_kv, self.d_head = attn.n_heads, attn.n_kv_heads, attn.d_head
        self.kv_repeats = attn.kv_repeats
        self.scale = float(attn.scale)
        self.soft_cap = float(attn.attn_scores_soft_cap)
        self.attn_only = bool(block.cfg.attn_only)
        if self.attn_only:
            return
        self.ln2 = unwrap(block.ln2)
        mlp = unwrap(block.mlp)
        if isinstance(mlp, NativeGatedMLP):
            self.gated, self.mlp_ln = True, None
            self.fc_gate, self.fc_in, self.fc_out = (
                unwrap(mlp.gate),
                unwrap(getattr(mlp, "in")),
                unwrap(mlp.out),
            )
        elif isinstance(mlp, NativeMLP):
            self.gated = False
            self.fc_in, self.fc_out = unwrap(mlp.fc_in), unwrap(mlp.fc_out)
            self.mlp_ln = None if mlp.ln is None else unwrap(mlp.ln)
        else:
            raise TypeError(f"unsupported native MLP {type(mlp).__name__}")
        self.act = mlp.act

    def mlp(self, resid_mid: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """``mlp(ln2(resid_mid))``: the block's MLP branch (its ``hook_mlp_out``)."""
        x = self.ln2(resid_mid)
        if self.gated:
            return self.fc_out(self.act(self.fc_gate(x)) * self.fc_in(x))
        mid = self.act(self.fc_in(x))
        if self.mlp_ln is not None:
            mid = self.mlp_ln(mid)
        return self.fc_out(mid)

    def rope(self, x: Tensor, pos: Tensor) -> Tensor:
        """Rotary embedding of ``x`` ``[n, heads, S, d_head]`` at absolute positions ``pos``."""
        if self.rotary is None:
            return x
        rd = self.rotary.rotary_dim
        cos = self.rotary.cos_cached[pos].to(x.dtype)
        sin = self.rotary.sin_cached[pos].to(x.dtype)
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        x_rot = x_rot * cos + rotate_half(self.rotary, x_rot) * sin
        return torch.cat([x_rot, x_pass], dim=-1) if x_pass.shape[-1] else x_rot

    def kv(self, normed: Float[Tensor, "n S d"], pos: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (after rotary) and values ``[n, kv_heads, S, d_head]`` before GQA repeats."""
        n, s, _ = normed.shape
        k = self.k(normed).view(n, s, self.n_kv, self.d_head).transpose(1, 2)
        v = self.v(normed).view(n, s, self.n_kv, self.d_head).transpose(1, 2)
        return self.rope(k, pos), v


class NativeSuffixRunner:
    """Recompute a TL-native bridge from layer ``j`` over positions ``p0..T-1`` only.

    :meth:`prepare` runs the unpatched model once from ``blocks.0.hook_resid_pre`` and keeps
    every layer's keys and values (``2 · n_layers · batch · T · d`` floats: part of the one
    cache a sweep holds). :meth:`run` then takes residuals entering ``start_layer`` at
    positions ``p0..`` for ``n`` stacked copies of the batch and returns their logits.
    """

    def __init__(self, bridge: Any) -> None:
        model = native_model(bridge)
        if model is None:
            raise TypeError("NativeSuffixRunner needs a bridge over a TL NativeModel.")
        self.layers = [_Layer(block) for block in model.layers]
        self.ln_out = unwrap(model.ln_out)
        self.head = unwrap(model.head)
        self.logit_cap = float(model.output_logits_soft_cap)
        self.causal = model.cfg.attention_dir == "causal"
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    # ------------------------------------------------------------------ pieces
    def attention(
        self,
        i: int,
        normed: Float[Tensor, "n S d"],
        p0: int,
        query_rows: Tensor | None = None,
        z_out: list[Tensor] | None = None,
        kv_out: list[Tensor] | None = None,
    ) -> Float[Tensor, "n Q d"]:
        """Attention output of layer ``i`` for suffix rows (all, or ``query_rows`` of them).

        Keys and values of positions ``< p0`` come from the unpatched run's cache. With
        ``z_out``, the head outputs ``[n, Q, head, d_head]`` (``attn.hook_z``) are appended, and with ``kv_out`` the suffix's keys and values.
        """
        layer = self.layers[i]
        n, s, _ = normed.shape
        pos = torch.arange(p0, p0 + s, device=normed.device)
        k, v = layer.kv(normed, pos)
        if kv_out is not None:
            kv_out.extend([k, v])
        if p0 > 0:
            reps = n // self.keys[i].shape[0]
            k = torch.cat([_stack(self.keys[i][:, :, :p0], reps), k], dim=2)
            v = torch.cat([_stack(self.values[i][:, :, :p0], reps), v], dim=2)
        if layer.kv_repeats > 1:
            k = k.repeat_interleave(layer.kv_repeats, dim=1)
            v = v.repeat_interleave(layer.kv_repeats, dim=1)
        q_in = normed if query_rows is None else normed[:, query_rows]
        q_pos = pos if query_rows is None else pos[query_rows]
        nq = q_in.shape[1]
        q = layer.rope(
            layer.q(q_in).view(n, nq, layer.n_heads, layer.d_head).transpose(1, 2), q_pos
        )
        allowed = None
        if self.causal:
            allowed = torch.arange(k.shape[2], device=q.device)[None, :] <= q_pos[:, None]
        if layer.soft_cap > 0:
            scores = apply_softcap(
                torch.matmul(q, k.transpose(-2, -1)) / layer.scale, layer.soft_cap
            )
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            z = torch.matmul(F.softmax(scores, dim=-1), v)
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=1.0 / layer.scale)
        z = z.transpose(1, 2)
        if z_out is not None:
            z_out.append(z)
        return layer.o(z.reshape(n, nq, -1))

    def finish_layer(self, i: int, resid_mid: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """``resid_post`` of layer ``i`` from its ``resid_mid`` (adds the MLP branch)."""
        layer = self.layers[i]
        return resid_mid if layer.attn_only else resid_mid + layer.mlp(resid_mid)

    def mlp_out(self, i: int, mlp_input: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """Layer ``i``'s MLP branch on ``mlp_input`` (zero for attention-only models)."""
        layer = self.layers[i]
        return torch.zeros_like(mlp_input) if layer.attn_only else layer.mlp(mlp_input)

    def attn_out_from_z(self, i: int, z: Float[Tensor, "... head d_head"]) -> Tensor:
        """Layer ``i``'s attention output from head outputs ``z`` (``attn.hook_z``)."""
        return self.layers[i].o(z.flatten(-2))

    def unembed(self, resid: Float[Tensor, "... d"]) -> Float[Tensor, "... vocab"]:
        return apply_softcap(self.head(self.ln_out(resid)), self.logit_cap)

    # ------------------------------------------------------------------ runs
    @torch.no_grad()
    def forward(
        self,
        resid_pre0: Float[Tensor, "batch pos d"],
        record: set[str] = frozenset(),
        keep_kv: bool = False,
    ) -> tuple[Float[Tensor, "batch pos vocab"], dict[str, Tensor]]:
        """Run the model from ``blocks.0.hook_resid_pre``; logits and the ``record``-ed hooks.

        ``record`` holds point names (``resid_pre``, ``resid_mid``, ``resid_post``,
        ``attn_out``, ``mlp_out``, ``attn.hook_z``); the activations come back under their
        TL hook names. ``keep_kv`` keeps every layer's keys and values for :meth:`run`.
        """
        if keep_kv:
            self.keys, self.values = [], []
        acts: dict[str, Tensor] = {}

        # ``record`` may use any TL spelling ("z" or "attn.hook_z"): compare full hook names
        wanted = {hook_name(0, p).removeprefix("blocks.0.") for p in record}

        def put(i: int, point: str, value: Tensor) -> None:
            name = hook_name(i, point)
            if name.removeprefix(f"blocks.{i}.") in wanted:
                acts[name] = value

        x = resid_pre0
        for i, layer in enumerate(self.layers):
            put(i, "resid_pre", x)
            normed = layer.ln1(x)
            z: list[Tensor] = []
            kv: list[Tensor] = []
            attn_out = self.attention(i, normed, 0, z_out=z, kv_out=kv)
            if keep_kv:
                self.keys.append(kv[0])
                self.values.append(kv[1])
            put(i, "attn.hook_z", z[0])
            put(i, "attn_out", attn_out)
            mid = x + attn_out
            put(i, "resid_mid", mid)
            if not layer.attn_only:
                mlp_out = layer.mlp(mid)
                put(i, "mlp_out", mlp_out)
                x = mid + mlp_out
            else:
                x = mid
            put(i, "resid_post", x)
        return self.unembed(x), acts

    def prepare(self, resid_pre0: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos vocab"]:
        """Run the unpatched model and keep its keys and values; returns its logits."""
        return self.forward(resid_pre0, keep_kv=True)[0]

    @torch.no_grad()
    def run(
        self,
        resid: Float[Tensor, "n S d"],
        start_layer: int,
        p0: int,
        read_rows: Tensor | None = None,
    ) -> Float[Tensor, "n R vocab"]:
        """Logits at suffix positions ``p0..`` (or at ``read_rows`` of them, relative to p0).

        ``resid`` enters layer ``start_layer`` (``n_layers``: straight to the unembedding).
        In the last layer only the rows the metric reads get queries and an MLP.
        """
        if p0 > 0 and not self.causal:
            raise ValueError("suffix runs need causal attention; start at position 0.")
        x = resid
        last = self.n_layers - 1
        for i in range(start_layer, self.n_layers):
            normed = self.layers[i].ln1(x)
            rows = read_rows if i == last else None
            if rows is not None:
                x = x[:, rows]
            x = self.finish_layer(i, x + self.attention(i, normed, p0, rows))
        if start_layer > last and read_rows is not None:
            x = x[:, read_rows]
        return self.unembed(x)

    def check(self, logits: Tensor, reference: Tensor, atol: float = 1e-5) -> float:
        """Max |difference| between this runner's and the bridge's logits; raise if large."""
        if not _close(logits, reference, atol):
            raise RuntimeError(
                f"the native runner differs from the bridge's forward by "
                f"{max_abs_diff(logits, reference):.2e}; this model is not supported by the "
                "native engine (use engine='bridge')."
            )
        return max_abs_diff(logits, reference)


# =========================================================================== any bridge
class _RecordingCache:
    """Stands in for ``past_key_values`` on the unpatched replay: keeps each layer's K/V."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        self.kv[layer_idx] = (key, value)
        return key, value


class _PrefixCache:
    """Stands in for ``past_key_values`` on a suffix run: prepends the cached prefix K/V."""

    def __init__(self, kv: dict[int, tuple[Tensor, Tensor]], p0: int, copies: int) -> None:
        self.kv, self.p0, self.copies = kv, p0, copies  # copies grows as a stack is joined

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        pk, pv = self.kv[layer_idx]
        pk = _stack(pk[..., : self.p0, :], self.copies).to(key.dtype)
        pv = _stack(pv[..., : self.p0, :], self.copies).to(value.dtype)
        return torch.cat([pk, key], dim=-2), torch.cat([pv, value], dim=-2)


#: Block keyword arguments that the suffix path knows how to cut to positions ``p0..``.
_SLICERS = {
    "position_embeddings": lambda t, p0: t[..., p0:, :],
    "attention_mask": lambda t, p0: t[..., p0:, :] if t.dim() == 4 else t,
    "position_ids": lambda t, p0: t[..., p0:],
    "cache_position": lambda t, p0: t[..., p0:],
}
#: HF cache arguments a block may receive. They are dropped from the recorded arguments (the
#: suffix path passes its own cache). transformers >= 5.24 names the cache ``cache``; earlier 5.x
#: releases name it ``past_key_values``.
_WARNED: set[tuple[str, str, str]] = set()
#: The attribute of a bridge under which :meth:`BridgeSuffixRunner.verify` keeps its verdicts.
_VERDICTS = "_tvlens_patching_verdicts"
_DROPPED = ("past_key_values", "past_key_value", "layer_past", "cache")


def _cache_kwarg(block: nn.Module) -> str:
    """The name under which ``block``'s HF layer takes its KV cache (``cache`` from 5.24)."""
    import inspect

    try:
        params = inspect.signature(unwrap(block).forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_alias_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Hand TL's attention bridge a cache passed as ``cache=`` under ``past_key_values``.

    TL 4.3's attention bridges read ``past_key_values`` (or ``layer_past``) only, while HF
    decoder layers from transformers 5.24 forward the cache to attention as ``cache=``.
    """
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        kwargs = dict(kwargs)
        kwargs["past_key_values"] = kwargs.pop("cache")
        return args, kwargs
    return None


def _rows_only_mlp(block: nn.Module, rows: Tensor) -> list[Any]:
    """Hooks that make ``block.mlp`` compute ``rows`` only and pad the others with zeros."""
    mlp = getattr(block, "mlp", None)
    if not isinstance(mlp, nn.Module):
        return []
    shape: list[torch.Size] = []

    def pre(module: nn.Module, args: tuple) -> tuple | None:
        if not args or not torch.is_tensor(args[0]) or args[0].dim() != 3:
            return None
        shape.append(args[0].shape)
        return (_read(args[0], rows), *args[1:])

    def post(module: nn.Module, args: tuple, out: Any) -> Any:
        if not shape or not torch.is_tensor(out):
            return None
        full = out.new_zeros(shape.pop()[:2] + out.shape[2:])
        if rows.dim() == 1:
            full[:, rows.to(out.device)] = out
        else:
            idx = rows.to(out.device).unsqueeze(-1).expand(*rows.shape, out.shape[-1])
            full.scatter_(1, idx, out)
        return full

    return [mlp.register_forward_pre_hook(pre), mlp.register_forward_hook(post)]


def _block_args_recorder(records: dict[int, tuple[tuple, dict]], i: int) -> Any:
    """A forward pre-hook keeping block ``i``'s arguments other than its input (the
    position embeddings, masks, …) in ``records[i]``, for replaying the block later."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = {k: v for k, v in kwargs.items() if k not in _DROPPED}
        kwargs.pop("hidden_states", None)
        records[i] = (tuple(args[1:]), kwargs)

    return hook


class BridgeSuffixRunner:
    """Replay any bridge's blocks ``l..L-1`` from a cached residual, with TL hooks firing.

    :meth:`prepare` runs the bridge once, records the extra arguments each block was called
    with (attention mask, rotary tables, position ids) and checks three shortcuts against
    that forward: replaying the blocks at all (else every patch runs the whole bridge, as
    ``transformer_lens.patching`` does), stacking copies of the batch (``batch_ok``), and
    running a suffix with the prefix's keys and values from a cache (``suffix_ok``).
    """

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge
        self.n_layers = len(bridge.blocks)
        self.block_args: list[tuple[tuple, dict]] = []
        self.inputs: Tensor | None = None
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.replay_ok = self.batch_ok = self.suffix_ok = False
        self.rows_ok = False
        self.causal = getattr(bridge.cfg, "attention_dir", "causal") == "causal"
        self.cache_kwargs = [_cache_kwarg(block) for block in bridge.blocks]
        self.refused: dict[str, str] = {}
        #: Whether head outputs map to the residual as ``resid_pre + o(z)`` then the block's own
        #: ``ln2``/``mlp`` (Llama-like blocks; not Gemma-2's post-norms). None: not checked.
        self.z_ok: bool | None = None
        #: How this sweep's shortcuts were settled: "checked" (full checks, this call) or
        #: "cached" (an earlier verdict for this model, confirmed by a spot check).
        self.verdict_source = ""
        self._key: tuple | None = None

    @property
    def _batch(self) -> int:
        """Rows of the recorded unpatched input: one copy of the batch in a stack."""
        return self.inputs.shape[0] if self.inputs is not None else 1

    # ------------------------------------------------------------------ setup
    @torch.no_grad()
    def _record(self, inputs: Tensor, positions: Tensor | None = None) -> Tensor:
        """The unpatched run's logits (at ``positions`` only, when given), recording each
        block's arguments (:meth:`record` without the keys and values)."""
        kw = {} if positions is None else {"logits_to_keep": positions.to(inputs.device)}
        return self.record(inputs, keep_kv=False, **kw)[0]

    @torch.no_grad()
    def prepare(
        self,
        inputs: Tensor,
        resid_pre0: Tensor,
        atol: float = 1e-5,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Record the unpatched run of ``inputs`` and decide which shortcuts are exact.

        ``positions`` (sorted absolute indices, HF bridges only) limits the returned logits
        and every check to those positions, so a large vocabulary is unembedded there only;
        the suffix check then starts at the first of them (at least position 1).

        A refused shortcut is kept in :attr:`refused` (shortcut → reason) and logged once per
        bridge class and reason at WARNING: the results stay exact, but a sweep that silently
        lost its speed-up would be a bug.
        """
        self.inputs = inputs
        self.refused = {}
        reference = self._record(inputs, positions)
        batch, seq = resid_pre0.shape[:2]
        recorder = _RecordingCache()
        try:
            replay = self._blocks(resid_pre0, 0, 0, 1, recorder, positions)
            self.replay_ok = _close(replay, reference, atol)
            if not self.replay_ok:
                self._refuse(
                    "replay", f"differs from the forward by {max_abs_diff(replay, reference):.2e}"
                )
        except Exception as e:  # noqa: BLE001 - a capability probe; the fallback is exact
            self._refuse("replay", f"{type(e).__name__}: {e}")
        if not self.replay_ok:
            return reference
        self.kv = recorder.kv
        try:
            stacked = self._blocks(_stack(resid_pre0, 2), 0, 0, 2, None, positions)
            self.batch_ok = _close(stacked, _stack(reference, 2), atol)
            if not self.batch_ok:
                self._refuse("stacking", "stacked copies differ from the forward")
        except Exception as e:  # noqa: BLE001
            self._refuse("stacking", f"{type(e).__name__}: {e}")
        try:
            if positions is None:
                rows = torch.tensor([seq - 1], device=resid_pre0.device)
                expected = reference[:, rows]
            else:  # reference holds the checked positions only; compare the last of them
                rows, expected = positions[-1:].to(resid_pre0.device), reference[:, -1:]
            only = self._blocks(resid_pre0, 0, 0, 1, None, rows, rows_mlp=True)
            self.rows_ok = _close(only, expected, atol)
            if not self.rows_ok:
                self._refuse("read-rows MLP", "the last MLP on read rows differs from the forward")
        except Exception as e:  # noqa: BLE001
            self._refuse("read-rows MLP", f"{type(e).__name__}: {e}")
        unknown = sorted(
            {
                k
                for _, kwargs in self.block_args
                for k, v in kwargs.items()
                if torch.is_tensor(v) and k not in _SLICERS
            }
        )
        if not self.causal or seq < 2:
            pass  # suffix runs need causal attention and at least two positions; not a refusal
        elif len(self.kv) != self.n_layers:
            self._refuse(
                "suffix",
                f"the attention of {self.n_layers - len(self.kv)} of {self.n_layers} blocks "
                "did not use the KV cache it was handed",
            )
        elif unknown:
            self._refuse("suffix", f"blocks take tensor arguments it cannot cut: {unknown}")
        else:
            p0, read, ref = seq // 2, None, reference[:, seq // 2 :]
            if positions is not None:
                p0 = max(1, min(p0, int(positions.min())))
                later = positions >= p0
                read, ref = positions[later] - p0, reference[:, later]
            try:
                suffix = self._blocks(resid_pre0[:, p0:], 0, p0, 1, None, read)
                self.suffix_ok = _close(suffix, ref, atol)
                if not self.suffix_ok:
                    self._refuse(
                        "suffix",
                        f"differs from the forward by {max_abs_diff(suffix, ref):.2e}",
                    )
            except Exception as e:  # noqa: BLE001
                self._refuse("suffix", f"{type(e).__name__}: {e}")
        if not self.suffix_ok:
            self.kv = {}
        return reference

    def _refuse(self, shortcut: str, reason: str) -> None:
        self.refused[shortcut] = reason
        key = (type(unwrap(self.bridge.blocks[0])).__name__, shortcut, reason)
        if key not in _WARNED:
            _WARNED.add(key)
            log.warning(
                "bridge patching engine: %s shortcut refused on %s (%s); results stay exact "
                "but slower. Tested versions: see tvlens.versions.",
                shortcut,
                key[0],
                reason,
            )

    # ------------------------------------------------------------------ amortised setup
    @torch.no_grad()
    def record(
        self,
        inputs: Tensor,
        names: Sequence[str] = (),
        keep_kv: bool = True,
        **forward_kwargs: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One forward of the bridge: its logits and the activations ``names``, recording on
        the way what a replay needs (each block's extra arguments and, with ``keep_kv``, every
        layer's keys and values, taken by handing each attention a recording cache).

        Together with :meth:`verify` this replaces :meth:`prepare` in sweeps: the unpatched run
        that the sweep caches anyway is the one replayed, so no separate forward is spent.
        """
        self.inputs = inputs
        records: dict[int, tuple[tuple, dict]] = {}
        recorder = _RecordingCache() if keep_kv and self.causal else None

        def injector(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            # A fresh forward's own cache (``cache=`` or ``past_key_values=``) starts empty, so
            # the recorder, which returns each key and value unchanged, takes its place.
            return args, {**kwargs, "past_key_values": recorder}

        handles = [
            block.register_forward_pre_hook(_block_args_recorder(records, i), with_kwargs=True)
            for i, block in enumerate(self.bridge.blocks)
        ]
        if recorder is not None:
            for block in self.bridge.blocks:
                attn = getattr(block, "attn", None)
                if isinstance(attn, nn.Module):
                    handles.append(attn.register_forward_pre_hook(injector, with_kwargs=True))
        try:
            if names:
                wanted = set(names)
                logits, cache = self.bridge.run_with_cache(
                    inputs, names_filter=wanted.__contains__, **forward_kwargs
                )
                acts = dict(cache.items())
            else:
                logits, acts = self.bridge(inputs, **forward_kwargs), {}
        finally:
            for h in handles:
                h.remove()
        if len(records) != self.n_layers:
            raise RuntimeError("not every block of the bridge ran on the unpatched input.")
        self.block_args = [records[i] for i in range(self.n_layers)]
        self.kv = {} if recorder is None else recorder.kv
        return logits, acts

    def verdict_key(self, seq: int) -> tuple:
        """What a verdict depends on: the block type, dtype and device, the arguments the blocks
        take, the hooks attached to the bridge, and whether suffixes can be tried (``seq >= 2``)."""
        block = self.bridge.blocks[0]
        param = next(self.bridge.parameters(), None)
        args, kwargs = self.block_args[0] if self.block_args else ((), {})
        signature = tuple(
            sorted(
                (k, v.dim() if torch.is_tensor(v) else type(v).__name__) for k, v in kwargs.items()
            )
        )
        hooked = tuple(
            sorted(
                name
                for name, hp in self.bridge.hook_dict.items()
                if hp._forward_hooks or hp._forward_pre_hooks
            )
        )
        torch_hooks = tuple(
            len(b._forward_hooks) + len(b._forward_pre_hooks) for b in self.bridge.blocks
        )
        return (
            type(unwrap(block)).__name__,
            None if param is None else (param.dtype, param.device.type),
            len(args),
            signature,
            hooked,
            torch_hooks,
            self.causal and seq >= 2,
        )

    @torch.no_grad()
    def verify(
        self,
        reference: Tensor,
        spot_resid: Tensor | None = None,
        atol: float = 1e-5,
    ) -> None:
        """Settle which shortcuts this sweep may take, after :meth:`record`.

        The first sweep on a model runs the full checks (replaying the blocks, stacked copies,
        suffixes over the recorded keys and values, the read-rows MLP: about 3.5 forwards) and
        caches the verdict on the bridge, keyed by :meth:`verdict_key`. Later sweeps reuse it
        after a spot check that costs a fraction of one layer: the last block, replayed from
        ``spot_resid`` (the unpatched ``blocks.{L-1}.hook_resid_pre``) over the last position
        only, as two stacked copies, must give ``reference``'s last row. A failed spot check
        drops the verdict and reruns the full checks.
        """
        seq = reference.shape[1]
        verdicts = self.bridge.__dict__.setdefault(_VERDICTS, {})
        key = self._key = self.verdict_key(seq)
        verdict = verdicts.get(key)
        if verdict is not None:
            self._apply(verdict)
            if self._spot_check(reference, spot_resid, atol):
                self.verdict_source = "cached"
                return
            log.info("bridge patching engine: spot check failed; checking every shortcut again")
            verdicts.pop(key, None)
        self._full_checks(reference, atol)
        self.verdict_source = "checked"
        verdicts[key] = self._verdict()

    @staticmethod
    def forget(bridge: Any) -> None:
        """Drop the verdicts cached on ``bridge``: the next sweep checks every shortcut again
        (e.g. after changing the bridge's modules in a way the key does not see)."""
        bridge.__dict__.pop(_VERDICTS, None)

    def _verdict(self) -> dict[str, Any]:
        return {
            "replay_ok": self.replay_ok,
            "batch_ok": self.batch_ok,
            "rows_ok": self.rows_ok,
            "suffix_ok": self.suffix_ok,
            "z_ok": self.z_ok,
            "refused": dict(self.refused),
        }

    def _apply(self, verdict: dict[str, Any]) -> None:
        self.replay_ok, self.batch_ok = verdict["replay_ok"], verdict["batch_ok"]
        self.rows_ok, self.suffix_ok = verdict["rows_ok"], verdict["suffix_ok"]
        self.z_ok, self.refused = verdict["z_ok"], dict(verdict["refused"])
        if not self.suffix_ok:
            self.kv = {}

    def _forward_rows(self, rows: Tensor) -> Tensor:
        """The bridge's own forward, unembedded at ``rows`` only where it takes HF's
        ``logits_to_keep`` (else in full, then read there)."""
        try:
            logits = self.bridge(self.inputs, logits_to_keep=rows)
        except (TypeError, ValueError):
            logits = self.bridge(self.inputs)
        if logits.shape[1] == rows.numel():
            return logits
        return logits[:, rows]

    def _store_z_verdict(self, ok: bool) -> None:
        self.z_ok = ok
        verdict = self.bridge.__dict__.get(_VERDICTS, {}).get(self._key)
        if isinstance(verdict, dict):
            verdict["z_ok"] = ok

    def _spot_check(self, reference: Tensor, spot_resid: Tensor | None, atol: float) -> bool:
        if not self.replay_ok:
            return True  # full forwards with hooks: nothing to spot
        if spot_resid is None:
            return False
        seq, last = reference.shape[1], self.n_layers - 1
        p0 = seq - 1 if self.suffix_ok else 0
        copies = 2 if self.batch_ok else 1
        rows = torch.tensor([seq - 1 - p0], device=spot_resid.device)
        try:
            got = self._blocks(
                _stack(spot_resid[:, p0:], copies), last, p0, copies, None, rows, self.rows_ok
            )
        except Exception:  # noqa: BLE001 - any failure means: check everything again
            return False
        return _close(got, _stack(reference[:, seq - 1 :], copies), atol)

    def _full_checks(self, reference: Tensor, atol: float) -> None:
        """:meth:`prepare`'s checks on the run :meth:`record` made, combined where they agree."""
        self.refused = {}
        self.replay_ok = self.batch_ok = self.rows_ok = self.suffix_ok = False
        self.z_ok = None
        injected = dict(self.kv)
        resid0 = self.bridge(self.inputs, stop_at_layer=0)
        batch, seq = resid0.shape[:2]
        # Logits are compared at a few rows spread over the sequence (every earlier row feeds
        # the later ones through attention), so no check holds a second vocabulary-wide copy.
        rows = torch.tensor(sorted({0, seq // 3, (2 * seq) // 3, seq - 1}), device=resid0.device)
        expected = reference[:, rows]
        plain = self._forward_rows(rows)  # the forward without the recording cache
        if not _close(plain, expected, atol):
            raise RuntimeError(
                "recording the keys and values changed the bridge's forward by "
                f"{max_abs_diff(plain, expected):.2e}; use BridgeSuffixRunner.prepare."
            )
        del plain
        # replay and stacking at once: two stacked copies of every block from position 0
        try:
            stacked = self._blocks(_stack(resid0, 2), 0, 0, 2, None, rows)
            self.replay_ok = self.batch_ok = _close(stacked, _stack(expected, 2), atol)
            del stacked
        except Exception:  # noqa: BLE001 - retried one copy at a time below
            pass
        if not self.replay_ok:
            try:
                replay = self._blocks(resid0, 0, 0, 1, None, rows)
                self.replay_ok = _close(replay, expected, atol)
                if not self.replay_ok:
                    self._refuse(
                        "replay",
                        f"differs from the forward by {max_abs_diff(replay, expected):.2e}",
                    )
                else:
                    self._refuse("stacking", "stacked copies differ from the forward")
            except Exception as e:  # noqa: BLE001 - a capability probe; the fallback is exact
                self._refuse("replay", f"{type(e).__name__}: {e}")
        if not self.replay_ok:
            self.kv = {}
            return
        # the read-rows MLP and the suffix at once: from position seq // 2, the last row only
        last_row = torch.tensor([seq - 1], device=resid0.device)
        unknown = sorted(
            {
                k
                for _, kwargs in self.block_args
                for k, v in kwargs.items()
                if torch.is_tensor(v) and k not in _SLICERS
            }
        )
        suffix_refusal = None
        if not self.causal or seq < 2:
            pass  # suffix runs need causal attention and at least two positions; not a refusal
        elif len(injected) != self.n_layers:
            suffix_refusal = (
                f"the attention of {self.n_layers - len(injected)} of {self.n_layers} blocks "
                "did not use the KV cache it was handed"
            )
        elif unknown:
            suffix_refusal = f"blocks take tensor arguments it cannot cut: {unknown}"
        if self.causal and seq >= 2 and suffix_refusal is None:
            p0 = seq // 2
            self.kv = injected
            try:
                got = self._blocks(resid0[:, p0:], 0, p0, 1, None, last_row - p0, rows_mlp=True)
                self.suffix_ok = self.rows_ok = _close(got, reference[:, -1:], atol)
            except Exception:  # noqa: BLE001 - retried one shortcut at a time below
                pass
        if not self.rows_ok:
            try:
                only = self._blocks(resid0, 0, 0, 1, None, last_row, rows_mlp=True)
                self.rows_ok = _close(only, reference[:, -1:], atol)
                if not self.rows_ok:
                    self._refuse(
                        "read-rows MLP", "the last MLP on read rows differs from the forward"
                    )
            except Exception as e:  # noqa: BLE001
                self._refuse("read-rows MLP", f"{type(e).__name__}: {e}")
        if suffix_refusal is not None:
            self._refuse("suffix", suffix_refusal)
        elif self.causal and seq >= 2 and not self.suffix_ok:
            p0 = seq // 2
            try:
                suffix = self._blocks(resid0[:, p0:], 0, p0, 1, None, last_row - p0)
                self.suffix_ok = _close(suffix, reference[:, -1:], atol)
                if not self.suffix_ok:
                    self._refuse(
                        "suffix",
                        f"differs from the forward by "
                        f"{max_abs_diff(suffix, reference[:, -1:]):.2e}",
                    )
            except Exception as e:  # noqa: BLE001
                self._refuse("suffix", f"{type(e).__name__}: {e}")
        if not self.suffix_ok:
            self.kv = {}

    # ------------------------------------------------------------------ head outputs
    def mid_from_z(self, layer: int, pre: Tensor, z: Float[Tensor, "... head d_head"]) -> Tensor:
        """``resid_pre + o(z)``: layer ``layer``'s residual after attention from its head
        outputs (valid where :meth:`check_z` holds: no norm after the attention)."""
        o = unwrap(self.bridge.blocks[layer].attn.o)
        return pre + o(z.flatten(-2).to(pre.dtype))

    def finish_layer(self, layer: int, mid: Tensor) -> Tensor:
        """``mid + mlp(ln2(mid))``: the block's output from its mid residual, through the
        bridge's own ``ln2`` and ``mlp`` components."""
        block = self.bridge.blocks[layer]
        return mid + block.mlp(block.ln2(mid))

    @torch.no_grad()
    def check_z(
        self, layer: int, pre: Tensor, z: Tensor, expected: Tensor, atol: float = 1e-5
    ) -> bool:
        """Whether head outputs ``z`` of ``layer`` rebuild the next residual ``expected``
        (``blocks.{layer+1}.hook_resid_pre``, or the logits after the last layer) through
        :meth:`mid_from_z` and :meth:`finish_layer`; the verdict is cached with the others."""
        try:
            x = self.finish_layer(layer, self.mid_from_z(layer, pre, z))
            if layer == self.n_layers - 1:
                x = unembed(self.bridge, x)
            ok = _close(x, expected, atol)
        except Exception:  # noqa: BLE001 - the hook path stays available and exact
            ok = False
        if self.z_ok is None or not ok:
            self._store_z_verdict(ok)
        return ok

    @torch.no_grad()
    def run_from_mid(
        self,
        mid: Float[Tensor, "nb S d"],
        layer: int,
        p0: int,
        copies: int,
        read_rows: Tensor | None = None,
    ) -> Float[Tensor, "nb R vocab"]:
        """Logits from layer ``layer``'s residual after attention at positions ``p0..``:
        the layer's MLP, then blocks ``layer + 1..`` as in :meth:`run` (no hooks)."""
        if copies > 1 and not self.batch_ok:
            raise ValueError("this bridge does not support stacked patches; use copies=1.")
        if p0 and not self.suffix_ok:
            raise ValueError("this bridge does not support suffix runs; use p0=0.")
        if layer == self.n_layers - 1:
            if read_rows is not None:
                mid = _read(mid, read_rows)
            return unembed(self.bridge, self.finish_layer(layer, mid))
        x = self.finish_layer(layer, mid)
        return self._blocks(x, layer + 1, p0, copies, None, read_rows, rows_mlp=self.rows_ok)

    # ------------------------------------------------------------------ runs
    def _kwargs(self, i: int, p0: int, copies: int, cache: Any) -> tuple[tuple, dict]:
        args, kwargs = self.block_args[i]
        batch = self._batch

        def adapt(name: str, value: Any) -> Any:
            if isinstance(value, (tuple, list)):
                return type(value)(adapt(name, v) for v in value)
            if not torch.is_tensor(value):
                return value
            if p0 and name in _SLICERS:
                value = _SLICERS[name](value, p0)
            if copies > 1 and value.dim() >= 2 and value.shape[0] == batch:
                value = _stack(value, copies)
            return value

        out = {k: adapt(k, v) for k, v in kwargs.items()}
        if cache is not None:
            out[self.cache_kwargs[i]] = cache
        return tuple(adapt("", a) for a in args), out

    def _blocks(
        self,
        x: Tensor | None,
        start_layer: int,
        p0: int,
        copies: int,
        cache: Any,
        read_rows: Tensor | None,
        rows_mlp: bool = False,
        joins: dict[int, list[Tensor]] | None = None,
    ) -> Tensor:
        """Blocks ``start_layer..`` from ``x``, then the unembedding at ``read_rows``.

        With ``rows_mlp``, the last block's MLP runs on the read rows only (it is position-wise
        and nothing downstream reads the other rows): about a third of a Llama layer's work.
        ``joins[i]`` are further copies appended to the stack before block ``i``
        (``i = n_layers``: before the unembedding).
        """
        joins = joins or {}
        batch = self._batch
        if p0 and cache is None:
            cache = _PrefixCache(self.kv, p0, copies)
        handles = []
        if cache is not None:
            for i in range(start_layer, self.n_layers):
                attn = getattr(self.bridge.blocks[i], "attn", None)
                if isinstance(attn, nn.Module):
                    handles.append(
                        attn.register_forward_pre_hook(_cache_alias_hook, with_kwargs=True)
                    )
        if read_rows is not None and rows_mlp:
            handles.extend(_rows_only_mlp(self.bridge.blocks[self.n_layers - 1], read_rows))
        try:
            for i in range(start_layer, self.n_layers):
                if i in joins:
                    x, copies = self._join(x, joins[i], batch, cache)
                args, kwargs = self._kwargs(i, p0, copies, cache)
                out = self.bridge.blocks[i](x, *args, **kwargs)
                x = out[0] if isinstance(out, tuple) else out
        finally:
            for h in handles:
                h.remove()
        if self.n_layers in joins:
            x, _ = self._join(x, joins[self.n_layers], batch, cache)
        return unembed(self.bridge, _read(x, read_rows))

    @staticmethod
    def _join(x: Tensor | None, more: list[Tensor], batch: int, cache: Any) -> tuple[Tensor, int]:
        """The stack with copies ``more`` appended, and its number of copies."""
        x = torch.cat(more if x is None else [x, *more])
        copies = x.shape[0] // batch
        if isinstance(cache, _PrefixCache):
            cache.copies = copies
        return x, copies

    @torch.no_grad()
    def run_stack(
        self,
        entries: Sequence[tuple[int, Float[Tensor, "nb S d"]]],
        p0: int,
        read_rows: Tensor | None = None,
    ) -> Float[Tensor, "nb R vocab"]:
        """Logits of copies that enter the blocks at different layers, in one pass.

        Each entry ``(layer, resid)`` holds copies of the batch (``[k · batch, T - p0, d]``)
        that enter block ``layer`` (``n_layers``: the unembedding) at positions ``p0..``.
        The pass starts at the first entry's layer and appends each later entry before its
        own block, so every copy costs what its own rerun would, while each block runs once
        for the whole stack (on a CPU most of a small rerun's time is Python per block).
        Rows come back in the order of ``entries`` sorted by layer.
        """
        if not self.replay_ok:
            raise ValueError("this bridge's blocks cannot be replayed; run full forwards.")
        if p0 and not self.suffix_ok:
            raise ValueError("this bridge does not support suffix runs; use p0=0.")
        batch = self._batch
        joins: dict[int, list[Tensor]] = {}
        for layer, resid in sorted(entries, key=lambda e: e[0]):
            joins.setdefault(layer, []).append(resid)
        if sum(r.shape[0] for rs in joins.values() for r in rs) > batch and not self.batch_ok:
            raise ValueError("this bridge does not support stacked patches; use one entry.")
        start = min(joins)
        return self._blocks(None, start, p0, 1, None, read_rows, self.rows_ok, joins)

    @torch.no_grad()
    def run(
        self,
        resid: Float[Tensor, "nb S d"] | None,
        start_layer: int,
        p0: int,
        copies: int,
        fwd_hooks: HookList,
        read_rows: Tensor | None = None,
    ) -> Float[Tensor, "nb R vocab"]:
        """Logits with ``fwd_hooks`` on, for ``copies`` stacked copies of the batch.

        With block replay, ``resid`` (``[copies · batch, T - p0, d]``) enters block
        ``start_layer`` at positions ``p0..``; otherwise the whole bridge runs on the inputs
        (``resid`` is ignored) and hooks see all positions. ``read_rows`` (relative to p0)
        selects the positions unembedded: ``[R]`` for every row or ``[copies · batch, R]``
        per row.
        """
        if copies > 1 and not self.batch_ok:
            raise ValueError("this bridge does not support stacked patches; use copies=1.")
        if p0 and not self.suffix_ok:
            raise ValueError("this bridge does not support suffix runs; use p0=0.")
        with self.bridge.hooks(fwd_hooks=list(fwd_hooks)):
            if not self.replay_ok:
                logits = self.bridge(self.inputs)
                return _read(logits, read_rows)
            last = f"blocks.{self.n_layers - 1}."
            touches_mlp = any(
                name.startswith((last + "mlp", last + "ln2", last + "hook_mlp"))
                for name, _ in fwd_hooks
                if isinstance(name, str)
            )
            rows_mlp = self.rows_ok and not touches_mlp
            return self._blocks(resid, start_layer, p0, copies, None, read_rows, rows_mlp)
