"""What every run-level analysis driver shares: where its tables go and how they are saved.

The contract (see :mod:`tvlens.analyses.registry`): each ``tvlens/analyses/<name>.py`` holds
pure functions that return DataFrames and one driver
``analyse_<name>(run, out_dir=None, *, seed=0, **options) -> dict[str, DataFrame]`` that runs
them on a trained :class:`~tvlens.models.Run` and writes every table it returns to
``out_dir/<table>.csv`` (default ``RUN_DIR/analyses``), where the report finds them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tvlens.io import save_csv

log = logging.getLogger(__name__)

ANALYSES_DIR = "analyses"


def analyses_dir(run: Any, out_dir: Path | str | None = None) -> Path:
    """``out_dir``, or the run's own ``analyses/`` directory."""
    return Path(out_dir) if out_dir is not None else Path(run.dir) / ANALYSES_DIR


def run_source(run: Any) -> dict | None:
    """Where a run's results come from (step and checkpoint hash), for provenance records."""
    source = getattr(run, "source", None)
    return source if isinstance(source, dict) else None


def save_analysis(
    df: pd.DataFrame, out_dir: Path | str, name: str, source: dict | None = None
) -> Path:
    """Write ``df`` to ``out_dir/<name>.csv`` atomically (the report reads these);
    ``source`` (:func:`run_source`) goes to the directory's provenance record."""
    path = save_csv(Path(out_dir) / f"{name}.csv", df, source=source)
    log.info("wrote %s", path)
    return path


def save_tables(
    tables: Mapping[str, pd.DataFrame], out_dir: Path | str, source: dict | None = None
) -> list[Path]:
    """Write every table of a driver's result; returns the paths in order."""
    return [save_analysis(df, out_dir, name, source) for name, df in tables.items()]
