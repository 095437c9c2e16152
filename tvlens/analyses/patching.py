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
activations, or positions after the last one the metric reads) are not run at all; and
patches that start at the same position (or, where a rerun's fixed cost outweighs the waste,
nearby ones) share one stacked rerun, within the memory left free. The engines check their
shortcuts once per model and spot-check them per sweep, so a sweep's fixed cost is about the
two runs it caches. Memory is the cache of the unpatched and source runs at the swept layers
plus one stack of suffixes, whatever the number of positions swept; each layer's share is
freed when its patches are done.

``method="attribution"`` replaces the reruns by the first-order estimate from one backward
pass (attribution patching), in the same table.

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
from tvlens.hooks.suffix import _VERDICTS, BridgeSuffixRunner, NativeSuffixRunner, native_model
from tvlens.options import Options, option
from tvlens.registry import driver
from tvlens.tasks.base import Batch, TaskFamily

log = logging.getLogger(__name__)

Metric = Callable[[Float[Tensor, "batch pos vocab"]], Any]
POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "z")
#: The TL short name (for :func:`tvlens.hooks.hook_name`) of the hook each point reads:
#: ``mlp_in`` patches the residual entering the MLP, which the bridge exposes as resid_mid.
_HOOK = {p: "resid_mid" if p == "mlp_in" else p for p in POINTS}
#: Most rows (copies × batch × sequence length: each copy holds its suffix's activations and
#: the prefix's keys and values) one stacked rerun holds, by device and engine: past this a
#: CPU's matmuls gain nothing from a larger batch and the stack's activations only add to the
#: peak memory. On SmolLM2 (one thread, T = 64) the bridge engine's sweep took 8.1–8.6 s with
#: 1,024 rows against 8.8–9.2 s with 2,048 and 8.9–9.6 s with 512. The memory left free bounds
#: the stack as well.
STACK_MAX_ROWS = {
    ("cpu", "native"): 2048,
    ("cpu", "bridge"): 1024,
    ("cuda", "native"): 1 << 20,
    ("cuda", "bridge"): 1 << 20,
}
#: The fixed cost of one rerun per layer (Python, hooks, kernel launches, a small matmul's
#: inefficiency) by device and engine, in floating-point operations of work it is worth:
#: a patch joins a stack when the positions that recomputes for nothing cost less. Measured
#: on one CPU thread: the native engine's small models gain from stacking nearby positions
#: (0.62 s → 0.43 s for the benchmark's T = 64 sweep); the bridge engine gains on short
#: suffixes of a small model (1.8 s → 1.4 s, random Llama, T = 64) and nothing at T = 256,
#: and on SmolLM2 this stacks only patches that start together. A GPU stacks while memory
#: allows.
RERUN_OVERHEAD_FLOPS = {
    ("cpu", "native"): 1e9,
    ("cpu", "bridge"): 2e7,
    ("cuda", "native"): 5e10,
    ("cuda", "bridge"): 5e10,
}
#: The share of the memory left free (CPU: ``MemAvailable``; CUDA: ``mem_get_info``) one
#: stack may take.
STACK_MEMORY_SHARE = 0.25
METHODS = ("exact", "attribution")
#: One patch of a layer: ``(pos, head, start)``, ``start`` the first position it reruns
#: (``pos = -1``: a head at every position).
Cell = tuple[int, int | None, int]
#: One planned patch: ``(layer, pos, head, start)``.
Job = tuple[int, int, int | None, int]

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


def _unread_spans(seq: int, read: Tensor) -> list[tuple[int, int]]:
    """The runs ``[a, b)`` of positions outside ``read``."""
    spans, start = [], 0
    for r in sorted(set(read.tolist())):
        if r > start:
            spans.append((start, r))
        start = r + 1
    if start < seq:
        spans.append((start, seq))
    return spans


