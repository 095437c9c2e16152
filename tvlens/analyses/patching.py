"""Activation patching sweeps that equal ``transformer_lens.patching`` and skip what cannot change.

``patch_sweep(model, clean, corrupted, metric, point=...)`` patches one activation at a time
and returns a tidy DataFrame (``layer``, ``pos`` and/or ``head``, ``value``), the numbers of
TL's ``get_act_patch_resid_pre`` / ``_attn_out`` / ``_mlp_out`` / ``_attn_head_out_all_pos``
/ ``_attn_head_out_by_pos``. ``mode="denoise"`` runs the corrupted input and patches in clean
activations (TL's convention); ``mode="noise"`` runs the clean input and patches in corrupted
ones. ``metric`` maps logits ``[batch, pos, vocab]`` to one scalar for the batch.

**Why it is fast.** TL runs one full forward per (layer, position) or (layer, head). A patch at
layer ``l``, position ``p`` cannot change anything in layers ``< l``, nor (under causal
attention) at positions ``< p``. So each patch reruns layers ``l..L-1`` on positions ``p..``
only, from the cached residual and with the cached keys and values of the prefix
(:mod:`tvlens.hooks.suffix`); the last layer computes only the rows the metric reads
(``metric_positions``); patches that change nothing (identical clean and corrupted
activations, or positions after the last one the metric reads) are not run at all; and a few
consecutive patches share one forward while the stack stays within a token budget. Memory is
the one cache of the unpatched and source runs plus one stack of suffixes, whatever the number
of positions swept.

Two engines do the reruns: ``native`` computes TL-native bridges (:class:`tvlens.models.TaskModel`)
from their weights without hook overhead; ``bridge`` calls any bridge's own blocks (e.g. Llama
or Gemma-2 from ``boot_transformers``) with ordinary TL hooks doing the patch. Both are tested
equal to ``transformer_lens.patching``.

**resid_mid vs mlp_in.** In TL 4.3's bridge, ``blocks.{l}.hook_resid_mid`` is an alias of
``blocks.{l}.ln2.hook_in``: a hook there changes only the MLP's input, while the residual skip
keeps the unpatched value. ``get_act_patch_resid_mid`` on a bridge therefore patches the MLP
input. Here ``point="resid_mid"`` replaces the residual stream between attention and MLP
(HookedTransformer's meaning, what the name says), and ``point="mlp_in"`` is the MLP-input
patch that equals ``get_act_patch_resid_mid`` on a bridge.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.analyses.task_vectors import sample_tasks
from tvlens.hooks.core import (
    as_bridge,
    check_hook_names,
    check_layers,
    hook_name,
    resolve_positions,
)
from tvlens.hooks.suffix import BridgeSuffixRunner, NativeSuffixRunner, native_model
from tvlens.options import Options, option
from tvlens.registry import driver
from tvlens.tasks.base import Batch, TaskFamily

log = logging.getLogger(__name__)

Metric = Callable[[Float[Tensor, "batch pos vocab"]], Any]
POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "z")
#: The TL short name (for :func:`tvlens.hooks.hook_name`) of the hook each point reads:
#: ``mlp_in`` patches the residual entering the MLP, which the bridge exposes as resid_mid.
_HOOK = {p: "resid_mid" if p == "mlp_in" else p for p in POINTS}
#: Rows (copies × batch × seq) one stacked forward may hold, by device type. Each copy holds
#: its suffix's activations plus the prefix's keys and values, so ``seq`` rows in all: the
#: bound keeps a sweep's memory independent of the number of positions patched.
TOKEN_BUDGET = {"cpu": 2048, "cuda": 1 << 17}

__all__ = [
    "POINTS",
    "analyse_patching",
    "patch_sweep",
    "recovered",
    "task_metric",
    "task_pair",
]


# =========================================================================== validation
def _bridge_of(model: Any) -> Any:
    """The TransformerBridge of a TaskModel, or the model itself when it is a bridge."""
    try:
        return as_bridge(model)
    except TypeError:
        raise TypeError(
            f"patch_sweep needs a TransformerBridge or a tvlens TaskModel, got "
            f"{type(model).__name__}."
        ) from None


def canonical_point(point: str) -> str:
    """A patching point from any TL spelling of its hook: ``attn.hook_z``/``hook_z`` → ``z``,
    ``hook_resid_pre``/``blocks.0.hook_resid_pre`` style sub-hooks → ``resid_pre``."""
    if point in POINTS:
        return point
    short = point.removeprefix("attn.").removeprefix("hook_")
    if short in POINTS:
        return short
    return point


def _check_eval(bridge: Any) -> None:
    """Refuse a bridge with any module in training mode, as ``transformer_lens.patching`` does.

    Only the bridge runs here, so only the bridge (and the module it wraps) is checked. A
    :class:`~tvlens.models.TaskModel`'s own ``training`` flag describes ``model.raw``, the
    training copy, which no sweep runs: a freshly built TaskModel can be patched.
    """
    roots = [("", bridge), ("original_model", getattr(bridge, "original_model", None))]
    for prefix, root in roots:
        if not isinstance(root, torch.nn.Module):
            continue
        for name, module in root.named_modules():
            if module.training:
                where = ".".join(x for x in (prefix, name) if x) or "<root>"
                raise ValueError(
                    f"the bridge is in training mode (module {where!r}); activation patching "
                    "needs deterministic forwards, as in transformer_lens.patching. Call "
                    "bridge.eval() (for a TaskModel: model.bridge.eval()) first."
                )


def _check_point(bridge: Any, point: str, by: str | None) -> tuple[str, str]:
    point = canonical_point(point)
    if point not in POINTS:
        close = difflib.get_close_matches(point, POINTS, n=2)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"unknown patching point {point!r}.{hint} Choose one of {POINTS} (z is "
            "blocks.{l}.attn.hook_z, the head outputs)."
        )
    names = [hook_name(layer, _HOOK[point]) for layer in range(bridge.cfg.n_layers)]
    names += [hook_name(layer, "resid_pre") for layer in range(bridge.cfg.n_layers)]
    check_hook_names(bridge, names)
    by = by or ("head" if point == "z" else "pos")
    allowed = ("head", "head_pos") if point == "z" else ("pos",)
    if by not in allowed:
        raise ValueError(f"point={point!r} sweeps by one of {allowed}, not by={by!r}.")
    return point, by


def _check_inputs(model: Any, clean: Tensor, corrupted: Tensor) -> None:
    if not (torch.is_tensor(clean) and torch.is_tensor(corrupted)):
        raise TypeError("clean and corrupted must be tensors (token ids or float tokens).")
    if clean.shape != corrupted.shape or clean.dtype != corrupted.dtype:
        raise ValueError(
            f"clean {tuple(clean.shape)} {clean.dtype} and corrupted {tuple(corrupted.shape)} "
            f"{corrupted.dtype} differ; patching needs aligned positions: pad or trim both to "
            "the same shape and dtype."
        )
    if clean.dim() < 2:
        raise ValueError(
            f"inputs must be batched ([batch, pos] or [batch, pos, d_in]); got shape "
            f"{tuple(clean.shape)}: add a batch dimension (x[None])."
        )
    check = getattr(model, "check_inputs", None)
    if callable(check):
        check(clean)


def _scalar(metric: Metric, logits: Tensor) -> float:
    out = torch.as_tensor(metric(logits))
    if out.ndim != 0:
        raise ValueError(
            f"the metric must return one scalar for the whole batch; it returned shape "
            f"{tuple(out.shape)}. Reduce over the batch (e.g. .mean()) inside the metric."
        )
    from tvlens.validation import check_finite_value

    return check_finite_value(float(out), "the metric")


def _check_metric_positions(metric: Metric, logits: Tensor, read: Tensor, value: float) -> None:
    """Raise if the metric changes when logits outside ``read`` change."""
    unread = torch.ones(logits.shape[1], dtype=torch.bool)
    unread[read.cpu()] = False
    if not unread.any():
        return
    probe = logits.clone()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(probe[:, unread].shape, generator=gen).to(probe) * 10
    probe[:, unread] += noise
    if not np.isclose(_scalar(metric, probe), value, rtol=1e-5, atol=1e-6):
        raise ValueError(
            "metric_positions does not list every position the metric reads: changing the "
            "logits elsewhere changed the metric. Pass all positions it reads, or None."
        )


# =========================================================================== sweep
@dataclass
class _Setup:
    bridge: Any
    point: str
    by: str
    base: dict[str, Tensor]  # the unpatched run's activations
    src: dict[str, Tensor]  # the activations patched in
    base_logits: Tensor
    base_value: float
    layers: list[int]
    positions: list[int]
    read: Tensor | None  # absolute positions the metric reads (sorted), or None: all
    metric: Metric
    causal: bool
    values: dict[tuple[int, int, int | None], float] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.base_logits.shape[0]

    @property
    def seq(self) -> int:
        return self.base_logits.shape[1]

    def act(self, which: str, layer: int, point: str | None = None) -> Tensor:
        cache = self.base if which == "base" else self.src
        return cache[hook_name(layer, _HOOK[point or self.point])]


def patch_sweep(
    model: Any,
    clean: Tensor,
    corrupted: Tensor,
    metric: Metric,
    point: str = "resid_pre",
    *,
    mode: Literal["denoise", "noise"] = "denoise",
    by: Literal["pos", "head", "head_pos"] | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    metric_positions: int | Sequence[int] | None = None,
    engine: Literal["auto", "native", "bridge"] = "auto",
    batch_size: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Patch ``point`` per layer × position (or × head) and record ``metric`` after each patch.

    Args:
        model: a :class:`tvlens.models.TaskModel` or any TL ``TransformerBridge``, in eval mode.
        clean, corrupted: inputs of the same shape (token ids, or float tokens for regression).
        metric: logits ``[batch, pos, vocab]`` → one scalar for the batch.
        point: ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``,
            ``mlp_in`` (TL bridge's ``resid_mid`` patch: the MLP input only) or ``z`` (head
            outputs, ``blocks.{l}.attn.hook_z``).
        mode: ``denoise`` (run corrupted, patch clean in) or ``noise`` (the reverse).
        by: ``pos`` for residual points; ``head`` (all positions) or ``head_pos`` for ``z``.
        layers, positions: subsets to sweep (default: all). ``by="head"`` patches all positions.
        metric_positions: the positions the metric reads, if not all (e.g. ``-1``). Checked
            by perturbing the logits elsewhere; only these rows are then computed.
        engine: ``native`` (TL-native bridges), ``bridge`` (any bridge) or ``auto``.
        batch_size: most patches per stacked forward (default: a token budget per device).
        progress: show a progress bar.

    Returns:
        Columns ``layer``, ``pos`` / ``head`` / ``pos, head``, ``value``, in TL's order, then
        the sweep's constants as explicit columns (they survive ``to_csv``):
        ``clean_value`` and ``corrupted_value`` (the unpatched metrics, read by
        :func:`recovered`), ``point``, ``mode``, ``by``, the ``engine`` used and whether it
        ran suffixes (``suffix``) and stacked patches (``stacked``). The same constants are
        also in ``df.attrs``, deprecated (pandas marks ``attrs`` experimental).
    """
    bridge = _bridge_of(model)
    _check_eval(bridge)
    _check_inputs(model, clean, corrupted)
    if mode not in ("denoise", "noise"):
        raise ValueError(f"mode must be 'denoise' or 'noise', not {mode!r}.")
    if engine not in ("auto", "native", "bridge"):
        raise ValueError(f"engine must be 'auto', 'native' or 'bridge', not {engine!r}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (or None for a token budget).")
    point, by = _check_point(bridge, point, by)
    if by == "head" and positions is not None:
        raise ValueError("by='head' patches every position; use by='head_pos' to pick positions.")
    layer_list = list(dict.fromkeys(check_layers(bridge, layers)))
    device = next(bridge.parameters()).device
    base_in, src_in = (corrupted, clean) if mode == "denoise" else (clean, corrupted)
    base_in, src_in = base_in.to(device), src_in.to(device)
    seq = base_in.shape[1]
    pos_list = resolve_positions(None if positions is None else list(positions), seq).tolist()
    pos_list = list(dict.fromkeys(pos_list))

    with torch.no_grad():
        runner, base_logits, src_logits, base, src = _run_unpatched(
            engine, bridge, point, base_in, src_in
        )
    base_value, src_value = _scalar(metric, base_logits), _scalar(metric, src_logits)
    read = None
    if metric_positions is not None:
        read = torch.sort(resolve_positions(metric_positions, seq)).values.to(device)
        _check_metric_positions(metric, base_logits, read, base_value)
    setup = _Setup(
        bridge=bridge,
        point=point,
        by=by,
        base=base,
        src=src,
        base_logits=base_logits.detach(),
        base_value=base_value,
        layers=layer_list,
        positions=pos_list,
        read=read,
        metric=metric,
        causal=getattr(bridge.cfg, "attention_dir", "causal") == "causal",
    )
    jobs = _plan(setup, runner)
    budget = TOKEN_BUDGET["cuda" if device.type == "cuda" else "cpu"]
    total = sum(len(j) for j in jobs.values())
    bar = tqdm(total=total, desc=f"patch {point}", disable=None if progress else True, leave=False)
    buf = setup.base_logits.clone()
    for layer, layer_jobs in jobs.items():
        for group in _groups(setup, runner, layer_jobs, batch_size, budget):
            p0 = min(start for *_, start in group)
            if isinstance(runner, NativeSuffixRunner):
                logits, rows = _native_group(setup, runner, layer, group, p0)
            else:
                logits, rows = _bridge_group(setup, runner, layer, group, p0)
            for k, (pos, head, _) in enumerate(group):
                buf[:, rows] = logits[k * setup.batch : (k + 1) * setup.batch]
                setup.values[(layer, pos, head)] = _scalar(metric, buf)
                buf[:, rows] = setup.base_logits[:, rows]
            bar.update(len(group))
    bar.close()

    df = _frame(setup)
    clean_value, corrupted_value = (
        (src_value, base_value) if mode == "denoise" else (base_value, src_value)
    )
    constants = {
        "clean_value": clean_value,
        "corrupted_value": corrupted_value,
        "point": point,
        "mode": mode,
        "by": by,
        "engine": "native" if isinstance(runner, NativeSuffixRunner) else "bridge",
        "suffix": _suffix_ok(setup, runner),
        "stacked": isinstance(runner, NativeSuffixRunner) or runner.batch_ok,
    }
    df = df.assign(**constants)
    df.attrs.update(constants)  # deprecated: read the columns
    return df


