"""``tvlens experiment NAME``: each experiment is a module with add_arguments / run."""

from __future__ import annotations

import argparse
import importlib

EXPERIMENTS: dict[str, tuple[str, str]] = {
    "two-modes": (
        "tvlens.experiments.two_modes",
        "retrieval vs learning: one model per k, every geometry analysis",
    ),
    "decodability": (
        "tvlens.experiments.decodability",
        "task decodability, its emergence over training, early vs late fine-tuning",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for name, (module, help_) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_experiment_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_experiment_missing=True)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_experiment_missing", False):
        raise RuntimeError(f"experiment {args.experiment!r} is not available in this build.")
    return int(importlib.import_module(args._experiment_module).run(args) or 0)
