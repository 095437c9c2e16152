"""Benchmark: patch_sweep on pretrained bridges against TransformerLens, nnsight and pyvene.

Models (``--models``):

- ``llama``: a random 4-layer, d_model 256 Hugging Face Llama (4 heads, 2 KV heads), as in
  ``benchmarks/patching.py``;
- ``smollm2``: the real SmolLM2-135M (30 layers, d_model 576, 9 heads, vocabulary 49,152),
  installed by ``tvlens llm get smollm2``.

For each model and sequence length (random token ids, batch 4; with ``--shared-prefix f`` the
clean and corrupted prompts agree on their first ``f·T`` positions, as corrupted-prompt
designs do, and the floors count only what changes) it runs, each method in a
fresh subprocess so that its peak memory is its own:

- a ``resid_pre`` layer × position sweep over a grid (Llama: all 4 layers; SmolLM2: layers
  0, 6, 12, 18, 24; both: 8 positions ``T/16 + k·T/8``), the metric reading the last
  position (``metric_positions=-1`` for tvlens). Peers: TL's ``generic_activation_patch``
  with ``layer_pos_patch_setter`` (what ``get_act_patch_resid_pre`` runs, on the grid);
  nnsight with one batched trace per layer (one ``invoke`` per patch, the documented way to
  batch interventions); pyvene with one ``IntervenableModel`` per layer and the clean
  activations passed in (``source_representations``);
- a head sweep (``attn.hook_z``, all positions; Llama: every layer, SmolLM2: layers 0, 10, 20)
  against TL's ``layer_head_vector_patch_setter``.

It prints CPU and wall seconds, tvlens's speed-up over each peer (CPU time), each method's
cost per patch in forwards of the batch (its CPU time / patches / one plain forward's CPU
time) beside the floor (the mean over the grid of ``(L - l)/L · (T - p)/T``: the share of a
forward a patch at layer ``l``, position ``p`` cannot avoid; for heads, the mean of
``(L - l - 1 + m)/L``, the patched layer's MLP, of share ``m`` of a layer's matmuls, and every
later layer, which an exact head patch at all positions must rerun), the peak resident memory above
the same process's clean forward (``ru_maxrss``), and the largest |difference| from TL.
tvlens is timed twice in its process: the first sweep on a freshly loaded model (it checks
the engine's shortcuts) and a second one (the cached verdict): the ratios use the second.

``--attribution`` compares ``method="attribution"`` with exact patching on SmolLM2 over IOI
prompts (the full layer × position ``resid_pre`` grid and every head): Spearman rank
correlation and top-k overlap of the effects, and the speed-up; it also times TL's own sweeps
of the same cells (``get_act_patch_resid_pre``, ``get_act_patch_attn_head_out_all_pos``)
against the exact ones, on prompts that differ at one token as IOI's do.

Usage::

    python benchmarks/patching_llm.py                               # both models, T = 64, 256
    python benchmarks/patching_llm.py --models smollm2 --lengths 64
    python benchmarks/patching_llm.py --peers tl --no-heads         # TL only
    python benchmarks/patching_llm.py --sweeps heads                # the head sweeps only
    python benchmarks/patching_llm.py --sweeps heads --shared-prefix 0.5  # prompts agree on half
    python benchmarks/patching_llm.py --models --attribution --one-patch  # those only
    python benchmarks/patching_llm.py --device cuda

nnsight and pyvene are optional (``pip install -c constraints.txt -e ".[bench]"``); a
missing peer is skipped. Results go to ``benchmarks/results/patching_llm.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "patching_llm.json"
BATCH = 4
PEERS = ("tl", "nnsight", "pyvene")


# =========================================================================== the setting
def load_model(name: str, device: str) -> Any:
    from tvlens.llm import load

    if name == "smollm2":
        return load("smollm2", device=device)
    from tvlens.llm.tiny import build_tiny_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="tvlens-bench-llama-"))
    build_tiny_checkpoint(folder, "llama", n_layers=4, d_model=256, n_heads=4, seed=0)
    return load(str(folder), device=device)


def grid(model: str, n_layers: int, seq: int) -> tuple[list[int], list[int]]:
    layers = list(range(n_layers)) if model == "llama" else list(range(0, n_layers, 6))
    positions = [seq // 16 + k * seq // 8 for k in range(8)]
    return layers, positions


def head_layers(model: str, n_layers: int) -> list[int]:
    return list(range(n_layers)) if model == "llama" else [0, 10, 20]


def prompts(
    bridge: Any, seq: int, device: str, shared: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random clean and corrupted token ids; the first ``shared`` of the positions are the same
    in both (a shared prefix, as corrupted-prompt designs have)."""
    g = torch.Generator().manual_seed(seq)
    vocab = bridge.cfg.d_vocab
    clean = torch.randint(0, vocab, (BATCH, seq), generator=g)
    corrupted = torch.randint(0, vocab, (BATCH, seq), generator=g)
    corrupted[:, : int(shared * seq)] = clean[:, : int(shared * seq)]
    return clean.to(device), corrupted.to(device)


