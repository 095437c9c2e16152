"""Benchmark: tvlens.analyses.patching.patch_sweep against transformer_lens.patching.

One run times both of tvlens's patching engines, each on its own seeded, untrained model:

- ``native``: a 4-layer, d_model 128 TL-native model (a tvlens TaskModel, dice vocabulary),
  patched by the native engine (fused attention straight from the weights);
- ``llama``: a random 4-layer, d_model 256 Hugging Face Llama (4 heads, 2 KV heads, vocabulary
  of the shipped tasks' tokenizer) booted through ``TransformerBridge.boot_transformers``,
  patched by the bridge engine (the bridge's own blocks with the prefix's K/V cached).

At each sequence length it times, against TL on the same bridge and inputs:

- a full layer × position ``resid_pre`` sweep (``get_act_patch_resid_pre``), with the metric's
  read position declared (``metric_positions=-1``) and undeclared;
- a layer × head sweep over all positions (``get_act_patch_attn_head_out_all_pos``);

checks that both give the same numbers (max |difference|), records which shortcuts the engine
used, and measures the peak memory that tensors allocate during a native sweep as the number
of patched positions grows. The metric is the log-probability of token 0 at the last position,
averaged over the batch.

Usage::

    python benchmarks/patching.py                   # CPU, both models, lengths 64 and 256
    python benchmarks/patching.py --models llama    # the bridge engine only
    python benchmarks/patching.py --device cuda     # GPU figures
    python benchmarks/patching.py --lengths 64 --repeats 5

Results go to ``benchmarks/results/patching.json`` (one entry per device, the latest run).
Times are wall-clock and process CPU time; on a shared machine the CPU-time ratio is the more
reliable one (other processes do not inflate it).
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

os.environ.setdefault("TQDM_DISABLE", "1")  # TL's sweeps draw a progress bar per call

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import transformer_lens.patching as tlp  # noqa: E402

from tvlens.analyses.patching import patch_sweep  # noqa: E402
from tvlens.models.config import ModelConfig  # noqa: E402
from tvlens.models.model import TaskModel  # noqa: E402
from tvlens.tasks import make_family  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "patching.json"


def build(seq_len: int, n_ctx: int, device: str, seed: int = 0) -> tuple[TaskModel, Any]:
    """The native benchmark model: 4 layers, d_model 128, 4 heads, MLP 512, rotary, untrained."""
    family = make_family(name="dice", seq_len=seq_len)
    config = ModelConfig(n_layers=4, d_model=128, n_heads=4, d_mlp=512, n_ctx=n_ctx, seed=seed)
    model = TaskModel(config, family).to(device)
    model.bridge.eval()
    return model, family


def build_llama(device: str, seed: int = 0) -> Any:
    """The bridge benchmark model: a random HF Llama, 4 layers × 256, booted as a bridge."""
    from tvlens.llm import load
    from tvlens.llm.tiny import build_tiny_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="tvlens-bench-llama-"))
    build_tiny_checkpoint(folder, "llama", n_layers=4, d_model=256, n_heads=4, seed=seed)
    return load(str(folder), device=device)


def inputs(
    target: str, seq: int, batch: int, device: str, model: Any, family: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted prompts: dice sequences, or random token ids for the Llama."""
    if target == "native":
        return (
            family.sample("major", batch, seed=1).inputs.to(device),
            family.sample("major", batch, seed=2).inputs.to(device),
        )
    vocab = model.cfg.d_vocab
    g = torch.Generator().manual_seed(seq)
    clean = torch.randint(0, vocab, (batch, seq), generator=g)
    corrupted = torch.randint(0, vocab, (batch, seq), generator=g)
    return clean.to(device), corrupted.to(device)


def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].log_softmax(-1)[:, 0].mean()


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float, float]:
    """``fn()``'s result, wall seconds and process CPU seconds."""
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def best(fn: Callable[[], Any], device: str, repeats: int) -> tuple[Any, float, float]:
    """Best of ``repeats`` timings; a call slower than 20 s is timed once."""
    runs = [timed(fn, device)]
    while len(runs) < repeats and runs[0][1] < 20:
        runs.append(timed(fn, device))
    return runs[0][0], min(r[1] for r in runs), min(r[2] for r in runs)


