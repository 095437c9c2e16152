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
    assert {a.name for a in drivers if a.kind == "trained"} >= set(registry.DEMO)
    llm = {a.name for a in drivers if a.kind == "llm"}
    assert llm >= set(registry.LLM) | set(registry.LLM_OPT_IN)
    for a in drivers:
        fn = a.load_driver()
        module, name = a.driver.split(":")
        package = "tvlens.analyses" if a.kind == "trained" else "tvlens.llm"
        assert name == f"analyse_{a.name}" and module == f"{package}.{a.name}"
        params = inspect.signature(fn).parameters
        assert list(params)[:2] == ["run", "out_dir"] and params["out_dir"].default is None
        # the keyword options are generated from the one options dataclass
        options = a.options_class()
        assert fn.options is options, a.name
        for field, default in options().to_dict().items():
            p = params[field]
            assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default == default, field


def test_options_are_validated_before_any_analysis_runs(tmp_path):
    run = train(tiny_config(steps=4), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['n_exampels'\].*valid"):
        registry.run_analyses(run, ["attention", "decodability"],
                              options={"decodability": {"n_exampels": [1]}})  # fmt: skip
    assert not (run.dir / "analyses" / "attention.csv").exists()  # nothing ran
    with pytest.raises(ValueError, match="patching.n_per_task=0 must be at least 1"):
        registry.run_analyses(run, ["patching"], options={"patching": {"n_per_task": 0}})
    with pytest.raises(ValueError, match="must be an integer"):
        registry.get("attention").load_driver()(run, seed="zero")
    with pytest.raises(TypeError, match="analyses llm runs; got a trained run"):
        registry.get("icl", "llm").load_driver()(run)


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
        assert provenance[f"{name}.csv"]["analysis"] in names
    assert provenance["decodability.csv"]["options"]["n_examples"] == [0, 4]
