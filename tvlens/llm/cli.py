"""``tvlens llm``: task vectors, function vectors and decodability on a pretrained LM.

Example (a GPU and hub access, or a local model directory)::

    tvlens llm --model google/gemma-2-2b --task antonym --out runs/gemma2b_antonym
    tvlens report runs/gemma2b_antonym
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvlens.llm.config import ANALYSES, LLMConfig


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints") from e


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LLMConfig()
    parser.add_argument("--model", required=True, help="hub id (google/gemma-2-2b) or local dir")
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
    parser.add_argument("--template", default=d.template, help="arrow, qa, colon or io")
    parser.add_argument("--mode", default=d.mode, choices=["first_token", "exact"])
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", help="one device, e.g. cuda:0 or cpu")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--n-devices", type=int, help="split the model over N GPUs")
    parser.add_argument("--device-map", help="HF device_map: auto, balanced, or a JSON dict")
    parser.add_argument("--report", action="store_true", help="write report.html afterwards")
    parser.add_argument("--progress", action="store_true", help="progress bars")


def run(args: argparse.Namespace) -> int:
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
