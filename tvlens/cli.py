"""The ``tvlens`` command.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``; this file only registers them. Only the module of the subcommand on the
command line is imported (none for ``tvlens --help``), so the CLI starts in well under a
second whatever the subcommands import.
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
    "sweep": ("tvlens.experiments.sweep_cmd", "run a sweep config (local, or on Ray)"),
    "check": ("tvlens.check_cmd", "verify a run directory's checkpoints, resume state, analyses"),
}


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one), if any."""
    return next((a for a in argv if a in COMMANDS), None)


#: ``tvlens --help``'s description (plain text: argparse prints it as written)
DESCRIPTION = (
    "Find and test task vectors in transformers (built on TransformerLens): train small "
    "models on task families with exact Bayesian references, analyse them, and write "
    "offline HTML reports. `tvlens COMMAND --help` describes each command."
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``tvlens`` parser; subcommand options are added only for the one in ``argv``.

    With ``argv=None`` every subcommand's options are added (imports them all).
    """
    parser = argparse.ArgumentParser(prog="tvlens", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else _chosen(argv)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if argv is not None and name != chosen:
            continue
        try:
            importlib.import_module(module).add_arguments(p)
        except Exception as e:  # noqa: BLE001 — one broken subcommand must not disable the rest
            p.set_defaults(_missing=f"{type(e).__name__}: {e}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from tvlens.registry import load_plugins

    load_plugins()  # $TVLENS_PLUGINS: plug-in analyses and families, before the flags
    args = build_parser(argv).parse_args(argv)
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
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        if args.verbose:
            raise
        print(f"tvlens {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # files are written atomically: nothing half-written remains
        print(
            f"tvlens {args.command}: interrupted (a training run continues with --resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
