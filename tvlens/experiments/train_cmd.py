"""``tvlens train``: train one model from a family name or a config JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvlens.models import RunConfig, train
from tvlens.models.config import load_config_dict
from tvlens.models.evaluate import default_bands, reference_table
from tvlens.tasks import FAMILIES
from tvlens.tasks.base import ConfigError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that trains: family, mixture and sizes."""
    parser.add_argument("--family", default="dice", help=f"one of {sorted(FAMILIES)}")
    parser.add_argument(
        "--config", type=Path, help="a config JSON; the flags below and --set override its values"
    )
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
    """A RunConfig from ``--config`` or ``--family`` plus flag and ``--set`` overrides.

    Every value is type- and range-checked before anything runs; errors name the file or
    the ``SECTION.FIELD`` and the fix (:class:`~tvlens.tasks.base.ConfigError`).
    """
    if args.config:
        base = load_config_dict(args.config)
        where = f"--config {args.config}"
    else:
        if args.family not in FAMILIES:
            raise ConfigError(
                f"--family {args.family!r} is not a known task family; choose one of "
                f"{sorted(FAMILIES)}."
            )
        base = RunConfig.for_family(args.family, **defaults).to_dict()
        where = f"--family {args.family}"
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
            _section(base, section, where)[field] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or section not in SECTIONS or not field:
            raise ConfigError(
                f"--set {item!r} must look like SECTION.FIELD=VALUE with SECTION one of "
                f"{list(SECTIONS)}, e.g. --set model.n_heads=2."
            )
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a bare word such as cuda or rotary is a string
        _section(base, section, where)[field] = parsed
    try:
        return RunConfig.from_dict(base)
    except TypeError as e:  # a family's own config refused a field
        raise ConfigError(f"{where}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if args.config else str(e)) from None


SECTIONS = ("family", "model", "train")


def _section(base: dict, section: str, where: str) -> dict:
    sec = base.setdefault(section, {})
    if not isinstance(sec, dict):
        raise ConfigError(
            f"{where}: config section {section!r} must be a JSON object of fields; got "
            f"{'null' if sec is None else type(sec).__name__}."
        )
    return sec


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
