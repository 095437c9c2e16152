"""PEP 562 lazy re-exports, so that importing a package imports none of its heavy modules.

A package's ``__init__`` names its public objects and the modules that define them;
:func:`lazy_exports` returns the module-level ``__getattr__`` and ``__dir__`` that import a
module the first time one of its names is read. This keeps ``import tvlens`` and
``tvlens --help`` free of torch, TransformerLens and transformers until a command needs them.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any


class _Package(types.ModuleType):
    """A package whose export may share its name with a submodule (``task_vectors``).

    With eager imports, ``from pkg.mod import mod`` in ``__init__`` left the *function* bound
    on the package. Lazily, the import system would bind the submodule over it when the
    submodule is first imported; this keeps the exported object, as the eager package did.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        exports = self.__dict__.get("_EXPORTS", {})
        if (
            name in exports
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_exports(
    package: str, exports: dict[str, str], deprecated: dict[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``exports`` map name -> module.

    ``deprecated`` maps old public names to their new names (both resolve to the same
    object); reading an old name warns once per call site with ``DeprecationWarning``.
    """
    module = sys.modules[package]
    module.__class__ = _Package
    module._EXPORTS = exports
    deprecated = deprecated or {}

    def __getattr__(name: str) -> Any:
        if name in deprecated:
            new = deprecated[name]
            warnings.warn(
                f"{package}.{name} is deprecated; use {package}.{new} (same function).",
                DeprecationWarning,
                stacklevel=2,
            )
            return __getattr__(new)
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(module, name, value)  # cache: later reads skip __getattr__
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*module.__dict__, *exports, *deprecated})

    return __getattr__, __dir__