def _base_points(point: str) -> set[str]:
    """Hook points of the unpatched run that the engines read."""
    return {"resid_pre", "resid_mid", "resid_post", _HOOK[point]}


def _run_unpatched(
    engine: str, bridge: Any, point: str, base_in: Tensor, src_in: Tensor
) -> tuple[Any, Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """The engine, the logits of the unpatched and source runs, and their activations.

    The native engine computes both runs itself (no hook overhead) and checks its logits
    against the bridge's forward on the first sequence; the bridge engine caches them with
    ``run_with_cache``.
    """
    n_layers = bridge.cfg.n_layers
    if engine in ("auto", "native") and native_model(bridge) is not None:
        runner = NativeSuffixRunner(bridge)
        base_logits, base = runner.forward(
            bridge(base_in, stop_at_layer=0), _base_points(point), keep_kv=True
        )
        src_logits, src = runner.forward(bridge(src_in, stop_at_layer=0), {_HOOK[point]})
        try:
            runner.check(base_logits[:1], bridge(base_in[:1]))
            return runner, base_logits, src_logits, base, src
        except RuntimeError:
            if engine == "native":
                raise
            log.warning("the native patching engine disagrees with the bridge; using 'bridge'")
    elif engine == "native":
        raise ValueError(
            "engine='native' needs a TL-native bridge (a tvlens TaskModel); use engine='bridge'."
        )
    known = set(bridge.hook_dict)
    base_names = {hook_name(layer, p) for layer in range(n_layers) for p in _base_points(point)}
    src_names = {hook_name(layer, _HOOK[point]) for layer in range(n_layers)}
    base_logits, base_cache = bridge.run_with_cache(
        base_in, names_filter=(base_names & known).__contains__
    )
    src_logits, src_cache = bridge.run_with_cache(src_in, names_filter=src_names.__contains__)
    runner = BridgeSuffixRunner(bridge)
    runner.prepare(base_in, base_cache[hook_name(0, "resid_pre")])
    if not runner.replay_ok:
        log.warning("this bridge's blocks cannot be replayed; every patch runs a full forward")
    return runner, base_logits, src_logits, dict(base_cache.items()), dict(src_cache.items())


# --------------------------------------------------------------------------- planning
def _cells(setup: _Setup) -> list[tuple[int, int | None]]:
    """(pos, head) cells of one layer; pos is -1 for all-position head patches."""
    if setup.by == "pos":
        return [(p, None) for p in setup.positions]
    n_heads = setup.bridge.cfg.n_heads
    if setup.by == "head":
        return [(-1, h) for h in range(n_heads)]
    return [(p, h) for p in setup.positions for h in range(n_heads)]


def _first_change(setup: _Setup, layer: int, pos: int, head: int | None) -> int:
    """First position the patch changes (``pos`` itself, or the head's first differing one);
    -1 when the patched activation equals the unpatched one (the patch changes nothing)."""
    base, src = setup.act("base", layer), setup.act("src", layer)
    if pos >= 0:
        idx = (slice(None), pos) if head is None else (slice(None), pos, head)
        return -1 if torch.equal(base[idx], src[idx]) else pos
    diff = (base[:, :, head] != src[:, :, head]).flatten(2).any(-1).any(0)
    rows = torch.nonzero(diff).flatten()
    return int(rows[0]) if rows.numel() else -1


def _suffix_ok(setup: _Setup, runner: Any) -> bool:
    if not setup.causal:
        return False
    return isinstance(runner, NativeSuffixRunner) or runner.suffix_ok


def _plan(setup: _Setup, runner: Any) -> dict[int, list[tuple[int, int | None, int]]]:
    """Patches to run per layer as ``(pos, head, start)``; fills in the ones that change nothing
    the metric reads (their value is the unpatched one, exactly as a rerun would give).

    ``start`` is the first position the rerun needs (0 without suffix runs).
    """
    last_read = setup.seq - 1 if setup.read is None else int(setup.read.max())
    read = set() if setup.read is None else set(setup.read.tolist())
    suffix = _suffix_ok(setup, runner)
    last_layer = setup.bridge.cfg.n_layers - 1
    jobs: dict[int, list[tuple[int, int | None, int]]] = {}
    for layer in setup.layers:
        jobs[layer] = []
        # After the last layer's attention, a patch at one row changes that row's logits only.
        own_row_only = layer == last_layer and setup.point != "resid_pre" and setup.read is not None
        for pos, head in _cells(setup):
            first = _first_change(setup, layer, pos, head)
            unread = own_row_only and pos >= 0 and pos not in read
            if first < 0 or unread or (setup.causal and first > last_read):
                setup.values[(layer, pos, head)] = setup.base_value
            else:
                jobs[layer].append((pos, head, first if suffix else 0))
    return jobs


def _groups(
    setup: _Setup,
    runner: Any,
    jobs: list[tuple[int, int | None, int]],
    batch_size: int | None,
    budget: int,
) -> list[list[tuple[int, int | None, int]]]:
    """Consecutive jobs stacked while ``copies · batch · seq`` stays within the budget."""
    stackable = isinstance(runner, NativeSuffixRunner) or runner.batch_ok
    limit = (batch_size or len(jobs)) if stackable else 1
    groups: list[list[tuple[int, int | None, int]]] = []
    for job in jobs:
        if groups:
            group = groups[-1]
            tokens = (len(group) + 1) * setup.batch * setup.seq
            if len(group) < limit and (batch_size is not None or tokens <= budget):
                group.append(job)
                continue
        groups.append([job])
    return groups


# --------------------------------------------------------------------------- native engine
def _native_group(
    setup: _Setup,
    runner: NativeSuffixRunner,
    layer: int,
    group: list[tuple[int, int | None, int]],
    p0: int,
) -> tuple[Tensor, Tensor]:
    """Logits ``[n·batch, R, vocab]`` of a stack of patches at ``layer``, and their R rows."""
    point, n = setup.point, len(group)
    pre = setup.act("base", layer, "resid_pre")
    mid = setup.act("base", layer, "resid_mid")
    src = setup.act("src", layer)
    start = layer if point == "resid_pre" else layer + 1
    boundary = pre if point == "resid_pre" else setup.act("base", layer, "resid_post")
    x = boundary[:, p0:].unsqueeze(0).repeat(n, 1, 1, 1)  # [n, batch, S, d]
    with torch.no_grad():
        if point == "z" and setup.by == "head":
            rows, read_rel = _read_rows(setup, p0)
            if start == runner.n_layers and read_rel is not None:
                # Last layer: each row's output depends on its own z only; finish read rows.
                z = setup.act("base", layer, "z")[:, rows].unsqueeze(0).repeat(n, 1, 1, 1, 1)
                for k, (_, head, _) in enumerate(group):
                    z[k, :, :, head] = src[:, rows, head]
                mid_rows = pre[:, rows] + runner.attn_out_from_z(layer, z)
                return runner.unembed(runner.finish_layer(layer, mid_rows).flatten(0, 1)), rows
            z = setup.act("base", layer, "z")[:, p0:].unsqueeze(0).repeat(n, 1, 1, 1, 1)
            for k, (_, head, _) in enumerate(group):
                z[k, :, :, head] = src[:, p0:, head]
            x = runner.finish_layer(layer, pre[:, p0:] + runner.attn_out_from_z(layer, z))
        else:
            pos = torch.tensor([g[0] for g in group], device=x.device)
            if point in ("resid_pre", "resid_post"):
                row = src[:, pos]
            elif point == "mlp_out":
                row = mid[:, pos] + src[:, pos]
            elif point == "mlp_in":
                row = mid[:, pos] + runner.mlp_out(layer, src[:, pos])
            else:
                if point == "attn_out":
                    new_mid = pre[:, pos] + src[:, pos]
                elif point == "resid_mid":
                    new_mid = src[:, pos]
                else:  # z at one position, one head
                    z = setup.act("base", layer, "z")[:, pos].clone()  # [batch, n, H, d_head]
                    for k, (_, head, _) in enumerate(group):
                        z[:, k, head] = src[:, pos[k], head]
                    new_mid = pre[:, pos] + runner.attn_out_from_z(layer, z)
                row = runner.finish_layer(layer, new_mid)
            x[torch.arange(n), :, pos - p0] = row.transpose(0, 1)
        rows, read_rel = _read_rows(setup, p0)
        logits = runner.run(x.flatten(0, 1), start, p0, read_rel)
    return logits, rows


def _read_rows(setup: _Setup, p0: int) -> tuple[Tensor, Tensor | None]:
    """Absolute rows the rerun returns, and the same rows relative to ``p0`` (None: all)."""
    device = setup.base_logits.device
    if setup.read is None:
        return torch.arange(p0, setup.seq, device=device), None
    rows = setup.read[setup.read >= p0]
    return rows, rows - p0


# --------------------------------------------------------------------------- bridge engine
def _bridge_group(
    setup: _Setup,
    runner: BridgeSuffixRunner,
    layer: int,
    group: list[tuple[int, int | None, int]],
    p0: int,
) -> tuple[Tensor, Tensor]:
    """The same as :func:`_native_group` through the bridge's blocks and TL hooks."""
    point, n, batch = setup.point, len(group), setup.batch
    rows, read_rel = _read_rows(setup, p0)
    if not runner.replay_ok:  # full forwards on the inputs: hooks see every position
        hooks = _patch_hooks(setup, layer, group, 0, batch, point)
        logits = runner.run(None, 0, 0, 1, hooks, None)
        return logits[:, rows], rows
    hooks: list[tuple[str, Any]] = []
    if point in ("resid_pre", "resid_post"):
        start = layer if point == "resid_pre" else layer + 1
        x = setup.act("base", layer)[:, p0:].unsqueeze(0).repeat(n, 1, 1, 1)
        pos = torch.tensor([g[0] for g in group], device=x.device)
        x[torch.arange(n), :, pos - p0] = setup.act("src", layer)[:, pos].transpose(0, 1)
        x = x.flatten(0, 1)
    else:
        start = layer
        x = setup.act("base", layer, "resid_pre")[:, p0:].repeat(n, 1, 1)
        hooks = _patch_hooks(setup, layer, group, p0, batch, point)
    return runner.run(x, start, p0, n, hooks, read_rel), rows


def _patch_hooks(
    setup: _Setup,
    layer: int,
    group: list[tuple[int, int | None, int]],
    offset: int,
    batch: int,
    point: str,
) -> list[tuple[str, Any]]:
    """TL hook functions patching copy ``k`` of the batch with ``group[k]``.

    Hooked activations start at position ``offset``. ``resid_mid`` also carries the patch
    past the MLP (the bridge's ``hook_resid_mid`` feeds only the MLP's input).
    """
    src = setup.act("src", layer)

    def index(k: int, pos: int, head: int | None) -> tuple:
        rows = slice(k * batch, (k + 1) * batch)
        where = slice(None) if pos < 0 else pos - offset
        return (rows, where) if head is None else (rows, where, head)

    def source(pos: int, head: int | None) -> Tensor:
        where = slice(offset, None) if pos < 0 else pos
        return src[:, where] if head is None else src[:, where, head]

    def setter(act: Tensor, hook: Any = None) -> Tensor:
        act = act.clone()
        for k, (pos, head, _) in enumerate(group):
            act[index(k, pos, head)] = source(pos, head).to(act.dtype)
        return act

    hooks: list[tuple[str, Any]] = [(hook_name(layer, _HOOK[point]), setter)]
    if point == "resid_mid":
        base_mid = setup.act("base", layer, "resid_mid")

        def carry(act: Tensor, hook: Any = None) -> Tensor:
            act = act.clone()
            for k, (pos, _, _) in enumerate(group):
                delta = src[:, pos] - base_mid[:, pos]
                act[index(k, pos, None)] += delta.to(act.dtype)
            return act

        hooks.append((hook_name(layer, "mlp_out"), carry))
    return hooks


def _frame(setup: _Setup) -> pd.DataFrame:
    rows = []
    for layer in setup.layers:
        for pos, head in _cells(setup):
            row: dict[str, Any] = {"layer": layer}
            if pos >= 0:
                row["pos"] = pos
            if head is not None:
                row["head"] = head
            row["value"] = setup.values[(layer, pos, head)]
            rows.append(row)
    return pd.DataFrame(rows)


def recovered(df: pd.DataFrame) -> pd.Series:
    """Fraction of the clean−corrupted metric gap a patch restores (denoising: 0 = corrupted,
    1 = clean); NaN where the two unpatched runs score the same.

    Reads the ``clean_value`` and ``corrupted_value`` columns of :func:`patch_sweep`'s frame
    (per row, so concatenated sweeps work), or ``df.attrs`` for frames made before them.
    """
    if {"clean_value", "corrupted_value"} <= set(df.columns):
        clean, corrupted = df["clean_value"], df["corrupted_value"]
    elif "clean_value" in df.attrs and "corrupted_value" in df.attrs:
        clean = pd.Series(df.attrs["clean_value"], index=df.index)
        corrupted = pd.Series(df.attrs["corrupted_value"], index=df.index)
    else:
        raise ValueError(
            "the frame lacks clean_value / corrupted_value columns; pass patch_sweep's frame."
        )
    gap = clean.astype(float) - corrupted.astype(float)
    out = (df["value"] - corrupted) / gap.where(gap != 0, np.nan)
    return out.rename("recovered")


# =========================================================================== task runs
def task_pair(family: TaskFamily, n_per_task: int, seed: int = 0) -> tuple[Batch, Batch]:
    """Clean sequences of each major task ``k`` and corrupted ones of task ``k + 1 mod M``.

    Row ``i`` of the two batches differs in its latent task (and its sampled tokens), so a
    denoising sweep asks where the model keeps the information about which task it is in.
    """
    m = family.n_major
    if m < 2:
        raise ValueError(f"task patching needs at least 2 major tasks; this family has {m}.")
    tasks = torch.arange(m)
    clean = sample_tasks(family, tasks, n_per_task, seed=seed)
    corrupted = sample_tasks(family, tasks.roll(-1), n_per_task, seed=seed + 1)
    return clean, corrupted


def task_metric(family: TaskFamily, clean: Batch, position: int) -> Metric:
    """−divergence of the model's prediction at ``position`` from the clean task's own
    predictive distribution (−KL for token families, −squared error for regression),
    averaged over the batch: 0 is perfect, more negative is further from the clean task."""
    ref = family.true_predictive(clean)[:, position]

    def metric(logits: Tensor) -> Tensor:
        pred = family.output_to_prediction(logits[:, position])
        return -family.divergence(pred, ref.to(pred.device)).mean()

    return metric


@dataclass(frozen=True)
class PatchingOptions(Options):
    """Options of :func:`analyse_patching`."""

    section = "patching"
    n_per_task: int = option(4, "clean and corrupted sequences", min=1)
    seed: int = option(0, "seed of the sequences")


@driver("patching", PatchingOptions)
def analyse_patching(run: Any, o: PatchingOptions, progress: bool) -> dict[str, pd.DataFrame]:
    """Denoising sweeps on a trained :class:`~tvlens.models.Run`: where does the task live?

    Runs sequences of another major task (corrupted) and patches in activations of the clean
    task's sequences; the metric is −KL (−squared error for regression) from the clean task's
    predictive at the last scored position. Writes ``analyses/patching_resid_pre.csv``
    (layer × position) and ``analyses/patching_heads.csv`` (layer × head), each with the
    ``recovered`` fraction of the clean−corrupted gap.
    """
    clean, corrupted = task_pair(run.family, o.n_per_task, o.seed)
    scored = torch.nonzero(clean.target_mask.all(0)).flatten()
    if scored.numel() == 0:
        raise ValueError("no position is scored in every sequence; cannot pick a read-out.")
    position = int(scored[-1])
    metric = task_metric(run.family, clean, position)
    tables = {}
    for name, point, by in (
        ("patching_resid_pre", "resid_pre", "pos"),
        ("patching_heads", "z", "head"),
    ):
        df = patch_sweep(
            run.model,
            clean.inputs,
            corrupted.inputs,
            metric,
            point,
            by=by,
            metric_positions=position,
            progress=progress,
        )
        keys = [c for c in ("layer", "pos", "head", "value") if c in df.columns]
        table = df[keys].assign(
            recovered=recovered(df),
            clean_value=df["clean_value"],
            corrupted_value=df["corrupted_value"],
            metric=f"neg_{run.family.divergence_name}",
            read_pos=position,
            step=run.step,
        )
        table.attrs = dict(df.attrs)
        tables[name] = table
    return tables