def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].log_softmax(-1)[:, 0].mean()


def floor(
    layers: list[int], positions: list[int], n_layers: int, seq: int, shared: int = 0
) -> float:
    """Mean over the grid of ``(L - l)/L · (T - p)/T`` (0 inside a shared prefix: no change)."""
    shares = [
        (n_layers - lay) / n_layers * (seq - p) / seq if p >= shared else 0.0
        for lay in layers
        for p in positions
    ]
    return sum(shares) / len(shares)


def mlp_share(cfg: Any) -> float:
    """The MLP's share of a layer's matmul work per row (the rest: Q, K, V, O)."""
    d, d_head = cfg.d_model, cfg.d_head
    kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    attn = 2 * d * cfg.n_heads * d_head + 2 * d * kv_heads * d_head
    mlp = 3 * d * cfg.d_mlp
    return mlp / (attn + mlp)


def head_floor(layers: list[int], n_layers: int, share: float, suffix: float = 1.0) -> float:
    """The share of the layers' work an exact all-position head patch cannot avoid: the
    patched layer's MLP and every later layer (the last layer: the read row only, ~0), over
    the ``suffix`` share of positions from the first one where the prompts differ."""
    shares = [
        (n_layers - lay - 1 + share) / n_layers if lay < n_layers - 1 else 0.0 for lay in layers
    ]
    return suffix * sum(shares) / len(shares)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Any, device: str) -> tuple[Any, float, float]:
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, time.perf_counter() - wall, time.process_time() - cpu


# =========================================================================== the methods
def run_tvlens(bridge, clean, corrupted, job) -> list[float]:
    from tvlens.analyses.patching import patch_sweep

    if job["sweep"] == "heads":
        kw = {"point": "z", "by": "head", "layers": job["layers"]}
    else:
        kw = {"point": "resid_pre", "layers": job["layers"], "positions": job["positions"]}
    df = patch_sweep(bridge, clean, corrupted, metric, metric_positions=-1, **kw)
    return df["value"].tolist()


def run_tl(bridge, clean, corrupted, job) -> list[float]:
    import pandas as pd
    import transformer_lens.patching as tlp

    layers = job["layers"]
    if job["sweep"] == "heads":
        names = {f"blocks.{lay}.attn.hook_z" for lay in layers}
        heads = range(bridge.cfg.n_heads)
        index = pd.DataFrame([(lay, h) for lay in layers for h in heads], columns=["layer", "head"])
        setter, act = tlp.layer_head_vector_patch_setter, "z"
    else:
        names = {f"blocks.{lay}.hook_resid_pre" for lay in layers}
        cells = [(lay, p) for lay in layers for p in job["positions"]]
        index = pd.DataFrame(cells, columns=["layer", "pos"])
        setter, act = tlp.layer_pos_patch_setter, "resid_pre"
    with torch.no_grad():  # as TL's demos run it (torch.set_grad_enabled(False))
        _, cache = bridge.run_with_cache(clean, names_filter=names.__contains__)
        out = tlp.generic_activation_patch(
            bridge,
            corrupted,
            cache,
            metric,
            patch_setter=setter,
            activation_name=act,
            index_df=index,
        )
    return out.flatten().tolist()


