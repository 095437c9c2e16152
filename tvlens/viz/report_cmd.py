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
    from tvlens.viz.attention import parse_heads, write_attention
    from tvlens.viz.report import write_report

    if args.heads:
        write_attention(args.run_dir, heads=parse_heads(args.heads))
    path = write_report(args.run_dir, args.out, attention=not args.no_attention)
    print(f"report: {path}")
    return 0
