"""One analysis contract and one registry: drivers, tables and figures agree."""

from __future__ import annotations

import importlib
import inspect

import pandas as pd
import pytest
from tiny import tiny_config

from tvlens import registry
from tvlens.io import read_provenance
from tvlens.models import train
from tvlens.viz import report


def test_every_driver_has_the_one_signature():
    drivers = [a for a in registry.ANALYSES.values() if a.driver]
    assert {a.name for a in drivers} >= set(registry.DEMO)
    for a in drivers:
        fn = a.load_driver()
        module, name = a.driver.split(":")
        assert name == f"analyse_{a.name}" and module == f"tvlens.analyses.{a.name}"
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:2]] == ["run", "out_dir"], a.name
        assert params[1].default is None
        seed = inspect.signature(fn).parameters.get("seed")
        assert seed is not None and seed.kind is inspect.Parameter.KEYWORD_ONLY, a.name


def test_registry_and_figures_agree():
    # every table the registry lists has a figure, and every figure a viz module registers
    # belongs to an analysis of the registry: the report's figure list is the registry
    listed = {t for a in registry.ANALYSES.values() for t in a.tables}
    drawn: set[str] = set()
    for module in registry.figure_modules():
        drawn |= set(importlib.import_module(module).FIGURES)
    assert listed == drawn
    assert report.VIZ_MODULES == registry.figure_modules()
    for a in registry.ANALYSES.values():
        assert set(a.figure_functions()) == set(a.tables), a.name
    with pytest.raises(KeyError, match="unknown analysis"):
        registry.get("nope")
    with pytest.raises(ValueError, match="no run-level driver"):
        registry.get("training").load_driver()


def test_run_analyses_writes_the_registered_tables(tmp_path):
    run = train(tiny_config(steps=8), tmp_path / "run", progress=False)
    names = ["decodability", "attention"]
    tables, seconds = registry.run_analyses(
        run, names, options={"decodability": {"n": 24, "n_examples": [0, 4]}}
    )
    assert set(seconds) == set(names)
    expected = {t for n in names for t in registry.get(n).tables}
    assert set(tables) == expected
    provenance = read_provenance(run.dir / "analyses")
    for name in expected:
        on_disk = pd.read_csv(run.dir / "analyses" / f"{name}.csv")
        assert len(on_disk) == len(tables[name]) > 0
        assert provenance[f"{name}.csv"]["source"] == run.source  # step and checkpoint hash
