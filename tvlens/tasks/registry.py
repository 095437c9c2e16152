"""The task-family registry: family name -> the class that implements it.

Entries are ``"module:Class"`` strings, imported the first time a family is asked for, so that
listing the families (``tvlens --help``, config validation) imports no torch. Adding a family
is one line here plus its own module.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tvlens.tasks.base import TaskFamily

#: family name -> "module:Class"
FAMILY_CLASSES: dict[str, str] = {
    "dice": "tvlens.tasks.dice:Dice",
    "markov": "tvlens.tasks.markov:Markov",
    "linreg": "tvlens.tasks.linreg:LinReg",
    "sparse_linreg": "tvlens.tasks.sparse_linreg:SparseLinReg",
    "dyck": "tvlens.tasks.dyck:Dyck",
}


class _Families(Mapping[str, "type[TaskFamily]"]):
    """Read-only view of :data:`FAMILY_CLASSES` that imports a family's module on lookup."""

    def __getitem__(self, name: str) -> type[TaskFamily]:
        try:
            module, cls = FAMILY_CLASSES[name].split(":")
        except KeyError:
            raise KeyError(
                f"{name!r} is not a known task family; choose one of {sorted(FAMILY_CLASSES)}."
            ) from None
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(FAMILY_CLASSES)

    def __len__(self) -> int:
        return len(FAMILY_CLASSES)

    def __repr__(self) -> str:
        return f"FAMILIES({sorted(FAMILY_CLASSES)})"


#: family name -> family class (imported on first lookup)
FAMILIES: Mapping[str, type[TaskFamily]] = _Families()


def register_family(name: str, target: str) -> None:
    """Register ``target`` (``"module:Class"``) as family ``name``, e.g. for a plug-in family."""
    if ":" not in target:
        raise ValueError(f"target={target!r} must be 'module:Class', e.g. 'mypkg.tasks:MyFamily'.")
    FAMILY_CLASSES[name] = target
