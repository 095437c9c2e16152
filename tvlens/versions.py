"""The dependency versions tvlens is tested with, and a run-time check against them.

tvlens reaches into TransformerLens's bridge (block kwargs, KV-cache handling, the native
builder) and, through it, into transformers' decoder layers. Those interfaces move between
minor releases: transformers 5.24 renamed the decoder layers' ``past_key_values`` argument to
``cache`` and silently disabled the patching engine's prefix-K/V shortcut. So the supported
range is the tested range, pinned in ``pyproject.toml``, and the exact tested set is in
``constraints.txt``. :func:`check_versions` warns once per process when an installed
version falls outside the range; it reads package metadata only and imports nothing heavy.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

from packaging.specifiers import SpecifierSet
from packaging.version import Version

#: distribution name -> (tested range, versions run in the test suite before a release)
TESTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "transformers": (">=5.9,<5.25", ("5.9.0", "5.23.0", "5.24.0")),
    "transformer-lens": (">=4.3,<4.4", ("4.3.0",)),
    "torch": (">=2.4,<3", ("2.13.0",)),
}

_FIX = (
    'pip install -c constraints.txt -e ".[dev]"  (from the tvlens repository), or '
    "pip install '{name}{spec}'"
)
_checked = False


class UntestedVersionWarning(UserWarning):
    """An installed dependency is outside the range tvlens is tested with."""


def installed(name: str) -> str | None:
    """The installed version of distribution ``name``, or ``None``."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def untested() -> list[str]:
    """One message per installed dependency outside its tested range (empty when all fit)."""
    problems = []
    for name, (spec, _) in TESTED.items():
        found = installed(name)
        if found is None:
            continue
        if Version(found).release and Version(Version(found).base_version) not in SpecifierSet(
            spec
        ):
            problems.append(
                f"{name} {found} is outside the range tvlens is tested with ({name}{spec}); "
                f"results may be wrong or slow. To install the tested set: "
                + _FIX.format(name=name, spec=spec)
            )
    return problems


def check_versions(force: bool = False) -> list[str]:
    """Warn once per process (``UntestedVersionWarning``) about untested dependency versions."""
    global _checked
    if _checked and not force:
        return []
    _checked = True
    problems = untested()
    for message in problems:
        warnings.warn(message, UntestedVersionWarning, stacklevel=2)
    return problems
