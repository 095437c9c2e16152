"""Benchmark: tvlens's LLM analyses on a real model against plain TransformerLens forwards.

For each analysis of ``tvlens llm`` it times, in one run on the same bridge and prompts:

- ``tvlens``: the analysis function itself (length-sorted batches, query-only unembedding,
  reruns from the hooked layer through the prefix-K/V suffix engine, stacked heads);
- ``tl``: the same numbers computed the plain way, one ``run_with_hooks`` full forward per
  intervention with full logits, in prompt order;

checks that both give the same numbers (max |Δ P(answer)|) and prints the speed-up. The
analyses run at reduced sizes (``--layers``, ``--n``) so that the plain baseline finishes;
``--full-run`` then also times the complete default ``tvlens llm`` run (every analysis at its
default size) and prints the wall time of each stage.

Usage::

    python benchmarks/llm.py --model smollm2                 # ~10 min on 2 CPU cores
    python benchmarks/llm.py --model /path/to/hf-folder --full-run
    python benchmarks/llm.py --model gemma3-270m --layers 4 9 --n 8

Results go to ``benchmarks/results/llm.json`` (one entry per model, the latest run). Wall and
process CPU time are both recorded; on a shared machine the CPU-time ratio is the more
reliable one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from tvlens.hooks.core import hook_name
from tvlens.hooks.rowwise import add_rows_hook, patch_head_rows_hook, patch_rows_hook
from tvlens.llm import function_vectors as fv
from tvlens.llm.decodability import decodability_by_shots
from tvlens.llm.icl import icl_table
from tvlens.llm.prompts import encode, sample_prompts
from tvlens.llm.task_vectors import task_vector_table
from tvlens.llm.tasks import load_task, load_tasks, task_groups

RESULTS = Path(__file__).parent / "results" / "llm.json"


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


# ------------------------------------------------------------------ plain TL baselines
def _batches(enc: Any, batch_size: int):
    for start in range(0, len(enc), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(enc)))
        yield rows, enc.tokens[rows], enc.query_pos[rows], enc.first_answer[rows]


def _p(logits: torch.Tensor, qpos: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    b = torch.arange(len(qpos))
    return logits[b, qpos].float().softmax(-1)[b, first]


@torch.no_grad()
def tl_probs(model: Any, enc: Any, hooks: Callable | None, batch_size: int) -> torch.Tensor:
    """P(first answer token) of every prompt, one full ``run_with_hooks`` per batch."""
    out = []
    for rows, tokens, qpos, first in _batches(enc, batch_size):
        fwd = hooks(rows, qpos) if hooks else []
        logits = model.run_with_hooks(tokens, fwd_hooks=fwd) if fwd else model(tokens)
        out.append(_p(logits, qpos, first))
    return torch.cat(out)


def tl_icl(model: Any, task: Any, shots: list[int], n: int, bs: int) -> dict[int, torch.Tensor]:
    return {
        s: tl_probs(model, encode(model.tokenizer, sample_prompts(task, n, s)), None, bs)
        for s in shots
    }


def tl_task_vectors(
    model: Any, task: Any, layers: list[int], n: int, bs: int
) -> dict[int, torch.Tensor]:
    tok = model.tokenizer
    zero = encode(tok, sample_prompts(task, n, 0))
    source = encode(tok, sample_prompts(task, n, 5, dummy_query=True))
    # the zero-shot and ICL baselines task_vector_table also reports
    tl_probs(model, zero, None, bs)
    tl_probs(model, encode(tok, sample_prompts(task, n, 5)), None, bs)
    names = [hook_name(layer, "resid_post") for layer in layers]
    theta = {name: [] for name in names}
    with torch.no_grad():
        for _, tokens, qpos, _ in _batches(source, bs):
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            for name in names:
                theta[name].append(cache[name][torch.arange(len(qpos)), qpos])
    theta = {k: torch.cat(v) for k, v in theta.items()}
    out = {}
    for layer, name in zip(layers, names, strict=True):
        mean = theta[name].mean(0, keepdim=True)
        out[layer] = tl_probs(
            model,
            zero,
            lambda rows, qpos, name=name: [(name, patch_rows_hook(theta[name][rows], qpos))],
            bs,
        )
        out[("mean", layer)] = tl_probs(
            model,
            zero,
            lambda rows, qpos, name=name, mean=mean: [(name, patch_rows_hook(mean, qpos))],
            bs,
        )
    return out


def tl_head_ie(model: Any, task: Any, z_mean: torch.Tensor, layers: list[int], n: int, bs: int):
    prompts = sample_prompts(task, n, 10, seed=fv.CORRUPT_SEED_OFFSET, corrupt=True)
    enc = encode(model.tokenizer, prompts)
    base = tl_probs(model, enc, None, bs).mean()
    ie = {}
    for layer in layers:
        for h in range(model.cfg.n_heads):

            def hooks(rows, qpos, layer=layer, h=h):
                return [(fv.z_name(layer), patch_head_rows_hook(z_mean[layer, h], h, qpos))]

            ie[(layer, h)] = float(tl_probs(model, enc, hooks, bs).mean() - base)
    return ie


def tl_fv_sweep(model: Any, task: Any, vector: torch.Tensor, layers: list[int], n: int, bs: int):
    zero = encode(model.tokenizer, sample_prompts(task, n, 0))
    # the zero-shot and ICL baselines function_vector_sweep also reports
    tl_probs(model, zero, None, bs)
    tl_probs(model, encode(model.tokenizer, sample_prompts(task, n, 10)), None, bs)
    return {
        layer: tl_probs(
            model,
            zero,
            lambda rows, qpos, layer=layer: [
                (hook_name(layer, "resid_post"), add_rows_hook(vector, qpos))
            ],
            bs,
        )
        for layer in layers
    }


@torch.no_grad()
def tl_decodability_forwards(
    model: Any, tasks: list[Any], shots: list[int], n: int, bs: int
) -> int:
    """The forwards decodability needs (every layer's residual at the query, and the answer
    probability), done with ``run_with_cache``; returns the number of prompts run."""
    count = 0
    for s in shots:
        for task in tasks:
            enc = encode(model.tokenizer, sample_prompts(task, n, s))
            for _, tokens, qpos, first in _batches(enc, bs):
                logits, cache = model.run_with_cache(
                    tokens, names_filter=lambda name: name.endswith("hook_resid_post")
                )
                _p(logits, qpos, first)
                count += len(qpos)
    return count


# ------------------------------------------------------------------ the comparison
def compare(model: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    task = load_task(args.task)
    layers, n, bs = args.layers, args.n, args.batch_size
    rows = []

    def row(name: str, ours: tuple, theirs: tuple, diff: float, size: str) -> None:
        r = {
            "analysis": name,
            "size": size,
            "tvlens_wall_s": round(ours[1], 2),
            "tvlens_cpu_s": round(ours[2], 2),
            "tl_wall_s": round(theirs[1], 2),
            "tl_cpu_s": round(theirs[2], 2),
            "speedup_wall": round(theirs[1] / ours[1], 2),
            "speedup_cpu": round(theirs[2] / ours[2], 2),
            "max_abs_diff": float(diff),
        }
        rows.append(r)
        print(
            f"{name:18s} {size:28s} tvlens {r['tvlens_wall_s']:7.1f} s  TL {r['tl_wall_s']:7.1f} s"
            f"  x{r['speedup_wall']:5.2f} wall  x{r['speedup_cpu']:5.2f} cpu  max|Δ| {diff:.1e}",
            flush=True,
        )

    shots = [0, 1, 2, 4, 8]
    # warm-up outside the clock: the first forward, and the one-time reload of the shipped
    # tokenizer that decides the BOS (tvlens.llm.prompts.hf_prepends_bos)
    icl_table(model, [task], [1], 2, batch_size=bs)
    tl_icl(model, task, [1], 2, bs)
    ours = timed(lambda: icl_table(model, [task], shots, n, batch_size=bs))
    theirs = timed(lambda: tl_icl(model, task, shots, n, bs))
    diff = max(
        abs(float(ours[0].set_index("shots").loc[s, "p_answer"]) - float(theirs[0][s].mean()))
        for s in shots
    )
    row("icl", ours, theirs, diff, f"shots {shots}, n {n}")

    ours = timed(lambda: task_vector_table(model, task, layers, 5, n, batch_size=bs))
    theirs = timed(lambda: tl_task_vectors(model, task, layers, n, bs))
    tv = ours[0][ours[0]["condition"] == "task_vector"].set_index("layer")["p_answer"]
    mtv = ours[0][ours[0]["condition"] == "mean_task_vector"].set_index("layer")["p_answer"]
    diff = max(
        max(abs(float(tv[layer]) - float(theirs[0][layer].mean())) for layer in layers),
        max(abs(float(mtv[layer]) - float(theirs[0][("mean", layer)].mean())) for layer in layers),
    )
    row("task_vectors", ours, theirs, diff, f"layers {layers}, n {n}")

    z = fv.query_head_outputs(model, task, 10, n, batch_size=bs)
    z_mean = z.mean(0)
    n_ie = max(2, n // 2)
    ours = timed(
        lambda: fv.head_indirect_effects(
            model, task, z_mean, 10, n_ie, layers=layers, batch_size=bs
        )
    )
    theirs = timed(lambda: tl_head_ie(model, task, z_mean, layers, n_ie, bs))
    diff = max(
        abs(float(r.ie) - theirs[0][(int(r.layer), int(r.head))]) for r in ours[0].itertuples()
    )
    row("head_ie", ours, theirs, diff, f"layers {layers}, n {n_ie}")

    heads = fv.top_heads(ours[0], min(10, len(ours[0])))
    vector = fv.function_vector(model, z, heads)
    ours = timed(lambda: fv.function_vector_sweep(model, task, vector, layers, n, batch_size=bs))
    theirs = timed(lambda: tl_fv_sweep(model, task, vector, layers, n, bs))
    sw = ours[0][ours[0]["condition"] == "function_vector"].set_index("layer")["p_answer"]
    diff = max(abs(float(sw[layer]) - float(theirs[0][layer].mean())) for layer in layers)
    row("fv_sweep", ours, theirs, diff, f"layers {layers}, n {n}")

    group = task_groups(load_tasks("pos,null"))["pos"]
    td_shots = [1, 8]
    ours = timed(
        lambda: decodability_by_shots(model, group, td_shots, n, methods=("knn",), batch_size=bs)
    )
    theirs = timed(lambda: tl_decodability_forwards(model, group, td_shots, n, bs))
    row("decodability", ours, theirs, float("nan"), f"pos+null, shots {td_shots}, n {n}")
    return rows


def full_run(model: Any, name: str, run_dir: Path | None = None) -> dict[str, float]:
    """Time the complete default ``tvlens llm`` run on ``model`` (stages from config.json);
    the run directory is kept in ``run_dir`` when given (for ``--summarize``)."""
    from tvlens.llm.run import LLMRun
    from tvlens.registry import run_analyses

    with tempfile.TemporaryDirectory() as tmp:
        where = Path(run_dir or tmp)
        _, wall, cpu = timed(lambda: run_analyses(LLMRun(model, where, name=name), progress=True))
        stages = json.loads((where / "config.json").read_text())["timings_s"]
    stages = {**stages, "total_wall_s": round(wall, 1), "total_cpu_s": round(cpu, 1)}
    for k, v in stages.items():
        print(f"  {k:28s} {v:8.1f} s", flush=True)
    return stages


#: task-vector variants of the ``--study`` (name → task_vector_table keyword arguments)
TV_VARIANTS: dict[str, dict[str, Any]] = {
    "template_arrow": {"template": "arrow"},
    "template_qa": {"template": "qa"},
    "template_colon": {"template": "colon"},
    "template_io": {"template": "io"},
    "qa_bos_always": {"template": "qa", "bos": "always"},
    "qa_own_query_source": {"template": "qa", "dummy_query": False},
    "arrow_own_query_source": {"template": "arrow", "dummy_query": False},
}


def tv_study(model: Any, tasks: list[str], n: int, variants: list[str], out: Path) -> Any:
    """Task-vector accuracy by layer for each variant × task (what makes task vectors weak
    or strong); writes a CSV and prints best layer, accuracy and share of ICL accuracy."""
    import pandas as pd

    frames = []
    for name in variants:
        for t in tasks:
            kw = {"shots": 5, **TV_VARIANTS[name]}
            start = time.perf_counter()
            df = task_vector_table(model, load_task(t), n_prompts=n, **kw)
            df["variant"], df["seconds"] = name, round(time.perf_counter() - start, 1)
            frames.append(df)
            icl = float(df[df["condition"] == "icl"]["accuracy"].iloc[0])
            zs = float(df[df["condition"] == "zero_shot"]["accuracy"].iloc[0])
            best = {}
            for cond in ("task_vector", "mean_task_vector"):
                tv = df[df["condition"] == cond]
                best[cond] = tv.loc[tv["accuracy"].idxmax()]
            print(
                f"{name:24s} {t:16s} zero {zs:.2f}  icl {icl:.2f}  "
                + "  ".join(
                    f"{cond} {b['accuracy']:.2f} @ layer {int(b['layer'])}"
                    f" ({b['accuracy'] / max(icl, 1e-9):.0%} of ICL)"
                    for cond, b in best.items()
                )
                + f"  [{df['seconds'].iloc[0]:.0f} s]",
                flush=True,
            )
            pd.concat(frames, ignore_index=True).to_csv(out, index=False)
    return pd.concat(frames, ignore_index=True)


def _md(df: Any) -> str:
    from tvlens.io import to_markdown

    return to_markdown(df)


def summarize(run_dir: Path) -> str:
    """Markdown tables of a ``tvlens llm`` run directory (for the README)."""
    import pandas as pd

    from tvlens.io import read_csv

    a = run_dir / "analyses"
    out = []
    meta = json.loads((run_dir / "config.json").read_text())
    out.append(f"timings (s): {meta.get('timings_s')}")
    if (a / "llm_icl.csv").is_file():
        icl = read_csv(a / "llm_icl.csv")
        t = icl.pivot(index="task", columns="shots", values="accuracy")
        t.columns = [f"{c}-shot" for c in t.columns]
        t["majority"] = icl.groupby("task")["baseline"].first()
        out.append(_md(t.reset_index()))
    for name, cond in (
        ("llm_task_vectors", "task_vector"),
        ("llm_task_vectors", "mean_task_vector"),
        ("llm_function_vectors", "function_vector"),
    ):
        if not (a / f"{name}.csv").is_file():
            continue
        d = read_csv(a / f"{name}.csv")
        rows = []
        for task, g in d.groupby("task"):
            x = g[g["condition"] == cond]
            best = x.loc[x["accuracy"].idxmax()]
            icl = float(g[g["condition"] == "icl"]["accuracy"].iloc[0])
            zero = float(g[g["condition"] == "zero_shot"]["accuracy"].iloc[0])
            by = x.set_index("layer")["accuracy"]
            rows.append(
                {
                    "task": task,
                    "zero-shot": zero,
                    f"ICL ({int(g['shots'].iloc[0])} shots)": icl,
                    "best layer": int(best["layer"]),
                    "accuracy": float(best["accuracy"]),
                    "share of ICL": float(best["accuracy"]) / icl if icl else float("nan"),
                    "by layer (every 3rd)": " ".join(f"{v:.2f}" for v in by.iloc[::3]),
                }
            )
        out.append(f"{cond}:\n" + _md(pd.DataFrame(rows)))
    if (a / "llm_fv_heads.csv").is_file():
        h = read_csv(a / "llm_fv_heads.csv")
        rows = []
        for task, g in h.groupby("task"):
            top = g.sort_values("ie", ascending=False).head(5)
            rows.append(
                {
                    "task": task,
                    "top heads (layer.head: IE)": ", ".join(
                        f"{int(r.layer)}.{int(r.head)}: {r.ie:.3f}" for r in top.itertuples()
                    ),
                }
            )
        out.append(_md(pd.DataFrame(rows)))
    if (a / "llm_decodability.csv").is_file():
        d = read_csv(a / "llm_decodability.csv")
        d = d[d["method"] == "knn"]
        for group, g in d.groupby("group"):
            t = g.pivot_table(index="n_examples", columns="layer", values="td")
            keep = list(t.columns[::3]) + (
                [t.columns[-1]] if t.columns[-1] not in t.columns[::3] else []
            )
            t = t[keep]
            t.columns = [f"L{c}" for c in t.columns]
            t.insert(0, "chance", g.groupby("n_examples")["chance"].first())
            out.append(f"TD kNN {group} (rows: shots):\n" + _md(t.reset_index()))
    if (a / "llm_td_correlation.csv").is_file():
        c = read_csv(a / "llm_td_correlation.csv").dropna(subset=["r"])
        rows = []
        for group, g in c.groupby("group"):
            best = g.loc[g["r"].idxmax()]
            rows.append(
                {
                    "group": group,
                    "best layer": int(best["layer"]),
                    "r": float(best["r"]),
                    "R2": float(best["r2"]),
                    "p": float(best["p_value"]),
                    "n points": int(best["n_points"]),
                }
            )
        if rows:
            out.append("TD vs ICL accuracy:\n" + _md(pd.DataFrame(rows)))
    if (a / "llm_simplex.csv").is_file():
        sx = read_csv(a / "llm_simplex.csv")
        t = sx.pivot_table(index=["group", "layer"], columns="split", values="projection_r2")
        out.append("projection R² on the task-mean subspace:\n" + _md(t.reset_index().iloc[::3]))
    return "\n\n".join(out)


def figures_png(run_dir: Path, out_dir: Path, width: int = 1100) -> list[Path]:
    """The run's geometry figures (PCA by task, simplex weights of mixed prompts, subspace
    R²) as PNG files for the README, drawn by headless Chromium from the report's own
    plotly figures (:data:`tvlens.viz.llm.FIGURES`)."""
    from tvlens.io import read_csv
    from tvlens.viz.common import screenshot
    from tvlens.viz.llm import FIGURES

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("llm_pca", "llm_mixture", "llm_simplex"):
        csv = run_dir / "analyses" / f"{name}.csv"
        if not csv.is_file():
            continue
        fig = FIGURES[name](read_csv(csv))
        height = int(fig.layout.height or 450)
        fig.update_layout(width=width, height=height)
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "fig.html"
            page.write_text(fig.to_html(include_plotlyjs=True, full_html=True))
            png = out_dir / f"{run_dir.name}_{name}.png"
            screenshot(page, png, width + 20, height + 20)
        written.append(png)
        print(f"wrote {png}")
    return written


def fv_norm_check(model: Any, task_name: str, n: int, k: int, layers: list[int]) -> None:
    """Gemma: the function vector through the post-attention norm (tvlens) against the raw
    sum of head outputs before it (what tvlens did before), on the same heads: cosine, norm
    ratio, and zero-shot accuracy when each is added at ``layers``."""
    task = load_task(task_name)
    z = fv.query_head_outputs(model, task, 10, n)
    ie = fv.head_indirect_effects(model, task, z.mean(0), 10, max(4, n // 2))
    heads = fv.top_heads(ie, k)
    new = fv.function_vector(model, z, heads)
    raw = fv.head_outputs(model, z.mean(0))
    old = torch.stack([raw[layer, h] for layer, h in heads]).sum(0)
    cos = float(torch.nn.functional.cosine_similarity(new, old, dim=0))
    print(f"{task_name}: top heads {heads}")
    print(
        f"  |FV normed| {float(new.norm()):.2f}  |FV raw| {float(old.norm()):.2f}  cosine {cos:.3f}"
    )
    for name, vec in (("normed", new), ("raw", old)):
        sw = fv.function_vector_sweep(model, task, vec, layers, n)
        acc = sw[sw["condition"] == "function_vector"].set_index("layer")["accuracy"]
        print(
            f"  {name:7s} accuracy by layer "
            + " ".join(f"{int(i)}:{v:.2f}" for i, v in acc.items())
        )


def machine(threads: int) -> dict[str, Any]:
    info = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    for pkg in ("torch", "transformer-lens", "transformers"):
        info[pkg] = version(pkg)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=os.environ.get("TVLENS_SMOLLM2", "smollm2"),
        help="registered model name, GGUF file or HF folder (tvlens.llm.load)",
    )
    parser.add_argument("--task", default="antonym")
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 10, 20])
    parser.add_argument("--n", type=int, default=16, help="prompts per analysis")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--full-run", action="store_true", help="also time the default run")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="keep the --full-run's run directory here"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--study",
        type=Path,
        default=None,
        help="instead: write the task-vector variant study to this CSV",
    )
    parser.add_argument("--study-tasks", default="antonym,uppercase")
    parser.add_argument("--study-variants", default=",".join(TV_VARIANTS))
    parser.add_argument(
        "--summarize", type=Path, default=None, help="instead: print a run's tables"
    )
    parser.add_argument(
        "--figures", type=Path, default=None, help="instead: a run's geometry figures as PNG"
    )
    parser.add_argument(
        "--fv-norm-check",
        action="store_true",
        help="instead: Gemma FV through vs before the post-attention norm (--task, --n, --layers)",
    )
    parser.add_argument(
        "--dummy-diag",
        action="store_true",
        help="instead: reference task vectors at --layers with the share of patched "
        "predictions that are the dummy query's answer (--study-tasks, --n prompts)",
    )
    args = parser.parse_args(argv)
    if args.figures is not None:
        figures_png(args.figures, Path(__file__).resolve().parents[1] / "docs" / "figures")
        return 0
    if args.summarize is not None:
        print(summarize(args.summarize))
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.dummy_diag:
        from tvlens.llm import reference as ref
        from tvlens.llm.weights import resolve

        hf = ref.load_hf(resolve(args.model))
        for t in args.study_tasks.split(","):
            task = load_task(t)
            zero, source = (
                sample_prompts(task, args.n, 0),
                sample_prompts(task, args.n, 5, dummy_query=True),
            )
            df = ref.reference_task_vectors(hf, zero, source, args.layers)
            print(
                t, df[df["condition"] == "task_vector"].to_string(index=False), sep="\n", flush=True
            )
        return 0
    from tvlens.llm import load

    model = load(args.model, device="cpu", dtype="float32")
    if args.fv_norm_check:
        fv_norm_check(model, args.task, args.n, 10, args.layers)
        return 0
    if args.study is not None:
        tasks, variants = args.study_tasks.split(","), args.study_variants.split(",")
        tv_study(model, tasks, args.n, variants, args.study)
        return 0
    entry: dict[str, Any] = {
        "model": str(args.model),
        "task": args.task,
        "machine": machine(args.threads),
    }
    print(
        f"{args.model}: {model.cfg.n_layers} layers, load average {entry['machine']['load_average']}"
    )
    if not args.skip_compare:
        entry["compare"] = compare(model, args)
    if args.full_run:
        print("default tvlens llm run:")
        entry["full_run"] = full_run(model, str(args.model), args.run_dir)
    entry["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    key = Path(str(args.model)).name
    results[key] = {**results.get(key, {}), **entry}  # a --full-run keeps the comparison
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
