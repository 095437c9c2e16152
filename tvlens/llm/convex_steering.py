"""Convex steering of a pretrained model with mixtures of two task vectors.

Two known tasks A and B on the same inputs (uppercase: apple -> APPLE; first_letter: apple
-> a) have task vectors θ_A and θ_B at layer ℓ: the mean query-token state of source prompts
``S + x'`` (Hendel et al.). A zero-shot query ``x`` is run with its query-token state at ℓ
replaced by ``α θ_A + (1 − α) θ_B``, and P(A's answer), P(B's answer) and P(neither) (the
first answer tokens) are read against α. Two references sit beside it:

* ``demo_mix``: prompts whose demonstrations are a fraction α from A and 1 − α from B (the
  in-context version of the same mixture);
* ``output_mix``: ``α p(·|θ_A) + (1 − α) p(·|θ_B)``, the mixture of the two single-task
  outputs: what a *convex* combination of the behaviours would give.

A steered curve that follows ``output_mix`` is a mixture; one that jumps from B to A around
one α is a switch. :func:`switch_index` summarises it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from tvlens.hooks.core import check_layers, hook_name
from tvlens.hooks.rowwise import patch_rows_hook
from tvlens.llm.config import ConvexSteeringOptions
from tvlens.llm.prompts import (
    Scored,
    encode,
    layer_sweep,
    make_prompt,
    run_prompts,
    sample_prompts,
    tokenizer_of,
)
from tvlens.llm.tasks import NLTask, load_task
from tvlens.registry import driver


def shared_queries(a: NLTask, b: NLTask, n: int, seed: int) -> list[tuple[str, str, str]]:
    """``n`` inputs both tasks map, as ``(x, y_A, y_B)``, in a seeded order (the pool for
    queries and demonstrations)."""
    ya, yb = dict(a.pairs), dict(b.pairs)
    common = [x for x in a.inputs if x in yb and ya[x] != yb[x]]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(common))
    return [(common[i], ya[common[i]], yb[common[i]]) for i in order[:n]]


def task_vector(
    model: Any,
    task: NLTask,
    layer_names: list[str],
    shots: int,
    n: int,
    template: str,
    seed: int,
    batch_size: int,
) -> dict[str, Float[Tensor, " d"]]:
    """θ of ``task`` at each hook name: the mean query state of ``n`` source prompts
    ``S + x'`` (Hendel et al.'s dummy-query prompts)."""
    tok = tokenizer_of(model)
    src = encode(tok, sample_prompts(task, n, shots, template, seed, dummy_query=True))
    states = run_prompts(model, src, capture=layer_names, batch_size=batch_size).states
    return {name: v.mean(0) for name, v in states.items()}


def _probs(scored_a: Scored, scored_b: Scored) -> dict[str, float]:
    pa, pb = scored_a.p_answer.double(), scored_b.p_answer.double()
    n = pa.numel()
    return {
        "p_a": float(pa.mean()),
        "p_b": float(pb.mean()),
        "p_neither": float((1 - pa - pb).clamp_min(0).mean()),
        "se_a": float(pa.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "se_b": float(pb.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "acc_a": scored_a.accuracy,
        "acc_b": scored_b.accuracy,
        "n": n,
    }


def demo_mix_prompts(
    a: NLTask,
    b: NLTask,
    pool: list[tuple[str, str, str]],
    queries: list[tuple[str, str, str]],
    shots: int,
    alpha: float,
    template: str,
    seed: int,
) -> tuple[list, list]:
    """Prompts whose ``shots`` demonstrations are ``round(α·shots)`` from A and the rest from
    B (inputs from ``pool`` minus the query, order shuffled); the same text scored with A's
    and with B's answer."""
    rng = np.random.default_rng(seed)
    m = round(alpha * shots)
    pa, pb = [], []
    for x, ya, yb in queries:
        others = [p for p in pool if p[0] != x]
        picked = [others[i] for i in rng.choice(len(others), size=shots, replace=False)]
        flags = np.array([True] * m + [False] * (shots - m))
        rng.shuffle(flags)
        demos = [(px, pya if f else pyb) for (px, pya, pyb), f in zip(picked, flags, strict=True)]
        pa.append(make_prompt(a, (x, ya), demos, template))
        pb.append(make_prompt(b, (x, yb), demos, template))
    return pa, pb


def switch_index(df: pd.DataFrame) -> float:
    """Mean |steered − output mixture| of P(A) over the interior α, divided by the endpoints'
    gap |P_A(1) − P_A(0)|: 0 for a convex mixture, up to 0.5 for a step at α = ½."""
    tv = df[df["condition"] == "task_vector_mix"].set_index("alpha")["p_a"]
    mix = df[df["condition"] == "output_mix"].set_index("alpha")["p_a"]
    inner = [x for x in tv.index if 0 < x < 1]
    gap = abs(tv.get(1.0, np.nan) - tv.get(0.0, np.nan))
    if not inner or not gap > 0:
        return float("nan")
    return float(np.mean([abs(tv[x] - mix[x]) for x in inner]) / gap)