def _check_metric_positions(metric: Metric, logits: Tensor, read: Tensor, value: float) -> None:
    """Raise if the metric changes when logits outside ``read`` change.

    The unread rows are scaled by -2 in place and restored by -1/2 (both exact in floating
    point), so the check copies nothing: a large vocabulary's logits are not duplicated.
    """
    spans = _unread_spans(logits.shape[1], read)
    if not spans:
        return
    for a, b in spans:
        logits[:, a:b].mul_(-2.0)
    try:
        probed = _scalar(metric, logits)
    finally:
        for a, b in spans:
            logits[:, a:b].mul_(-0.5)
    if not np.isclose(probed, value, rtol=1e-5, atol=1e-6):
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
    base_logits: Tensor  # the unpatched logits, full shape (the buffer the metric reads)
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
    method: Literal["exact", "attribution"] = "exact",
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
        batch_size: most patches per stacked rerun (default: chosen per stack from the
            patches' start positions, the device and the memory left free).
        method: ``exact`` (the default: every patch rerun, equal to
            ``transformer_lens.patching``) or ``attribution``: the first-order estimate
            ``metric + grad · (patched - unpatched activation)`` from one forward and one
            backward of the unpatched run (attribution patching, Nanda 2023; AtP, Kramár et al.
            2024), in the same table. Approximate: see ``docs/patching.md`` for its measured
            agreement with exact patching. ``metric`` must then be differentiable.
        progress: show a progress bar.

    Returns:
        Columns ``layer``, ``pos`` / ``head`` / ``pos, head``, ``value``, in TL's order, then
        the sweep's constants as explicit columns (they survive ``to_csv``):
        ``clean_value`` and ``corrupted_value`` (the unpatched metrics, read by
        :func:`recovered`), ``point``, ``mode``, ``by``, the ``engine`` used and whether it
        ran suffixes (``suffix``) and stacked patches (``stacked``), and the ``method``. The
        same constants are also in ``df.attrs``, deprecated (pandas marks ``attrs``
        experimental).
    """
    bridge = _bridge_of(model)
    _check_eval(bridge)
    _check_inputs(model, clean, corrupted)
    if mode not in ("denoise", "noise"):
        raise ValueError(f"mode must be 'denoise' or 'noise', not {mode!r}.")
    if engine not in ("auto", "native", "bridge"):
        raise ValueError(f"engine must be 'auto', 'native' or 'bridge', not {engine!r}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (or None to choose per stack).")
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
    read = None
    if metric_positions is not None:
        read = torch.sort(resolve_positions(metric_positions, seq)).values.to(device)

    if method == "attribution":
        setup, src_value = _attribution(
            bridge, point, by, layer_list, pos_list, base_in, src_in, metric
        )
        runner = None
    else:
        with torch.no_grad():
            runner, setup, src_value = _run_unpatched(
                engine, bridge, point, by, layer_list, pos_list, base_in, src_in, metric, read
            )
        _sweep(setup, runner, batch_size, device, progress)

    df = _frame(setup)
    base_value = setup.base_value
    clean_value, corrupted_value = (
        (src_value, base_value) if mode == "denoise" else (base_value, src_value)
    )
    if runner is None:
        engine_used, suffix, stacked = "attribution", False, False
    else:
        native = isinstance(runner, NativeSuffixRunner)
        engine_used = "native" if native else "bridge"
        suffix, stacked = _suffix_ok(setup, runner), native or runner.batch_ok
    constants = {
        "clean_value": clean_value,
        "corrupted_value": corrupted_value,
        "point": point,
        "mode": mode,
        "by": by,
        "engine": engine_used,
        "suffix": suffix,
        "stacked": stacked,
        "method": method,
    }
    df = df.assign(**constants)
    df.attrs.update(constants)  # deprecated: read the columns
    return df


def _sweep(
    setup: _Setup, runner: Any, batch_size: int | None, device: torch.device, progress: bool
) -> None:
    """Run the planned patches a stack at a time. Stacks of one layer go layer by layer,
    freeing each layer's activations (and the keys and values no later rerun reads) once
    its patches are done; stacks across layers (:func:`_cross_layer`) run after them."""
    jobs = _plan(setup, runner)
    total = sum(len(j) for j in jobs.values())
    label = f"patch {setup.point}"
    bar = tqdm(total=total, desc=label, disable=None if progress else True, leave=False)
    order = sorted(jobs)
    if isinstance(runner, BridgeSuffixRunner) and order:  # no rerun starts before order[0]
        for i in [i for i in runner.kv if i < order[0]]:
            del runner.kv[i]
    lanes: dict[Any, list[Job]] = {}
    for layer in order:
        lane = lanes.setdefault(_lane(setup, runner, layer), [])
        lane.extend((layer, pos, head, start) for pos, head, start in jobs[layer])
    per_layer = [lane for lane in lanes if lane != "across"]
    for i, layer in enumerate(per_layer):
        for group in _groups(setup, runner, lanes[layer], batch_size, device):
            _run_group(setup, runner, group)
            bar.update(len(group))
        if "across" not in lanes:
            _free(setup, runner, layer, per_layer[i + 1] if i + 1 < len(per_layer) else None)
    for group in _groups(setup, runner, lanes.get("across", []), batch_size, device):
        _run_group(setup, runner, group)
        bar.update(len(group))
    bar.close()


def _run_group(setup: _Setup, runner: Any, group: list[Job]) -> None:
    """One stacked rerun: each patch's metric, read with its rows written into the unpatched
    logits (restored after)."""
    p0 = min(start for *_, start in group)
    layer = group[0][0]
    cells = [(pos, head, start) for _, pos, head, start in group]
    if any(job[0] != layer for job in group):
        logits, rows = _bridge_stack(setup, runner, group, p0)
    elif isinstance(runner, NativeSuffixRunner):
        logits, rows = _native_group(setup, runner, layer, cells, p0)
    elif setup.point == "z" and runner.replay_ok and runner.z_ok:
        logits, rows = _bridge_z_group(setup, runner, layer, cells, p0)
    elif setup.point in ("resid_pre", "resid_post") and runner.replay_ok:
        logits, rows = _bridge_stack(setup, runner, group, p0)
    else:
        logits, rows = _bridge_group(setup, runner, layer, cells, p0)
    buf = setup.base_logits
    saved = buf[:, rows].clone()
    for k, (lay, pos, head, _) in enumerate(group):
        buf[:, rows] = logits[k * setup.batch : (k + 1) * setup.batch]
        setup.values[(lay, pos, head)] = _scalar(setup.metric, buf)
    buf[:, rows] = saved


def _free(setup: _Setup, runner: Any, layer: int, next_layer: int | None) -> None:
    """Drop what no later stack reads: ``layer``'s activations, and keys and values of the
    layers before the next layer swept."""
    prefix = f"blocks.{layer}."
    for cache in (setup.base, setup.src):
        for name in [n for n in cache if n.startswith(prefix)]:
            del cache[name]
    if isinstance(runner, BridgeSuffixRunner):
        stop = runner.n_layers if next_layer is None else next_layer
        for i in [i for i in runner.kv if i < stop]:
            del runner.kv[i]


def _points(point: str, engine: str) -> set[str]:
    """Hook points of the unpatched run that an engine reads at each swept layer."""
    if engine == "native":
        return {"resid_pre", "resid_mid", "resid_post", _HOOK[point]}
    return {"resid_pre", _HOOK[point]} | ({"resid_mid"} if point == "resid_mid" else set())


def _run_unpatched(
    engine: str,
    bridge: Any,
    point: str,
    by: str,
    layers: list[int],
    positions: list[int],
    base_in: Tensor,
    src_in: Tensor,
    metric: Metric,
    read: Tensor | None,
) -> tuple[Any, _Setup, float]:
    """The engine, the sweep's setup (the unpatched run's logits, metric and activations,
    the source activations) and the source run's metric.

    The native engine computes both runs itself (no hook overhead); the bridge engine runs
    each through the bridge once, recording on the unpatched run what its replays need.
    Both settle their shortcuts once per model (cached on the bridge) and spot-check them
    on every later sweep.
    """
    n_layers = bridge.cfg.n_layers

    def make_setup(base_logits: Tensor, base: dict, src: dict, base_value: float) -> _Setup:
        return _Setup(
            bridge=bridge,
            point=point,
            by=by,
            base=base,
            src=src,
            base_logits=base_logits,
            base_value=base_value,
            layers=layers,
            positions=positions,
            read=read,
            metric=metric,
            causal=getattr(bridge.cfg, "attention_dir", "causal") == "causal",
        )

    def base_metric(logits: Tensor) -> float:
        value = _scalar(metric, logits)
        if read is not None:
            _check_metric_positions(metric, logits, read, value)
        return value

    if engine in ("auto", "native") and native_model(bridge) is not None:
        runner = NativeSuffixRunner(bridge)
        names = {hook_name(layer, p) for layer in layers for p in _points(point, "native")}
        base_logits, base = runner.forward(
            bridge(base_in, stop_at_layer=0), _points(point, "native"), keep_kv=True
        )
        base = {k: v for k, v in base.items() if k in names}
        try:
            _native_verdict(runner, bridge, base_in, base_logits)
        except RuntimeError:
            if engine == "native":
                raise
            log.warning("the native patching engine disagrees with the bridge; using 'bridge'")
        else:
            src_logits, src = runner.forward(bridge(src_in, stop_at_layer=0), {_HOOK[point]})
            src = {k: v for k, v in src.items() if k in names}
            src_value = _scalar(metric, src_logits)
            del src_logits
            return runner, make_setup(base_logits, base, src, base_metric(base_logits)), src_value
    elif engine == "native":
        raise ValueError(
            "engine='native' needs a TL-native bridge (a tvlens TaskModel); use engine='bridge'."
        )
    known = set(bridge.hook_dict)
    last = n_layers - 1
    base_names = {hook_name(layer, p) for layer in layers for p in _points(point, "bridge")}
    base_names.add(hook_name(last, "resid_pre"))  # the spot check replays the last block
    z_layer = max(layers)
    if point == "z" and z_layer < last:  # checks that head outputs rebuild the residual
        base_names.add(hook_name(z_layer + 1, "resid_pre"))
    src_names = {hook_name(layer, _HOOK[point]) for layer in layers}
    runner = BridgeSuffixRunner(bridge)
    base_logits, base = runner.record(base_in, sorted(base_names & known))
    base_value = base_metric(base_logits)
    try:
        runner.verify(base_logits, base.get(hook_name(last, "resid_pre")))
    except RuntimeError as e:  # the recording cache changed the forward: the plain path
        log.warning("%s", e)
        base_logits, cache = bridge.run_with_cache(
            base_in, names_filter=(base_names & known).__contains__
        )
        base, base_value = dict(cache.items()), base_metric(base_logits)
        runner = BridgeSuffixRunner(bridge)
        runner.prepare(base_in, bridge(base_in, stop_at_layer=0))
    if not runner.replay_ok:
        log.warning("this bridge's blocks cannot be replayed; every patch runs a full forward")
    src_value, src = _source_run(bridge, src_in, src_names, metric, base_logits, read)
    setup = make_setup(base_logits, base, src, base_value)
    if point == "z" and runner.replay_ok:
        _check_z(setup, runner, z_layer)
    return runner, setup, src_value


def _native_verdict(
    runner: NativeSuffixRunner, bridge: Any, base_in: Tensor, logits: Tensor
) -> None:
    """Check the native runner against the bridge: in full (the first sequence) once per model
    and hook set, then on the first positions of the first sequence only."""
    hooked = tuple(
        sorted(
            n for n, hp in bridge.hook_dict.items() if hp._forward_hooks or hp._forward_pre_hooks
        )
    )
    key = ("native", hooked)
    verdicts = bridge.__dict__.setdefault(_VERDICTS, {})
    if key in verdicts:
        k = min(base_in.shape[1], 4)
        short = base_in[:1, :k]
        got, _ = runner.forward(bridge(short, stop_at_layer=0))
        try:
            runner.check(got, bridge(short))
            return
        except RuntimeError:
            verdicts.pop(key, None)
    runner.check(logits[:1], bridge(base_in[:1]))
    verdicts[key] = True


def _source_run(
    bridge: Any,
    src_in: Tensor,
    names: set[str],
    metric: Metric,
    buf: Tensor,
    read: Tensor | None,
) -> tuple[float, dict[str, Tensor]]:
    """The source run's metric and activations ``names``.

    Where the metric's positions are declared and the bridge takes HF's ``logits_to_keep``,
    only those rows are unembedded; they are written into ``buf`` (the unpatched logits,
    restored after) for the metric, which the positions check showed reads nothing else.
    """
    if read is not None and native_model(bridge) is None:
        try:
            logits, cache = bridge.run_with_cache(
                src_in, names_filter=names.__contains__, logits_to_keep=read
            )
        except (TypeError, ValueError):
            logits = None
        if logits is not None and logits.shape[1] == read.numel():
            saved = buf[:, read].clone()
            buf[:, read] = logits
            try:
                value = _scalar(metric, buf)
            finally:
                buf[:, read] = saved
            return value, dict(cache.items())
    logits, cache = bridge.run_with_cache(src_in, names_filter=names.__contains__)
    return _scalar(metric, logits), dict(cache.items())


def _check_z(setup: _Setup, runner: BridgeSuffixRunner, layer: int) -> None:
    """Settle whether head outputs rebuild the residual (``resid_pre + o(z)``, then the
    block's MLP): on every position of ``layer`` the first time, on the last one after."""
    pre, z = setup.act("base", layer, "resid_pre"), setup.act("base", layer)
    if layer == runner.n_layers - 1:
        expected = setup.base_logits
    else:
        expected = setup.base[hook_name(layer + 1, "resid_pre")]
    if runner.z_ok is None:
        runner.check_z(layer, pre, z, expected)
    elif runner.z_ok:
        runner.check_z(layer, pre[:, -1:], z[:, -1:], expected[:, -1:])


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


def _plan(setup: _Setup, runner: Any) -> dict[int, list[Cell]]:
    """Patches to run per layer as ``(pos, head, start)``; fills in the ones that change nothing
    the metric reads (their value is the unpatched one, exactly as a rerun would give).

    ``start`` is the first position the rerun needs (0 without suffix runs).
    """
    last_read = setup.seq - 1 if setup.read is None else int(setup.read.max())
    read = set() if setup.read is None else set(setup.read.tolist())
    suffix = _suffix_ok(setup, runner)
    last_layer = setup.bridge.cfg.n_layers - 1
    jobs: dict[int, list[Cell]] = {}
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


def _cross_layer(setup: _Setup, runner: Any) -> bool:
    """Whether patches of different layers can share one pass, each copy entering the blocks
    at its own layer (:meth:`BridgeSuffixRunner.run_stack`): bridge replays of the residual
    stream, and of head outputs where they rebuild the residual (``z_ok``)."""
    if not isinstance(runner, BridgeSuffixRunner) or not (runner.replay_ok and runner.batch_ok):
        return False
    return setup.point in ("resid_pre", "resid_post") or (setup.point == "z" and bool(runner.z_ok))


def _lane(setup: _Setup, runner: Any, layer: int) -> Any:
    """Patches in one lane may share a stack: ``"across"`` for every layer that enters a
    cross-layer pass, else the layer itself (the last layer's head outputs are finished on
    the read rows only, which a pass over the whole suffix cannot do)."""
    last = layer == setup.bridge.cfg.n_layers - 1
    if _cross_layer(setup, runner) and not (setup.point == "z" and last):
        return "across"
    return layer


def _groups(
    setup: _Setup,
    runner: Any,
    jobs: list[Job],
    batch_size: int | None,
    device: torch.device,
) -> list[list[Job]]:
    """Stacks of jobs that keep the suffix saving.

    A stacked rerun starts at its earliest patch's position, and (across layers) each copy
    enters at its own layer, so a block runs once for the whole stack. Jobs are taken latest
    start first, and a job joins the open stack only where that costs no more than a rerun of
    its own: the rows recomputed for nothing (a later start rerun from the stack's earlier
    one) against the blocks' fixed cost (:data:`RERUN_OVERHEAD_FLOPS` per block call), within
    the rows and the memory a stack may hold (:data:`STACK_MAX_ROWS`,
    :data:`STACK_MEMORY_SHARE`). Patches with the same start always share a stack where they
    fit. ``batch_size`` caps the patches per stack and, given, stacks regardless of the waste.
    Each stack is returned in layer order (the order its copies enter).
    """
    stackable = isinstance(runner, NativeSuffixRunner) or runner.batch_ok
    if not stackable or batch_size == 1:
        return [[job] for job in jobs]
    kind = "cuda" if device.type == "cuda" else "cpu"
    row_bytes, row_flops = _row_cost(setup)
    engine = "native" if isinstance(runner, NativeSuffixRunner) else "bridge"
    overhead = RERUN_OVERHEAD_FLOPS[(kind, engine)] / row_flops  # in rows of one layer
    max_rows = min(
        STACK_MAX_ROWS[(kind, engine)],
        max(1, int(_free_memory(device) * STACK_MEMORY_SHARE / row_bytes)),
    )
    limit = batch_size or len(jobs)
    batch, seq, n_layers = setup.batch, setup.seq, setup.bridge.cfg.n_layers

    def cost(group: list[Job], p0: int) -> float:
        """Rows × layers recomputed, plus the block calls' fixed cost."""
        depths = [max(1, n_layers - job[0]) for job in group]
        return batch * (seq - p0) * sum(depths) + overhead * max(depths)

    groups: list[list[Job]] = []
    for job in sorted(jobs, key=lambda j: (-j[3], j[0])):
        if groups:
            group = groups[-1]
            p0 = min(j[3] for j in group)
            merged = cost([*group, job], min(p0, job[3]))
            apart = cost(group, p0) + cost([job], job[3])
            # every copy also holds the prefix's keys and values and a row of attention
            # scores per key: count its whole sequence against the stack's bound
            fits = (len(group) + 1) * batch * seq <= max_rows and len(group) < limit
            if fits and (batch_size is not None or merged <= apart):
                group.append(job)
                continue
        groups.append([job])
    return [sorted(g, key=lambda j: j[0]) for g in groups]


def _row_cost(setup: _Setup) -> tuple[float, float]:
    """Bytes held and floating-point operations spent per row per layer of a rerun: the
    residual, norms, query/key/value and output projections, the MLP's hidden activations,
    and one row of attention scores against every key."""
    cfg = setup.bridge.cfg
    d, heads, seq = cfg.d_model, cfg.n_heads, setup.seq
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * d
    item = setup.base_logits.element_size()
    floats = 6 * d + 3 * d_mlp + 2 * heads * seq
    flops = 2 * (4 * d * d + 3 * d * d_mlp) + 4 * d * seq
    return float(floats * item), float(flops)


def _free_memory(device: torch.device) -> float:
    """Bytes free for a stack: CUDA's free memory, or the kernel's MemAvailable on a CPU."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(8 << 30)


# --------------------------------------------------------------------------- native engine
def _native_group(
    setup: _Setup,
    runner: NativeSuffixRunner,
    layer: int,
    group: list[Cell],
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
    group: list[Cell],
    p0: int,
) -> tuple[Tensor, Tensor]:
    """The same as :func:`_native_group` through the bridge's blocks and TL hooks (points
    other than the residual stream, and bridges whose blocks cannot be replayed)."""
    point, n, batch = setup.point, len(group), setup.batch
    rows, read_rel = _read_rows(setup, p0)
    if not runner.replay_ok:  # full forwards on the inputs: hooks see every position
        hooks = _patch_hooks(setup, layer, group, 0, batch, point)
        logits = runner.run(None, 0, 0, 1, hooks, None)
        return logits[:, rows], rows
    x = setup.act("base", layer, "resid_pre")[:, p0:].repeat(n, 1, 1)
    hooks = _patch_hooks(setup, layer, group, p0, batch, point)
    return runner.run(x, layer, p0, n, hooks, read_rel), rows


def _patched_resid(
    setup: _Setup, layer: int, cells: list[tuple[int, int | None]], p0: int
) -> Float[Tensor, "nb S d"]:
    """Copies of the unpatched residual at ``layer`` (positions ``p0..``), copy k with
    ``cells[k]``'s position patched in."""
    n = len(cells)
    x = setup.act("base", layer)[:, p0:].unsqueeze(0).repeat(n, 1, 1, 1)
    pos = torch.tensor([p for p, _ in cells], device=x.device)
    x[torch.arange(n), :, pos - p0] = setup.act("src", layer)[:, pos].transpose(0, 1)
    return x.flatten(0, 1)