def peak_tensor_bytes(fn: Callable[[], Any], device: str) -> int:
    """Peak bytes held by tensors allocated inside ``fn`` (above what existed before).

    CUDA: the allocator's peak. CPU: the torch profiler's memory events, whose running
    "Total Allocated" counts every allocation and free made inside the profiled region.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0)


def bench_length(target: str, seq: int, args: argparse.Namespace, llama: Any) -> dict[str, Any]:
    device = args.device
    if target == "native":
        model, family = build(seq, max(args.lengths), device)
        bridge = model.bridge
    else:
        model, family = llama, None
        bridge = llama
    clean, corrupted = inputs(target, seq, args.batch, device, bridge, family)
    out: dict[str, Any] = {"model": target, "seq_len": seq, "batch": args.batch}

    def tl_sweep(fn: Any, hook: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            _, cache = bridge.run_with_cache(clean, names_filter=lambda n: n.endswith(hook))
            return fn(bridge, corrupted, cache, metric)

        return run

    sweeps = {
        "resid_pre": (
            tl_sweep(tlp.get_act_patch_resid_pre, "hook_resid_pre"),
            {"point": "resid_pre", "metric_positions": -1},
            {"point": "resid_pre", "metric_positions": None},
        ),
        "heads": (
            tl_sweep(tlp.get_act_patch_attn_head_out_all_pos, "attn.hook_z"),
            {"point": "z", "by": "head", "metric_positions": -1},
            {"point": "z", "by": "head", "metric_positions": None},
        ),
    }
    with torch.no_grad():
        for name, (tl_fn, declared, undeclared) in sweeps.items():
            ref, tl_wall, tl_cpu = best(tl_fn, device, args.repeats)
            row: dict[str, Any] = {"tl_wall_s": tl_wall, "tl_cpu_s": tl_cpu}
            for label, kw in (("", declared), ("_undeclared", undeclared)):
                df, wall, cpu = best(
                    lambda kw=kw: patch_sweep(model, clean, corrupted, metric, **kw),
                    device,
                    args.repeats,
                )
                got = torch.tensor(df["value"].to_numpy()).view(ref.shape)
                if not label:
                    row["engine"] = _flags(df)
                row |= {
                    f"tvlens{label}_wall_s": wall,
                    f"tvlens{label}_cpu_s": cpu,
                    f"speedup{label}_wall": tl_wall / wall,
                    f"speedup{label}_cpu": tl_cpu / cpu if cpu > 0 else float("nan"),
                    f"max_abs_diff{label}": float((got - ref.cpu().double()).abs().max()),
                }
            out[name] = row
            print(
                f"{target:6s} [{row['engine']}] T={seq:4d} {name:9s} TL {tl_wall:7.2f}s  tvlens {row['tvlens_wall_s']:6.2f}s "
                f"(x{row['speedup_wall']:.2f} wall, x{row['speedup_cpu']:.2f} cpu; "
                f"undeclared metric x{row['speedup_undeclared_wall']:.2f})  "
                f"max|diff| {row['max_abs_diff']:.1e}",
                flush=True,
            )
    return out


def _flags(df: pd.DataFrame) -> str:
    """Which engine and shortcuts a sweep used (``bridge+suffix+stacked``)."""
    meta = {k: df[k].iloc[0] for k in ("engine", "suffix", "stacked") if k in df.columns}
    meta = meta or {k: df.attrs.get(k) for k in ("engine", "suffix", "stacked")}
    flags = [str(meta.get("engine"))] + [k for k in ("suffix", "stacked") if meta.get(k)]
    return "+".join(flags)


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak tensor memory of a layer-0 resid_pre sweep as the number of positions grows."""
    device, seq = args.device, max(args.lengths)
    model, family = build(seq, seq, device)
    clean = family.sample("major", args.batch, seed=1).inputs.to(device)
    corrupted = family.sample("major", args.batch, seed=2).inputs.to(device)
    cfg = model.config
    # The caches a sweep holds: resid_pre/mid/post (unpatched run) + resid_pre (source run)
    # + keys and values, each [batch, seq, d_model] per layer, float32.
    cache_bytes = (4 + 2) * cfg.n_layers * args.batch * seq * cfg.d_model * 4
    rows = []
    counts = sorted({1, seq // 32, seq // 8, seq // 2, seq} - {0})
    for n_pos in counts:
        positions = torch.linspace(0, seq - 1, n_pos).round().long().unique().tolist()
        peak = peak_tensor_bytes(
            lambda positions=positions: patch_sweep(
                model,
                clean,
                corrupted,
                metric,
                "resid_pre",
                layers=[0],
                positions=positions,
                metric_positions=-1,
            ),
            device,
        )
        rows.append({"positions": len(positions), "peak_bytes": peak})
        print(f"memory: {len(positions):4d} positions -> peak {peak / 2**20:7.2f} MiB", flush=True)
    tl_peak = peak_tensor_bytes(
        lambda: tlp.generic_activation_patch(
            model.bridge,
            corrupted,
            model.bridge.run_with_cache(
                clean, names_filter=lambda n: n == "blocks.0.hook_resid_pre"
            )[1],
            metric,
            patch_setter=tlp.layer_pos_patch_setter,
            activation_name="resid_pre",
            index_df=pd.DataFrame({"layer": [0] * 4, "pos": [0, 1, 2, 3]}),
        ),
        device,
    )
    print(f"memory: TL, 4 positions -> peak {tl_peak / 2**20:7.2f} MiB", flush=True)
    return {
        "seq_len": seq,
        "batch": args.batch,
        "cache_bytes_estimate": cache_bytes,
        "tvlens": rows,
        "tl_peak_bytes_4_positions": tl_peak,
    }


def machine(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformer_lens": version("transformer-lens"),
        "transformers": version("transformers"),
        "platform": platform.platform(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["native", "llama"], choices=["native", "llama"]
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, default=4, help="prompts per sweep")
    parser.add_argument(
        "--repeats", type=int, default=3, help="best of this many timings (one if > 20 s)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible.")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = machine(args.device)
    print(
        f"{info['cpu']} | {info.get('gpu', 'no GPU')} | torch {info['torch']} | "
        f"{info['torch_threads']} thread(s) | load {info['load_average']}",
        flush=True,
    )
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
    }
    llama = build_llama(args.device) if "llama" in args.models else None
    result["lengths"] = [
        bench_length(target, seq, args, llama) for target in args.models for seq in args.lengths
    ]
    if not args.no_memory:
        result["memory"] = bench_memory(args)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.device] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
