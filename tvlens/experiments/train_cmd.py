"""``tvlens train``: train one model from a family name or a config JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvlens.models import RunConfig, train
from tvlens.models.evaluate import default_bands, reference_table
from tvlens.tasks import FAMILIES


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that trains: family, mixture and sizes."""
    parser.add_argument("--family", default="dice", help=f"one of {sorted(FAMILIES)}")
    parser.add_argument("--config", type=Path, help="a config JSON (overrides the flags below)")
    parser.add_argument("--k", type=int, help="2**k minor tasks; -1 for none")
    parser.add_argument("--steps", type=int, help="training steps")
    parser.add_argument("--layers", type=int, help="number of layers")
    parser.add_argument("--d-model", type=int, help="residual width")
    parser.add_argument("--seed", type=int, help="seed for model init and data")
    parser.add_argument("--device", help="torch device, e.g. cuda")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="any config field, e.g. --set model.n_heads=2 --set train.lr=1e-3",
    )


def config_from_args(args: argparse.Namespace, **defaults: dict) -> RunConfig:
    """A RunConfig from ``--config`` or ``--family`` plus flag and ``--set`` overrides."""
    if args.config:
        base = json.loads(Path(args.config).read_text())
    else:
        base = RunConfig.for_family(args.family, **defaults).to_dict()
    flags = {
        ("family", "k"): args.k,
        ("train", "steps"): args.steps,
        ("model", "n_layers"): args.layers,
        ("model", "d_model"): args.d_model,
        ("model", "seed"): args.seed,
        ("train", "seed"): args.seed,
        ("family", "seed"): args.seed,
        ("train", "device"): args.device,
    }
    for (section, field), value in flags.items():
        if value is not None:
            base[section][field] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or section not in base:
            raise ValueError(
                f"--set {item!r} must look like SECTION.FIELD=VALUE with SECTION one of "
                f"{sorted(base)}."
            )
        try:
            base[section][field] = json.loads(value)
        except json.JSONDecodeError:
            base[section][field] = value
    return RunConfig.from_dict(base)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/train"), help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")


def run(args: argparse.Namespace) -> int:
    if args.resume and not args.config and (args.out / "config.json").exists():
        args.config = args.out / "config.json"
    config = config_from_args(args)
    result = train(config, args.out, resume=args.resume)
    table = reference_table(
        result.model, result.family, result.eval_batches(), default_bands(config.family.seq_len)
    )
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"run directory: {args.out}")
    return 0