def run_nnsight(bridge, clean, corrupted, job) -> list[float]:
    from nnsight import LanguageModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel's deprecation notice
        model = LanguageModel(bridge.original_model, tokenizer=bridge.tokenizer)
    inner = model.model

    def resid_pre(layer: int):  # the input of block ``layer``
        return inner.embed_tokens.output if layer == 0 else inner.layers[layer - 1].output

    layers, positions = job["layers"], job["positions"]
    with torch.no_grad():
        with model.trace(clean):
            saved = list().save()
            for layer in layers:
                saved.append(resid_pre(layer))
        values: list[float] = []
        for layer, clean_act in zip(layers, saved, strict=True):
            with model.trace() as tracer:
                outs = list().save()
                for p in positions:
                    with tracer.invoke(corrupted):
                        resid_pre(layer)[:, p] = clean_act[:, p]
                        outs.append(model.output.logits[:, -1])
            values += [float(metric(o[:, None])) for o in outs]
    return values


def run_pyvene(bridge, clean, corrupted, job) -> list[float]:
    import pyvene as pv

    hf = bridge.original_model
    with torch.no_grad():
        states = hf(clean, output_hidden_states=True).hidden_states  # [l]: input of block l
    values: list[float] = []
    for layer in job["layers"]:
        config = pv.IntervenableConfig(
            [{"layer": layer, "component": "block_input", "unit": "pos", "max_number_of_units": 1}],
            intervention_types=pv.VanillaIntervention,
        )
        model = pv.IntervenableModel(config, model=hf)
        for p in job["positions"]:
            with torch.no_grad():
                _, out = model(
                    {"input_ids": corrupted},
                    source_representations=states[layer][:, p : p + 1],
                    unit_locations={"base": [[[p]] * BATCH]},
                )
            values.append(float(metric(out.logits)))
    return values