def _patched_mid(
    setup: _Setup,
    runner: BridgeSuffixRunner,
    layer: int,
    cells: list[tuple[int, int | None]],
    p0: int,
) -> Float[Tensor, "nb S d"]:
    """Copies of ``layer``'s residual after attention, ``resid_pre + o(z)``, copy k with
    ``cells[k]``'s head output patched in (at every position for ``pos = -1``)."""
    z_base, z_src = setup.act("base", layer), setup.act("src", layer)
    z = z_base[:, p0:].unsqueeze(0).repeat(len(cells), 1, 1, 1, 1)  # [n, batch, S, H, d_head]
    for k, (pos, head) in enumerate(cells):
        if pos < 0:
            z[k, :, :, head] = z_src[:, p0:, head]
        else:
            z[k, :, pos - p0, head] = z_src[:, pos, head]
    pre = setup.act("base", layer, "resid_pre")[:, p0:]
    return runner.mid_from_z(layer, pre, z).flatten(0, 1)


def _bridge_stack(
    setup: _Setup, runner: BridgeSuffixRunner, group: list[Job], p0: int
) -> tuple[Tensor, Tensor]:
    """Residual or head-output patches of one or several layers in one pass
    (:meth:`BridgeSuffixRunner.run_stack`): each layer's copies enter at that layer (a head
    patch after its layer's MLP), in the group's order (sorted by layer)."""
    rows, read_rel = _read_rows(setup, p0)
    cells: dict[int, list[tuple[int, int | None]]] = {}
    for layer, pos, head, _ in group:
        cells.setdefault(layer, []).append((pos, head))
    entries = []
    for layer, own in cells.items():
        if setup.point == "z":
            mid = _patched_mid(setup, runner, layer, own, p0)
            entries.append((layer + 1, runner.finish_layer(layer, mid)))
        else:
            enter = layer + (setup.point == "resid_post")
            entries.append((enter, _patched_resid(setup, layer, own, p0)))
    return runner.run_stack(entries, p0, read_rel), rows


