"""``tvlens report RUN_DIR [--out FILE]``: write the offline HTML report and print its path."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a tvlens run directory")
    parser.add_argument(
        "--out", type=Path, help="where to write the report (default: RUN_DIR/report.html)"
    )
    parser.add_argument(
        "--heads",
        metavar="L.H,...",
        help="recompute attention patterns for these heads, e.g. 0.1,3.0 (default: all heads, "
        "computed once when the run has checkpoints but no analyses/attention.csv)",
    )
    parser.add_argument(
        "--no-attention",
        action="store_true",
        help="do not compute attention patterns that the run lacks",
    )


def run(args: argparse.Namespace) -> int:
    from tvlens.analyses.attention import ensure_attention, parse_heads, write_attention
    from tvlens.viz.report import discover_results, report_kind, report_path, write_report

    kind = report_kind(args.run_dir)  # refused here, before attention is computed into it
    if kind == "run":
        _check_loadable(Path(args.run_dir))
    report_path(args.run_dir, args.out)
    notes = {}
    if args.heads:
        write_attention(args.run_dir, heads=parse_heads(args.heads))
    elif not args.no_attention and kind == "run":
        # the report only reads tables: compute the attention table here when it is missing
        note = ensure_attention(args.run_dir, discover_results(args.run_dir))
        if note:
            notes["tvlens.viz.attention"] = note
    path = write_report(args.run_dir, args.out, notes=notes)
    print(f"report: {path}")
    return 0


def _check_loadable(run_dir: Path) -> None:
    """Refuse a run that ``load_run`` refuses (the report reads what it would load)."""
    from tvlens.models.checkpoint import CheckpointError
    from tvlens.models.config import RunConfig
    from tvlens.models.train import list_checkpoints, load_run
    from tvlens.tasks.base import ConfigError
    from tvlens.viz.report import NotAReportFolderError

    try:
        RunConfig.load(run_dir / "config.json")
        if list_checkpoints(run_dir):  # a run stopped before its first checkpoint: curves
            load_run(run_dir)
    except (ConfigError, CheckpointError, KeyError, TypeError) as e:
        raise NotAReportFolderError(
            f"{run_dir} is not a tvlens run, sweep or LLM run that can be loaded: {e} "
            f"(`tvlens check {run_dir}` lists every problem)."
        ) from None