METHODS = {"tvlens": run_tvlens, "tl": run_tl, "nnsight": run_nnsight, "pyvene": run_pyvene}


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One method on one setting, in this process: times, memory and the values."""
    torch.set_num_threads(job["threads"])
    device = job["device"]
    bridge = load_model(job["model"], device)
    clean, corrupted = prompts(bridge, job["seq"], device, job.get("shared_prefix", 0.0))
    with torch.no_grad():
        bridge(clean)
        _, fwd_wall, fwd_cpu = timed(lambda: bridge(clean), device)
    base_rss = rss_mib()
    fn = METHODS[job["method"]]
    out: dict[str, Any] = {"fwd_cpu_s": fwd_cpu, "fwd_wall_s": fwd_wall}
    out["mlp_share"] = mlp_share(bridge.cfg)
    if job["method"] == "tvlens":
        _, out["first_wall_s"], out["first_cpu_s"] = timed(
            lambda: fn(bridge, clean, corrupted, job), device
        )
    values, out["wall_s"], out["cpu_s"] = timed(lambda: fn(bridge, clean, corrupted, job), device)
    out["peak_above_clean_mib"] = rss_mib() - base_rss
    if device == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["values"] = values
    return out


def spawn(job: dict[str, Any]) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"    {job['method']}: failed ({' | '.join(tail)})", flush=True)
        return None
    return json.loads(lines[-1])


# =========================================================================== comparisons
def compare(model: str, seq: int, sweep: str, args: argparse.Namespace) -> dict[str, Any]:
    n_layers = 4 if model == "llama" else 30
    layers, positions = grid(model, n_layers, seq)
    if sweep == "heads":
        layers = head_layers(model, n_layers)
    base = {"model": model, "seq": seq, "sweep": sweep, "device": args.device}
    base["shared_prefix"] = args.shared_prefix
    base |= {"threads": args.threads, "layers": layers, "positions": positions}
    methods = ["tvlens", *(p for p in args.peers if sweep == "resid_pre" or p == "tl")]
    results = {m: spawn(base | {"method": m}) for m in methods}
    n_patches = len(next(r for r in results.values() if r)["values"])
    if sweep == "resid_pre":
        fl = floor(layers, positions, n_layers, seq, int(args.shared_prefix * seq))
    else:
        share = next(r for r in results.values() if r)["mlp_share"]
        suffix = (seq - int(args.shared_prefix * seq)) / seq
        fl = head_floor(layers, n_layers, share, suffix)
    tl_values = torch.tensor(results["tl"]["values"]) if results.get("tl") else None
    ours = results["tvlens"]
    row: dict[str, Any] = {"model": model, "seq": seq, "sweep": sweep, "patches": n_patches}
    row["shared_prefix"] = args.shared_prefix
    row["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    row["load_average"] = list(os.getloadavg())
    row["floor_fwd_per_patch"] = fl
    shared = f", first {args.shared_prefix:.0%} of positions shared" if args.shared_prefix else ""
    print(f"{model} T={seq} {sweep}{shared}: {n_patches} patches, floor {fl:.3f} fwd/patch")
    for m, r in results.items():
        if r is None:
            continue
        per_patch = r["cpu_s"] / n_patches / r["fwd_cpu_s"]
        entry = {k: v for k, v in r.items() if k != "values"} | {"fwd_per_patch": per_patch}
        if tl_values is not None:
            entry["max_abs_diff_vs_tl"] = float((torch.tensor(r["values"]) - tl_values).abs().max())
        if m != "tvlens" and ours:
            entry["tvlens_speedup_cpu"] = r["cpu_s"] / ours["cpu_s"]
            entry["tvlens_speedup_wall"] = r["wall_s"] / ours["wall_s"]
            # costs per patch in forwards, each over its own process's forward: steadier when
            # the machine's load shifts between the processes
            ours_fwd = ours["cpu_s"] / n_patches / ours["fwd_cpu_s"]
            entry["tvlens_speedup_fwd"] = per_patch / ours_fwd
        row[m] = entry
        extra = ""
        if m == "tvlens":
            extra = f" (first sweep {r['first_cpu_s']:.2f}s)"
        else:
            extra = (
                f"  tvlens x{entry.get('tvlens_speedup_cpu', float('nan')):.2f} cpu "
                f"(x{entry.get('tvlens_speedup_fwd', float('nan')):.2f} per forward)"
            )
        print(
            f"    {m:8s} cpu {r['cpu_s']:8.2f}s wall {r['wall_s']:8.2f}s  "
            f"{per_patch:.3f} fwd/patch  peak +{r['peak_above_clean_mib']:7.1f} MiB  "
            f"max|diff| {entry.get('max_abs_diff_vs_tl', float('nan')):.1e}{extra}",
            flush=True,
        )
    return row


# =========================================================================== attribution
IOI_NAMES = [(" Mary", " John"), (" Alice", " Bob"), (" Sarah", " Tom"), (" Anna", " James")]
IOI = "When{A} and{B} went to the store,{S} gave a drink to"


def attribution(args: argparse.Namespace) -> dict[str, Any]:
    """Attribution vs exact patching on SmolLM2: IOI prompts (every layer × position, every
    head), and every head on random prompts of 64 tokens (no shared prefix to skip)."""
    torch.set_num_threads(args.threads)
    bridge = load_model("smollm2", args.device)
    tok = bridge.tokenizer

    def ids(subject: int) -> torch.Tensor:
        texts = [IOI.format(A=a, B=b, S=(b, a)[subject]) for a, b in IOI_NAMES]
        return torch.tensor([tok(t)["input_ids"] for t in texts], device=args.device)

    clean, corrupted = ids(0), ids(1)  # clean: B gave to (answer A); corrupted: A gave to
    answers = torch.tensor(
        [[tok(a)["input_ids"][-1], tok(b)["input_ids"][-1]] for a, b in IOI_NAMES]
    )

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        rows = torch.arange(last.shape[0])
        return (last[rows, answers[:, 0]] - last[rows, answers[:, 1]]).mean()

    out: dict[str, Any] = {"prompts": len(IOI_NAMES), "seq": clean.shape[1]}
    print(f"attribution: SmolLM2, IOI, {len(IOI_NAMES)} prompts of {clean.shape[1]} tokens")
    for point, by in (("resid_pre", "pos"), ("z", "head")):
        out[point] = attribution_vs_exact(bridge, clean, corrupted, logit_diff, point, by, args)
    # a sweep the exact engine cannot shorten: prompts that differ from the first token on
    seq = 64
    clean, corrupted = prompts(bridge, seq, args.device)
    print(f"attribution: SmolLM2, random tokens, batch {BATCH} × {seq}, every head")
    out["random_heads"] = {"seq": seq} | attribution_vs_exact(
        bridge, clean, corrupted, metric, "z", "head", args, with_tl=False
    )
    return out


def attribution_vs_exact(
    bridge: Any,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    metric_fn: Any,
    point: str,
    by: str,
    args: argparse.Namespace,
    with_tl: bool = True,
) -> dict[str, Any]:
    """Exact and attribution sweeps of ``point`` (and TL's, ``with_tl``): agreement and times."""
    import numpy as np
    from scipy.stats import spearmanr

    from tvlens.analyses.patching import patch_sweep

    kw = {"point": point, "by": by, "metric_positions": -1}
    patch_sweep(bridge, clean, corrupted, metric_fn, layers=[0], **kw)  # warm the checks
    exact, e_wall, e_cpu = timed(
        lambda: patch_sweep(bridge, clean, corrupted, metric_fn, **kw), args.device
    )
    t_cpu, tl_diff = float("nan"), float("nan")
    if with_tl:
        with torch.no_grad():  # TL on the same prompts, the way its demos run it
            tl, _, t_cpu = timed(
                lambda: tl_sweep(bridge, clean, corrupted, metric_fn, point), args.device
            )
        tl_diff = float((torch.tensor(exact["value"].to_numpy()) - tl.flatten().cpu()).abs().max())
    kw.pop("metric_positions")
    approx, a_wall, a_cpu = timed(
        lambda: patch_sweep(bridge, clean, corrupted, metric_fn, method="attribution", **kw),
        args.device,
    )
    e = (exact["value"] - exact["corrupted_value"]).to_numpy()
    a = (approx["value"] - approx["corrupted_value"]).to_numpy()
    rho = float(spearmanr(e, a).statistic)
    # cells a patch can change (clean and corrupted differ there): the rest are exact
    # zeros in both methods and would inflate the rank correlation
    live = (e != 0) | (a != 0)
    rho_live = float(spearmanr(e[live], a[live]).statistic)
    tops = {}
    for k in (10, 20, 50):
        top_e = set(abs(e).argsort()[-k:])
        top_a = set(abs(a).argsort()[-k:])
        tops[f"top{k}_overlap"] = len(top_e & top_a) / k
    pearson = float(np.corrcoef(e, a)[0, 1])
    res = {
        "cells": len(e),
        "live_cells": int(live.sum()),
        "spearman": rho,
        "spearman_live": rho_live,
        "pearson": pearson,
        **tops,
        "exact_cpu_s": e_cpu,
        "tl_cpu_s": t_cpu,
        "exact_vs_tl_cpu": t_cpu / e_cpu,
        "exact_max_abs_diff_vs_tl": tl_diff,
        "attribution_cpu_s": a_cpu,
        "speedup_cpu": e_cpu / a_cpu,
        "speedup_wall": e_wall / a_wall,
        "recovered_gap": float(exact["clean_value"].iloc[0] - exact["corrupted_value"].iloc[0]),
    }
    tl_text = f"; TL {t_cpu:.1f}s cpu (exact x{t_cpu / e_cpu:.2f} TL, max|diff| {tl_diff:.1e})"
    print(
        f"    {point:9s} {len(e)} cells: Spearman {rho:.3f} ({rho_live:.3f} over the "
        f"{int(live.sum())} cells a patch changes), Pearson {pearson:.3f}, "
        f"top-10/20/50 overlap {tops['top10_overlap']:.2f}/{tops['top20_overlap']:.2f}/"
        f"{tops['top50_overlap']:.2f}; exact {e_cpu:.1f}s cpu, attribution {a_cpu:.2f}s "
        f"(x{e_cpu / a_cpu:.1f}){tl_text if with_tl else ''}",
        flush=True,
    )
    return res


def tl_sweep(bridge: Any, clean: torch.Tensor, corrupted: torch.Tensor, metric: Any, point: str):
    """TL's own sweep of ``point`` (every layer × position, or every head at all positions)."""
    import transformer_lens.patching as tlp

    name = "hook_resid_pre" if point == "resid_pre" else "attn.hook_z"
    _, cache = bridge.run_with_cache(clean, names_filter=lambda n: n.endswith(name))
    if point == "resid_pre":
        return tlp.get_act_patch_resid_pre(bridge, corrupted, cache, metric)
    return tlp.get_act_patch_attn_head_out_all_pos(bridge, corrupted, cache, metric)


def one_patch(args: argparse.Namespace) -> dict[str, Any]:
    """The fixed cost: a one-patch sweep on a freshly loaded SmolLM2 (the shortcuts checked)
    and again (the cached verdict), in forwards of the batch; T = 64."""
    from tvlens.analyses.patching import patch_sweep

    torch.set_num_threads(args.threads)
    bridge = load_model("smollm2", args.device)
    clean, corrupted = prompts(bridge, 64, args.device)
    with torch.no_grad():
        bridge(clean)
        _, _, fwd = timed(lambda: bridge(clean), args.device)

    def sweep() -> Any:
        return patch_sweep(
            bridge, clean, corrupted, metric, layers=[5], positions=[10], metric_positions=-1
        )

    out = {"fwd_cpu_s": fwd}
    for label in ("first", "cached"):
        _, _, cpu = timed(sweep, args.device)
        out[f"{label}_fwd"] = cpu / fwd
    # the patch itself: layers 5.. of 30 from position 10 of 64
    out["patch_floor_fwd"] = 25 / 30 * 54 / 64
    print(
        f"one patch on SmolLM2, T=64: first sweep {out['first_fwd']:.2f} forwards, then "
        f"{out['cached_fwd']:.2f} (the two cached runs + the patch's {out['patch_floor_fwd']:.2f})",
        flush=True,
    )
    return out


# =========================================================================== main
def machine(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from patching import machine as describe

    info = describe(args.device)
    info["torch_threads"] = args.threads
    for pkg in ("nnsight", "pyvene"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - optional peers
            info[pkg] = None
    return info


def setting(row: dict[str, Any]) -> tuple:
    """What a comparison row measured: a later run of the same setting replaces it."""
    return row["model"], row["seq"], row["sweep"], row.get("shared_prefix", 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--models", nargs="*", default=["llama", "smollm2"], choices=["llama", "smollm2"]
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument(
        "--sweeps", nargs="+", default=["resid_pre", "heads"], choices=["resid_pre", "heads"]
    )
    parser.add_argument("--no-heads", action="store_true", help="skip the head sweeps")
    parser.add_argument(
        "--shared-prefix",
        type=float,
        default=0.0,
        help="share of positions (from the start) where clean and corrupted prompts agree",
    )
    parser.add_argument("--attribution", action="store_true", help="attribution vs exact")
    parser.add_argument("--one-patch", action="store_true", help="a one-patch sweep's cost")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible.")
    for peer in ("nnsight", "pyvene"):
        if peer in args.peers:
            try:
                __import__(peer)
            except ImportError:
                print(f"{peer} is not installed (pip install -e '.[bench]'); skipped")
                args.peers.remove(peer)
    info = machine(args)
    print(
        f"{info['cpu']} | {info.get('gpu', 'no GPU')} | torch {info['torch']} | "
        f"{args.threads} thread(s) | load {info['load_average']} | nnsight {info['nnsight']} "
        f"| pyvene {info['pyvene']}",
        flush=True,
    )
    stamp = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": info}
    sections: dict[str, Any] = {}
    rows = [
        compare(model, seq, sweep, args)
        for model in args.models
        for seq in args.lengths
        for sweep in args.sweeps
        if not (args.no_heads and sweep == "heads")
    ]
    if rows:
        sections["comparisons"] = {"rows": rows}
    if args.one_patch:
        sections["one_patch"] = one_patch(args)
    if args.attribution:
        sections["attribution"] = attribution(args)
    info["load_average_end"] = list(os.getloadavg())
    print(f"load at the end: {info['load_average_end']}")
    # each section keeps its own date and machine: a partial run replaces only its sections
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    entry = results.get(args.device, {})
    if "rows" in entry:  # the layout before sections
        entry = {
            "comparisons": {"rows": entry["rows"], **{k: entry[k] for k in ("date", "machine")}}
        }
    for name, section in sections.items():
        if name == "comparisons":  # rows of other settings stay, each with its own stamp
            fresh = {setting(r) for r in section["rows"]}
            kept = [r for r in entry.get(name, {}).get("rows", []) if setting(r) not in fresh]
            section = {"rows": kept + section["rows"]}
        entry[name] = stamp | section
    results[args.device] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
