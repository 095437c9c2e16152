"""The ``tvlens`` command.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``; this file only registers them, so importing the CLI stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tvlens.experiments.demo", "train + analyse the default dice model and report"),
    "train": ("tvlens.experiments.train_cmd", "train a model on a task family"),
    "experiment": ("tvlens.experiments.registry", "run a named experiment (two-modes, ...)"),
    "llm": ("tvlens.llm.cli", "task vectors and decodability on a pretrained LLM"),
    "report": ("tvlens.viz.report_cmd", "write an offline HTML report for a run directory"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvlens", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except Exception as e:  # noqa: BLE001 — one broken subcommand must not disable the rest
            p.set_defaults(_missing=f"{type(e).__name__}: {e}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "_missing", None):
        print(
            f"tvlens {args.command}: not available: importing {args._module} failed "
            f"({args._missing}). Reinstall tvlens (pip install -e .) or report the error.",
            file=sys.stderr,
        )
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, KeyError, FileExistsError, FileNotFoundError, RuntimeError) as e:
        if args.verbose:
            raise
        print(f"tvlens {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