def _bridge_z_group(
    setup: _Setup,
    runner: BridgeSuffixRunner,
    layer: int,
    group: list[Cell],
    p0: int,
) -> tuple[Tensor, Tensor]:
    """Head patches of one layer stacked in one rerun that starts after that layer's attention:
    each copy's residual is ``resid_pre + o(z)`` with its head's outputs patched in, then the
    layer's MLP and the later blocks run (positions ``p0..``), as the native engine does.
    On the last layer only the read rows are finished."""
    rows, read_rel = _read_rows(setup, p0)
    mid = _patched_mid(setup, runner, layer, [(pos, head) for pos, head, _ in group], p0)
    return runner.run_from_mid(mid, layer, p0, len(group), read_rel), rows


def _patch_hooks(
    setup: _Setup,
    layer: int,
    group: list[Cell],
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


# --------------------------------------------------------------------------- attribution
def _attribution(
    bridge: Any,
    point: str,
    by: str,
    layers: list[int],
    positions: list[int],
    base_in: Tensor,
    src_in: Tensor,
    metric: Metric,
) -> tuple[_Setup, float]:
    """Attribution patching: every patch's effect to first order, from one forward and one
    backward of the unpatched run plus the source run's activations.

    ``value ≈ metric(unpatched) + Σ grad · (source − unpatched)`` over the patched cell (the
    position's residual, or a head's outputs over its positions), with the gradient taken
    at the hook the exact engine patches (``resid_mid`` also through the MLP's output, where
    the exact patch carries it).
    """
    names = [hook_name(layer, _HOOK[point]) for layer in layers]
    extra = [hook_name(layer, "mlp_out") for layer in layers] if point == "resid_mid" else []
    with torch.no_grad():
        src_logits, cache = bridge.run_with_cache(src_in, names_filter=set(names).__contains__)
        src_value = _scalar(metric, src_logits)
        del src_logits
    src = dict(cache.items())
    acts: dict[str, Tensor] = {}

    def keeper(name: str) -> Callable[..., Tensor]:
        # Keyed by the name asked for (the hook point may report its canonical alias). The
        # hook hands on a view, a node of its own: the gradient then covers only what reads
        # the hooked value after this point, as a patch there changes (a bridge's resid_mid
        # feeds the MLP, while the residual skip keeps the tensor itself).
        def keep(act: Tensor, hook: Any = None) -> Tensor:
            if act.requires_grad:
                act = act.view_as(act)
            else:  # the first hooked point: the graph starts here
                act = act.detach().requires_grad_(True)
            acts[name] = act
            return act

        return keep

    hooks = [(n, keeper(n)) for n in names + extra]
    with torch.enable_grad(), bridge.hooks(fwd_hooks=hooks):
        logits = bridge(base_in)
        out = torch.as_tensor(metric(logits))
        if out.ndim != 0:
            raise ValueError(
                f"the metric must return one scalar for the whole batch; it returned shape "
                f"{tuple(out.shape)}. Reduce over the batch (e.g. .mean()) inside the metric."
            )
        if not out.requires_grad:
            raise ValueError(
                "method='attribution' needs a differentiable metric: it returned a tensor "
                "without a gradient (do not call .item(), float() or numpy inside it)."
            )
        order = [n for n in names + extra if n in acts]
        grads = torch.autograd.grad(out, [acts[n] for n in order], allow_unused=True)
    from tvlens.validation import check_finite_value

    base_value = check_finite_value(float(out.detach()), "the metric")
    grad = {n: g for n, g in zip(order, grads, strict=True) if g is not None}
    batch, seq = base_in.shape[:2]
    setup = _Setup(
        bridge=bridge,
        point=point,
        by=by,
        base={},
        src={},
        base_logits=logits.detach().new_empty(batch, seq, 0),
        base_value=base_value,
        layers=layers,
        positions=positions,
        read=None,
        metric=metric,
        causal=getattr(bridge.cfg, "attention_dir", "causal") == "causal",
    )
    del logits, out
    for layer, name in zip(layers, names, strict=True):
        delta = src[name].to(acts[name].dtype) - acts[name].detach()
        g = grad.get(name, torch.zeros_like(delta))
        if point == "resid_mid":
            g = g + grad.get(hook_name(layer, "mlp_out"), torch.zeros_like(delta))
        prod = (g * delta).double()
        if by == "pos":
            per = prod.flatten(2).sum(dim=(0, 2))  # [pos]
            cells = {(p, None): per[p] for p in positions}
        elif by == "head":
            per = prod.sum(dim=(0, 1, 3))  # [head]
            cells = {(-1, h): per[h] for h in range(per.shape[0])}
        else:
            per = prod.sum(dim=(0, 3))  # [pos, head]
            cells = {(p, h): per[p, h] for p in positions for h in range(per.shape[1])}
        for (pos, head), effect in cells.items():
            setup.values[(layer, pos, head)] = base_value + float(effect)
    return setup, src_value


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
    method: str = option(
        "exact",
        "exact activation patching, or 'attribution' (gradient x activation difference: "
        "approximate, one backward pass)",
        flag="--patching-method",
        choices=METHODS,
    )


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
            method=o.method,
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
