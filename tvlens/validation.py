"""Input checks in one place: typed config fields and degenerate analysis inputs.

:func:`check_fields` validates any config dataclass against its own annotations before
anything runs — ``int`` (not ``bool``, ``float`` or a string), finite ``float``, ``str``,
``bool``, ``Literal[...]`` choices, ``X | None``, ``tuple[...]``, ``list[...]`` and
``dict`` — and raises :class:`~tvlens.tasks.base.ConfigError` naming the field, the value
and the fix. Range checks stay in each config's ``validate``; this module owns the types.

The ``check_*`` helpers below are the guards analyses call on their inputs (empty or
non-finite states, a single sample, constant states, a basis that is not orthonormal, a
metric that returns NaN, token ids outside the vocabulary, a batch size below one), so a
degenerate input gives :class:`InvalidInputError` instead of a garbage number.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Literal

import torch
from torch import Tensor

from tvlens.errors import ConfigError

__all__ = [
    "InputTypeError",
    "InvalidInputError",
    "check_batch_family",
    "check_batch_size",
    "check_group_ids",
    "check_int",
    "check_nonempty",
    "check_tensor",
    "check_fields",
    "check_finite_value",
    "check_model_inputs",
    "check_orthonormal",
    "check_states",
    "check_token_ids",
]


class InvalidInputError(ValueError):
    """An analysis input that would give a meaningless result (empty, NaN, degenerate)."""


class InputTypeError(InvalidInputError, TypeError):
    """An argument of the wrong type: both a :class:`TypeError` and an
    :class:`InvalidInputError`, so either ``except`` catches it."""


# ----------------------------------------------------------------------- config fields
_WORDS = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"the non-finite number {value!r}"
    if isinstance(value, numbers.Number):
        return f"the number {value!r}"
    return f"a {type(value).__name__} {value!r}"


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _WORDS:
        return _WORDS[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin in (tuple, list):
        return "a list" if not args else f"a list of {_describe(args[0])}"
    if tp is dict or origin is dict:
        return "a JSON object"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (ints widen to float, lists become tuples) or :class:`_Mismatch`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        for a in args:
            if type(value) is type(a) and value == a:
                return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if args:
            if len(args) != len(value):
                raise _Mismatch
            return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
        return tuple(value)
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        return [_coerce(v, args[0]) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _Mismatch
        return dict(value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # an annotation we do not understand is not checked


def check_fields(obj: Any, section: str) -> None:
    """Check (and normalise) every field of dataclass ``obj`` against its annotation.

    ``section`` prefixes field names in messages (``model`` → ``model.n_layers``). Ints
    given for floats become floats and lists given for tuples become tuples, so a config
    read back from JSON equals the one written. Raises :class:`ConfigError` on the first
    field of the wrong type or with a non-finite float.
    """
    try:
        hints = typing.get_type_hints(type(obj))
    except (NameError, TypeError):  # an annotation that cannot be resolved is not checked
        hints = {}
    for f in dataclasses.fields(obj):
        tp = hints.get(f.name, Any)
        value = getattr(obj, f.name)
        try:
            fixed = _coerce(value, tp)
        except _Mismatch:
            example = f.default if f.default is not dataclasses.MISSING else None
            hint = f" (default {example!r})" if example is not None else ""
            raise ConfigError(
                f"{section}.{f.name} must be {_describe(tp)}, got {_kind(value)}; set it to "
                f"{_describe(tp)}{hint}."
            ) from None
        if fixed is not value:
            object.__setattr__(obj, f.name, fixed)


# -------------------------------------------------------------------- analysis inputs
def check_states(
    states: Tensor, name: str = "states", *, min_samples: int = 2, varying: bool = True
) -> None:
    """``states`` ``[n, d]``: at least ``min_samples`` rows, all finite and (``varying``) not
    all equal — R² is undefined on fewer samples or zero variance."""
    if states.dim() != 2:
        raise InvalidInputError(
            f"{name} must be a 2-D [n, d] tensor; got shape {tuple(states.shape)} (flatten "
            "batch and positions first)."
        )
    n = states.shape[0]
    if n < min_samples:
        raise InvalidInputError(
            f"{name} holds {n} sample(s); at least {min_samples} are needed for a variance — "
            "capture more sequences or positions."
        )
    bad = ~torch.isfinite(states)
    if bad.any():
        rows = bad.any(-1).nonzero().flatten()
        raise InvalidInputError(
            f"{name} contains {int(bad.sum())} NaN/inf value(s) in {rows.numel()} row(s) "
            f"(first: row {int(rows[0])}); the model or the capture produced non-finite "
            "activations — check the checkpoint (tvlens check RUN_DIR)."
        )
    if varying and float((states - states.mean(0)).abs().max()) == 0.0:
        raise InvalidInputError(
            f"all {n} rows of {name} are identical, so R² is undefined (zero variance); "
            "capture states from varied inputs."
        )


def check_orthonormal(basis: Tensor, name: str = "basis", atol: float = 1e-4) -> None:
    """``basis`` ``[r, d]`` has finite, orthonormal rows (``basis @ basis.T ≈ I``)."""
    if basis.dim() != 2:
        raise InvalidInputError(f"{name} must be [r, d]; got shape {tuple(basis.shape)}.")
    if not torch.isfinite(basis).all():
        raise InvalidInputError(f"{name} contains NaN/inf; build it from finite vectors.")
    if basis.shape[0] == 0:
        return  # the zero subspace: nothing to check
    gram = basis.double() @ basis.double().T
    err = float((gram - torch.eye(basis.shape[0], dtype=torch.float64)).abs().max())
    if err > atol:
        raise InvalidInputError(
            f"the rows of {name} are not orthonormal (max |B Bᵀ − I| = {err:.3g} > {atol}); "
            "orthonormalise it first, e.g. with orthonormal_basis(...)."
        )


def check_finite_value(value: float, what: str) -> float:
    """``value`` if finite, else :class:`InvalidInputError` naming ``what`` produced it."""
    if not math.isfinite(value):
        raise InvalidInputError(
            f"{what} returned {value}; a metric must be finite on clean inputs — check that "
            "it reads the right positions and does not divide by zero or take log(0)."
        )
    return value


def check_token_ids(ids: Tensor, vocab: int, name: str = "inputs") -> None:
    """Integer token ids ``ids`` all lie in ``[0, vocab)``."""
    if ids.is_floating_point() or ids.is_complex():
        return  # continuous (regression) tokens: nothing to check
    if ids.numel() == 0:
        raise InvalidInputError(f"{name} is empty; pass at least one sequence.")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        raise InvalidInputError(
            f"{name} holds token ids in [{lo}, {hi}] but the vocabulary has {vocab} tokens "
            f"(ids 0..{vocab - 1}); encode the inputs with this model's family or tokenizer."
        )


def check_batch_size(batch_size: Any, name: str = "batch_size") -> int:
    """``batch_size`` as a positive int, else :class:`InvalidInputError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise InvalidInputError(f"{name} must be an integer >= 1; got {batch_size!r}.")
    if batch_size < 1:
        raise InvalidInputError(f"{name}={batch_size} must be >= 1; pass e.g. {name}=256.")
    return int(batch_size)


def check_model_inputs(model: Any, inputs: Tensor) -> None:
    """Inputs a model can run: its own ``check_inputs`` if it has one (tvlens task models),
    else integer token ids checked against ``model.cfg.d_vocab`` (a TransformerLens bridge)."""
    check = getattr(model, "check_inputs", None)
    if callable(check):
        check(inputs)
        return
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if isinstance(vocab, int) and vocab > 0:
        check_token_ids(inputs, vocab)


# -------------------------------------------------------------- public API arguments
def check_int(
    value: Any, name: str, *, min_value: int | None = None, max_value: int | None = None
) -> int:
    """``value`` as an ``int`` (a Python or NumPy/torch integer; not a bool, a float such
    as ``30.0`` or a string such as ``'30'``) within ``[min_value, max_value]``."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        bound = f" >= {min_value}" if min_value is not None else ""
        raise InputTypeError(f"{name} must be an integer{bound}; got {_kind(value)}.")
    value = int(value)
    if min_value is not None and value < min_value:
        raise InvalidInputError(f"{name} must be >= {min_value}; got {value}.")
    if max_value is not None and value > max_value:
        raise InvalidInputError(f"{name} must be <= {max_value}; got {value}.")
    return value


def check_tensor(
    value: Any,
    name: str,
    *,
    dim: int | tuple[int, ...] | None = None,
    width: int | None = None,
    finite: bool = True,
    integer: bool = False,
) -> Tensor:
    """``value`` as a tensor with ``dim`` dimensions (one of them, if a tuple), last
    dimension ``width``, all entries finite (``finite``) and of an integer dtype
    (``integer``); otherwise an error naming ``name``, what was expected and what came."""
    if not isinstance(value, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor; got {_kind(value)}.")
    dims = (dim,) if isinstance(dim, int) else dim
    if dims is not None and value.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise InvalidInputError(f"{name} must be {want}; got {_kind(value)}.")
    if width is not None and (value.dim() == 0 or value.shape[-1] != width):
        raise InvalidInputError(
            f"{name} must have last dimension {width} (the model's width); got {_kind(value)}."
        )
    if integer and (value.is_floating_point() or value.is_complex()):
        raise InputTypeError(f"{name} must hold integer ids; got {_kind(value)}.")
    if finite and (value.is_floating_point() or value.is_complex()):
        bad = ~torch.isfinite(value)
        if bad.any():
            raise InvalidInputError(
                f"{name} contains {int(bad.sum())} NaN/inf value(s) ({_kind(value)}); pass "
                "finite values (a NaN here makes every output NaN)."
            )
    return value


def check_nonempty(value: Any, name: str, what: str = "at least one entry") -> Any:
    """``value`` (a mapping or sequence) if it holds something, else an error."""
    try:
        n = len(value)
    except TypeError:
        raise InputTypeError(f"{name} must hold {what}; got {_kind(value)}.") from None
    if n == 0:
        raise InvalidInputError(f"{name} is empty; it must hold {what}.")
    return value


def check_group_ids(groups: Any, n_groups: Any, n: int, name: str = "groups") -> Tensor:
    """Integer group ids ``[n]`` in ``[0, n_groups)``; returns them."""
    n_groups = check_int(n_groups, "n_groups", min_value=1)
    groups = check_tensor(groups, name, dim=1, integer=True)
    if groups.shape[0] != n:
        raise InvalidInputError(
            f"{name} has {groups.shape[0]} ids but there are {n} sequences; pass one group id "
            "per sequence."
        )
    if n and (int(groups.min()) < 0 or int(groups.max()) >= n_groups):
        raise InvalidInputError(
            f"{name} holds ids in [{int(groups.min())}, {int(groups.max())}] but n_groups="
            f"{n_groups} allows 0..{n_groups - 1}; raise n_groups or renumber the groups."
        )
    return groups


def check_batch_family(batch: Any, family: Any, name: str = "batch") -> Any:
    """``batch`` was sampled from ``family``: its length is the family's ``seq_len`` and,
    for pool splits, its task ids and parameters are the family's own pool entries."""
    inputs = getattr(batch, "inputs", None)
    if not isinstance(inputs, Tensor):
        raise InputTypeError(f"{name} must be a Batch (family.sample(...)); got {_kind(batch)}.")
    fix = f"sample it from this family: family.sample(split, n) with family = {family!r}."
    seq_len = getattr(getattr(family, "config", None), "seq_len", None)
    if isinstance(seq_len, int) and inputs.dim() >= 2 and inputs.shape[1] != seq_len:
        raise InvalidInputError(
            f"{name} holds sequences of length {inputs.shape[1]} but the family's seq_len is "
            f"{seq_len}: it comes from another family; {fix}"
        )
    ids, params = getattr(batch, "task_ids", None), getattr(batch, "params", None)
    pool = getattr(family, "pool", None)
    if getattr(batch, "split", None) == "ood" or not isinstance(ids, Tensor):
        return batch
    if not isinstance(pool, Tensor) or not isinstance(params, Tensor):
        return batch
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= pool.shape[0]):
        raise InvalidInputError(
            f"{name} holds task ids up to {int(ids.max())} but the family has "
            f"{pool.shape[0]} tasks: it comes from another family; {fix}"
        )
    mine = pool[ids]
    if mine.shape != params.shape or not torch.equal(mine.to(params.dtype), params):
        raise InvalidInputError(
            f"{name}'s task parameters are not this family's tasks of the same ids: it comes "
            f"from another family (or another pool seed); {fix}"
        )
    return batch