@driver("convex_steering", ConvexSteeringOptions, kind="llm")
def analyse_convex_steering(
    run: Any, o: ConvexSteeringOptions, progress: bool
) -> dict[str, pd.DataFrame]:
    """P(A), P(B), P(neither) against α for task-vector mixtures, mixed demonstrations and
    the output mixture (``llm_convex_steering``), and the layer choice
    (``llm_steering_layers``)."""
    s = run.settings
    model, tok = run.model, tokenizer_of(run.model)
    a, b = load_task(o.task_a), load_task(o.task_b)
    pool = shared_queries(a, b, len(a), s.seed)
    if len(pool) < o.n_prompts + o.shots + 1:
        raise ValueError(
            f"{a.name} and {b.name} share {len(pool)} inputs with different answers; "
            f"n_prompts + shots + 1 = {o.n_prompts + o.shots + 1} are needed."
        )
    queries = pool[: o.n_prompts]
    zero_a = encode(tok, [make_prompt(a, (x, ya), [], s.template) for x, ya, _ in queries])
    zero_b = encode(tok, [make_prompt(b, (x, yb), [], s.template) for x, _, yb in queries])
    n_layers = int(model.cfg.n_layers)
    candidates = check_layers(model, [o.layer] if o.layer is not None else range(n_layers))
    names = {layer: hook_name(layer, s.point) for layer in candidates}
    kw = {"template": s.template, "seed": s.seed, "batch_size": s.batch_size}
    theta_a = task_vector(model, a, list(names.values()), o.shots, o.n_prompts, **kw)
    theta_b = task_vector(model, b, list(names.values()), o.shots, o.n_prompts, **kw)

    def patch(vectors: dict[str, Tensor]):
        def at(layer: int, rows: Tensor, pos: Tensor) -> list[tuple[str, Any]]:
            return [(names[layer], patch_rows_hook(vectors[names[layer]][None], pos))]

        return at

    sweep_a = layer_sweep(
        model,
        zero_a,
        candidates,
        patch(theta_a),
        s.batch_size,
        progress=progress,
        desc="θ_A by layer",
    )
    sweep_b = layer_sweep(
        model,
        zero_b,
        candidates,
        patch(theta_b),
        s.batch_size,
        progress=progress,
        desc="θ_B by layer",
    )
    layer_rows = [
        {
            "layer": layer,
            "p_a_with_theta_a": float(sweep_a[layer].p_answer.mean()),
            "p_b_with_theta_b": float(sweep_b[layer].p_answer.mean()),
            "acc_a_with_theta_a": sweep_a[layer].accuracy,
            "acc_b_with_theta_b": sweep_b[layer].accuracy,
        }
        for layer in candidates
    ]
    layers_df = pd.DataFrame(layer_rows)
    score = layers_df["p_a_with_theta_a"] + layers_df["p_b_with_theta_b"]
    layer = int(layers_df.loc[score.idxmax(), "layer"]) if o.layer is None else o.layer
    layers_df["chosen"] = layers_df["layer"] == layer
    name = names[layer]

    rows = []
    ends: dict[float, dict[str, float]] = {}
    for alpha in sorted(set(o.alphas) | {0.0, 1.0}):
        v = {name: alpha * theta_a[name] + (1 - alpha) * theta_b[name]}
        hooks = lambda idx, qpos, v=v: [(name, patch_rows_hook(v[name][None], qpos))]  # noqa: E731
        got = _probs(
            run_prompts(model, zero_a, hooks=hooks, batch_size=s.batch_size),
            run_prompts(model, zero_b, hooks=hooks, batch_size=s.batch_size),
        )
        ends[alpha] = got
        if alpha in o.alphas:
            rows.append({"condition": "task_vector_mix", "alpha": alpha, **got})
            pa, pb = demo_mix_prompts(
                a, b, pool[o.n_prompts :], queries, o.shots, alpha, s.template, s.seed
            )
            got = _probs(
                run_prompts(model, encode(tok, pa), batch_size=s.batch_size),
                run_prompts(model, encode(tok, pb), batch_size=s.batch_size),
            )
            rows.append({"condition": "demo_mix", "alpha": alpha, **got})
    for alpha in o.alphas:
        mix = {
            k: alpha * ends[1.0][k] + (1 - alpha) * ends[0.0][k]
            for k in ("p_a", "p_b", "p_neither", "acc_a", "acc_b")
        }
        rows.append({"condition": "output_mix", "alpha": alpha, **mix, "n": ends[1.0]["n"]})
    df = pd.DataFrame(rows)
    df.insert(0, "layer", layer)
    df.insert(0, "task_b", b.name)
    df.insert(0, "task_a", a.name)
    return {"llm_convex_steering": df, "llm_steering_layers": layers_df}


def headline(tables: dict[str, pd.DataFrame], run: Any = None) -> dict[str, float]:
    """P(A) at α = ½ under each condition and the switch index."""
    df = tables["llm_convex_steering"]
    out = {f"P(A) at alpha 0.5, {c}": float(g.loc[g["alpha"] == 0.5, "p_a"].mean())
           for c, g in df.groupby("condition")}  # fmt: skip
    out["switch index (0 convex, 0.5 step)"] = switch_index(df)
    return out
