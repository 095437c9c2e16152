"""Attention patterns of chosen heads, computed through the bridge (drawn by viz.attention).

The patterns come from ``blocks.{l}.attn.hook_pattern`` (``[batch, head, q, k]``) of any
TransformerBridge on one sequence (:func:`bridge_attention`): a sample of a trained tvlens
run (:func:`attention_patterns`) or a text prompt of a pretrained model
(:func:`prompt_attention`). They are saved tidy as ``analyses/attention.csv`` (layer, head,
q, k, value and the token at each position), where the report finds them.
:func:`analyse_attention` is the run-level driver; :func:`ensure_attention` recomputes a
missing or stale table (``tvlens report`` calls it; the report itself never runs a model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tvlens.analyses.common import save_analysis
from tvlens.hooks.core import check_hook_names, hook_name
from tvlens.options import Options, option
from tvlens.registry import driver

if TYPE_CHECKING:
    from tvlens.models import Run

log = logging.getLogger(__name__)

CSV_NAME = "attention"
COLUMNS = ("layer", "head", "q", "k", "value", "q_token", "k_token")
#: with no heads chosen, models with more heads than this show the most focused ones
MAX_DEFAULT_HEADS = 16


def token_labels(run: Run, inputs: Tensor) -> list[str]:
    """Readable labels for one sequence: the symbol (or BOS) if discrete, x_i / y_i else."""
    return run.family.token_labels(inputs)


def parse_heads(spec: str) -> list[tuple[int, int]]:
    """``"0.1,2.3"`` → ``[(0, 1), (2, 3)]`` (layer.head pairs, as on the command line)."""
    heads = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        layer, dot, head = item.partition(".")
        if not dot or not layer.isdigit() or not head.isdigit():
            raise ValueError(f"head {item!r} must look like LAYER.HEAD (e.g. 0.1); got {spec!r}.")
        heads.append((int(layer), int(head)))
    if not heads:
        raise ValueError(f"no heads in {spec!r}; give LAYER.HEAD pairs such as 0.1,2.3.")
    return heads


def select_heads(
    n_layers: int,
    n_heads: int,
    layers: Sequence[int] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
) -> dict[int, list[int]]:
    """Layer -> heads to keep (all heads of ``layers``, or the ``heads`` pairs), validated
    against the model's shape."""
    if heads is not None and layers is not None:
        raise ValueError("pass either layers= (all their heads) or heads= (layer, head pairs).")
    if heads is None:
        layers = list(range(n_layers)) if layers is None else list(layers)
        heads = [(layer, h) for layer in layers for h in range(n_heads)]
    chosen: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"head ({layer}, {head}) does not exist: the model has {n_layers} layers "
                f"and {n_heads} heads per layer."
            )
        if int(head) not in chosen.setdefault(int(layer), []):
            chosen[int(layer)].append(int(head))
    if not chosen:
        raise ValueError("no heads chosen; pass at least one layer or (layer, head) pair.")
    return chosen


def mean_entropy(pattern: Float[Tensor, "head q k"]) -> Float[Tensor, " head"]:
    """Mean over queries of each head's attention entropy (nats); low = focused."""
    p = pattern.clamp_min(1e-12)
    return -(pattern * p.log()).sum(-1).mean(-1)


