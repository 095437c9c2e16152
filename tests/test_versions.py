"""The tested dependency ranges: one source of truth, a clear warning outside them."""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tvlens import versions

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_pyproject_ranges_are_the_checked_ranges():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {Requirement(d).name.lower(): str(Requirement(d).specifier) for d in deps}
    for name, (spec, tested) in versions.TESTED.items():
        assert (
            Requirement(f"{name}{spec}").specifier
            == Requirement(f"{name}{declared[name]}").specifier
        ), name
        for v in tested:
            assert Version(v) in Requirement(f"{name}{spec}").specifier, (name, v)


def test_constraints_pin_versions_inside_the_declared_ranges():
    pins = _pins()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        assert req.name.lower() in pins, f"{req.name} is not pinned in constraints.txt"
        assert Version(pins[req.name.lower()]) in req.specifier, (req.name, pins[req.name.lower()])


def test_outside_the_range_warns_once_with_the_range_and_the_fix(monkeypatch):
    monkeypatch.setattr(versions, "installed", lambda name: {"transformers": "5.30.1"}.get(name))
    monkeypatch.setattr(versions, "_checked", False)
    with pytest.warns(versions.UntestedVersionWarning) as record:
        problems = versions.check_versions()
    assert len(problems) == 1 and len(record) == 1
    message = str(record[0].message)
    assert "transformers 5.30.1" in message and ">=5.9,<5.25" in message
    assert "constraints.txt" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert versions.check_versions() == []  # once per process


def test_inside_the_range_is_silent(monkeypatch):
    monkeypatch.setattr(
        versions,
        "installed",
        lambda name: {"transformers": "5.24.0", "transformer-lens": "4.3.0", "torch": "2.13.0+cpu"}[
            name
        ],
    )
    assert versions.untested() == []
    monkeypatch.setattr(versions, "installed", lambda name: "4.2.0")
    assert any("transformer-lens 4.2.0" in m for m in versions.untested())
