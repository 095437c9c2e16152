"""The TransformerLens private APIs tvlens leans on, each behind a version check.

TransformerLens 4.3 has no public name for the rotary helper of its native attention
(``NativeRotary._rotate_half``). Inside the tested TL range (:data:`tvlens.versions.TESTED`)
tvlens calls TL's own; outside it, or when the attribute is gone, it uses a copy of TL 4.3's
definition (Llama-style adjacent pairs, matching TL 4.3's ``cos_cached`` layout) and warns
once, naming the installed version and the fix.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tvlens.versions import TESTED, installed

TL_DIST = "transformer-lens"


@cache
def tl_in_tested_range() -> bool:
    """Whether the installed TransformerLens lies in the range tvlens is tested with."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    found = installed(TL_DIST)
    if found is None:
        return False
    return Version(Version(found).base_version) in SpecifierSet(TESTED[TL_DIST][0])


def _rotate_adjacent_pairs(x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """TL 4.3's ``NativeRotary._rotate_half``: each pair ``(x0, x1)`` → ``(-x1, x0)``."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


@cache
def _warn_fallback(reason: str) -> None:
    warnings.warn(
        f"TransformerLens private API NativeRotary._rotate_half: {reason}; using tvlens's copy "
        f"of TL 4.3's definition. Install the tested TransformerLens "
        f"({TL_DIST}{TESTED[TL_DIST][0]}) if suffix patching disagrees with the bridge.",
        RuntimeWarning,
        stacklevel=3,
    )


def rotate_half(rotary: Any, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """The rotary helper of a TL native attention's ``rotary`` module, guarded."""
    fn = getattr(rotary, "_rotate_half", None)
    if fn is None:
        _warn_fallback(f"absent in {TL_DIST} {installed(TL_DIST)}")
        return _rotate_adjacent_pairs(x)
    if not tl_in_tested_range():
        _warn_fallback(f"{TL_DIST} {installed(TL_DIST)} is outside the tested range")
        return _rotate_adjacent_pairs(x)
    return fn(x)