@torch.no_grad()
def bridge_attention(
    bridge: Any,
    inputs: Tensor,
    labels: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
) -> pd.DataFrame:
    """Tidy attention patterns of any TransformerBridge on one sequence (a batch of 1).

    Reads ``blocks.{l}.attn.hook_pattern`` with ``run_with_cache(names_filter=...)``. Choose
    heads with ``heads=[(layer, head), ...]`` or whole ``layers=``. With neither, every head
    is kept when the model has at most ``MAX_DEFAULT_HEADS``; otherwise each layer keeps its
    ``MAX_DEFAULT_HEADS // n_layers`` (at least one) heads of lowest mean attention entropy on
    this sequence, the most focused ones. Columns: ``COLUMNS``.
    """
    if inputs.shape[0] != 1:
        raise ValueError(
            f"attention patterns are drawn for one sequence; got a batch of {inputs.shape[0]}. "
            "Index the batch first, e.g. batch.inputs[:1]."
        )
    if len(labels) != inputs.shape[1]:
        raise ValueError(f"{len(labels)} labels for a sequence of {inputs.shape[1]} positions.")
    auto = heads is None and layers is None
    chosen = select_heads(bridge.cfg.n_layers, bridge.cfg.n_heads, layers, heads)
    names = check_hook_names(
        bridge, [hook_name(layer, "attn.hook_pattern") for layer in sorted(chosen)]
    )
    device = next(bridge.parameters()).device
    _, cache = bridge.run_with_cache(inputs.to(device), names_filter=lambda n: n in names)
    patterns: dict[int, Float[Tensor, "head q k"]] = {
        layer: cache[hook_name(layer, "attn.hook_pattern")][0].float().cpu() for layer in chosen
    }
    if auto and sum(len(h) for h in chosen.values()) > MAX_DEFAULT_HEADS:
        per_layer = max(1, MAX_DEFAULT_HEADS // len(chosen))
        chosen = {
            layer: sorted(mean_entropy(p).argsort()[:per_layer].tolist())
            for layer, p in patterns.items()
        }
        log.info("attention: %d heads per layer with the lowest mean entropy", per_layer)
    frames = [
        pattern_frame(patterns[layer][head], labels, layer, head)
        for layer in sorted(chosen)
        for head in chosen[layer]
    ]
    return pd.concat(frames, ignore_index=True)


def attention_patterns(
    run: Run,
    inputs: Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    split: str = "major",
    seed: int = 0,
) -> pd.DataFrame:
    """Tidy attention patterns (layer, head, q, k, value, q_token, k_token) of a trained
    tvlens run on one sequence.

    ``inputs`` is one sequence (``[pos]`` token ids, ``[pos, d_in]`` regression features, or
    either with a leading batch of 1); by default one sequence of ``split`` drawn with
    ``seed``. Heads are chosen as in :func:`bridge_attention`.
    """
    if inputs is None:
        inputs = run.family.sample(split, 1, seed=seed).inputs
    inputs = run.family.as_batch(inputs)
    run.model.check_inputs(inputs)
    return bridge_attention(
        run.bridge, inputs, token_labels(run, inputs[0]), layers=layers, heads=heads
    )


def prompt_attention(
    bridge: Any,
    text: str,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
) -> pd.DataFrame:
    """Attention patterns of a pretrained bridge (``tvlens.llm.load``) on one text prompt,
    labelled by its tokens (the tokenizer's own, BOS included when it adds one)."""
    tok = getattr(bridge, "tokenizer", None)
    if tok is None:
        raise ValueError("this bridge has no tokenizer; use bridge_attention with token ids.")
    ids = tok(text, return_tensors="pt")["input_ids"]
    labels = tok.convert_ids_to_tokens(ids[0].tolist())
    return bridge_attention(bridge, ids, labels, layers=layers, heads=heads)


def pattern_frame(
    pattern: Float[Tensor, "q k"], labels: Sequence[str], layer: int, head: int
) -> pd.DataFrame:
    """One head's ``[q, k]`` pattern as tidy rows (causal: only ``k <= q``)."""
    t = pattern.shape[0]
    if pattern.shape != (t, t) or len(labels) != t:
        raise ValueError(
            f"pattern must be square [q, k] with one label per position; got "
            f"{tuple(pattern.shape)} and {len(labels)} labels."
        )
    q, k = np.tril_indices(t)
    return pd.DataFrame(
        {
            "layer": layer,
            "head": head,
            "q": q,
            "k": k,
            "value": pattern.numpy()[q, k],
            "q_token": [labels[i] for i in q],
            "k_token": [labels[i] for i in k],
        }
    )


def save_attention(df: pd.DataFrame, run_dir: Path | str) -> Path:
    """Write an attention table to ``RUN_DIR/analyses/attention.csv`` (atomically), where
    the report finds it."""
    check_table(df)
    out = save_analysis(df, Path(run_dir) / "analyses", CSV_NAME)
    log.info("%s holds %d heads", out, df.groupby(["layer", "head"]).ngroups)
    return out


def write_attention(
    run_dir: Path | str,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    split: str = "major",
    seed: int = 0,
    step: int | None = None,
) -> Path:
    """Compute attention patterns of a trained run (its last checkpoint unless ``step``) and
    save ``analyses/attention.csv`` with a ``step`` column."""
    from tvlens.models import load_run

    run = load_run(run_dir, step=step)
    df = attention_patterns(run, heads=heads, split=split, seed=seed)
    return save_attention(df.assign(step=run.step), run_dir)


def check_table(df: pd.DataFrame) -> None:
    missing = [c for c in ("layer", "head", "q", "k", "value") if c not in df.columns]
    if missing:
        raise ValueError(
            f"attention table lacks column(s) {missing}; build it with attention_patterns()."
        )
    if df.empty:
        raise ValueError("attention table is empty; choose at least one head.")


def ensure_attention(run_dir: Path, results: dict[str, Path]) -> str | None:
    """Compute ``analyses/attention.csv`` for a trained synthetic run that lacks it, or whose
    table was computed at an earlier checkpoint than the run's last.

    Attention is one forward pass of one sequence, so ``tvlens report`` computes it
    (before :func:`~tvlens.viz.report.write_report`, which never runs a model). Tables without a ``step`` column (saved by hand, e.g. from a
    pretrained model) are kept as they are. Returns a note when it could not be computed.
    """
    from tvlens.models import list_checkpoints

    steps = list_checkpoints(run_dir)
    if not steps:
        return None
    if CSV_NAME in results:
        try:
            old = pd.read_csv(results[CSV_NAME], nrows=1)
        except Exception:  # noqa: BLE001 — unreadable: the figure's error box will say why
            return None
        if "step" not in old.columns or old.empty or int(old["step"].iloc[0]) == steps[-1]:
            return None
        log.info("attention.csv is from step %s; recomputing", old["step"].iloc[0])
    try:
        results[CSV_NAME] = write_attention(run_dir)
    except Exception as e:  # noqa: BLE001 — the rest of the report still stands
        log.warning("could not compute attention patterns: %s", e)
        return f"Attention patterns could not be computed: {type(e).__name__}: {e}"
    return None


@dataclass(frozen=True)
class AttentionOptions(Options):
    """Options of :func:`analyse_attention`."""

    section = "attention"
    seed: int = option(0, "seed of the sequence")
    heads: tuple[tuple[int, int], ...] | None = option(
        None, "(layer, head) pairs (default: every head)", cli=False
    )
    split: str = option(
        "major", "split of the sequence", choices=("train", "major", "minor", "ood")
    )


@driver("attention", AttentionOptions)
def analyse_attention(run: Run, o: AttentionOptions, progress: bool) -> dict[str, pd.DataFrame]:
    """Attention patterns of a trained run on one ``split`` sequence drawn with ``seed``
    (``attention.csv``, with a ``step`` column)."""
    df = attention_patterns(run, heads=o.heads, split=o.split, seed=o.seed)
    df = df.assign(step=run.step)
    check_table(df)
    return {CSV_NAME: df}
