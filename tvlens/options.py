"""Analysis options, declared once: one frozen dataclass per analysis.

An analysis declares its options as a subclass of :class:`Options` whose fields carry their
default, their help and their limits (:func:`option`). Everything else is generated from
that one declaration:

* the driver's keyword arguments and their validation (:meth:`Options.build`: unknown names
  are refused with the valid ones listed, types are checked and coerced by
  :func:`tvlens.validation.check_fields`, limits and choices are checked);
* the command-line flags, their help and defaults (:func:`add_flags` / :func:`from_flags`;
  ``tvlens llm`` builds its whole command line this way);
* the recorded config (:meth:`Options.to_dict`, written beside every table's provenance).

Adding an option is one edit: a field. Flags are shared across analyses when the field has
the same flag name and default (``--layers`` sets the layers of every LLM analysis that has
them), so one flag never means two things.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from tvlens.errors import ConfigError

__all__ = ["Options", "add_flags", "check_flags_used", "flags_of", "from_flags", "option"]

OptionsT = TypeVar("OptionsT", bound="Options")


def option(
    default: Any,
    help: str,  # noqa: A002 — the argparse word
    *,
    flag: str | None = None,
    min: float | None = None,  # noqa: A002
    choices: Iterable[Any] | None = None,
    cli: bool = True,
) -> Any:
    """A field of an :class:`Options` class: its default, its help text, and optionally the
    command-line ``flag`` (default ``--field-name``), a lower bound ``min`` (for numbers, or
    every item of a tuple), the allowed ``choices``, and ``cli=False`` for options that only
    make sense from Python."""
    meta = {"help": help, "flag": flag, "min": min, "cli": cli}
    meta["choices"] = tuple(choices) if choices is not None else None
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Options:
    """Base of every analysis's options (a frozen dataclass of :func:`option` fields).

    Subclasses may override :meth:`check` for rules that involve several fields.
    """

    #: the name used in messages (``icl.n_prompts must be ...``); set by each subclass
    section: ClassVar[str] = "options"

    def __post_init__(self) -> None:
        from tvlens.validation import check_fields

        check_fields(self, self.section)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lo, choices = f.metadata.get("min"), f.metadata.get("choices")
            items = value if isinstance(value, tuple) else (value,)
            if lo is not None and any(v is not None and v < lo for v in items):
                raise ConfigError(f"{self.section}.{f.name}={value!r} must be at least {lo}.")
            if choices is not None and any(v not in choices for v in items):
                raise ConfigError(
                    f"{self.section}.{f.name}={value!r}; choose one of {list(choices)}."
                )
        self.check()

    def check(self) -> None:
        """Rules across fields (override); raise :class:`ConfigError` naming the fix."""

    @classmethod
    def build(
        cls: type[OptionsT], values: Mapping[str, Any] | Options | None = None, **more: Any
    ) -> OptionsT:
        """Options from a mapping (a sweep config, a notebook's keywords) or an instance,
        updated by ``more``. Unknown names are refused with the valid ones listed."""
        if isinstance(values, cls) and not more:
            return values
        if isinstance(values, Options):
            values = values.to_dict()
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(
                f"{cls.section} options must be a mapping of option names to values; got "
                f"{type(values).__name__}."
            )
        merged = {**(values or {}), **more}
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(merged) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for {cls.section}; valid options are {sorted(valid)}."
            )
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON-able values (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


# ----------------------------------------------------------------------------- flags
def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _dest(flag: str) -> str:
    return "opt_" + flag.lstrip("-").replace("-", "_")


def _parser_type(tp: Any, name: str) -> dict[str, Any]:
    """argparse keywords (``type``, ``metavar`` or ``action``) for annotation ``tp``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and args:
        return _parser_type(args[0], name)
    if origin is tuple:
        return {"type": _list_of(args[0] if args else str), "metavar": "A,B,..."}
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": tp, "metavar": name.upper()}


def _list_of(item: Any) -> Any:
    def parse(text: str) -> tuple:
        try:
            return tuple(item(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {item.__name__}"
            ) from None

    parse.__name__ = f"list of {item.__name__}"
    return parse


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "all" if value is None else str(value)


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    classes: Iterable[type[Options]],
    seen: dict[str, tuple[Any, str]] | None = None,
) -> dict[str, tuple[Any, str]]:
    """Add a flag for every CLI field of ``classes``; a flag already added by an earlier
    class with the same default is shared. Returns the flags added (flag -> (default, owner)).

    Two fields that would share a flag with different defaults are a declaration error:
    give one an explicit ``flag=``.
    """
    seen = {} if seen is None else seen
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True):
                continue
            flag = _flag(f)
            if flag in seen:
                default, owner = seen[flag]
                if default != f.default:
                    raise TypeError(
                        f"{cls.__name__}.{f.name} would share flag {flag} with {owner} but "
                        f"has another default ({f.default!r} vs {default!r}); give it "
                        "option(..., flag='--another-name')."
                    )
                continue
            kwargs: dict[str, Any] = {"default": None, "dest": _dest(flag)}
            kwargs.update(_parser_type(hints[f.name], f.name))
            if f.metadata.get("choices") is not None and kwargs.get("type") in (str, int, float):
                kwargs["choices"] = list(f.metadata["choices"])
                kwargs.pop("metavar")
            help_ = f.metadata.get("help", "")
            parser.add_argument(flag, help=f"{help_} (default {_show(f.default)})", **kwargs)
            seen[flag] = (f.default, f"{cls.__name__}.{f.name}")
    return seen


def from_flags(cls: type[OptionsT], args: argparse.Namespace) -> OptionsT:
    """``cls``'s options from parsed flags (:func:`add_flags`); flags not given keep the
    field's default."""
    values = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        value = getattr(args, _dest(_flag(f)), None)
        if value is not None:
            values[f.name] = value
    return cls.build(values)


def flags_of(cls: type[Options]) -> dict[str, str]:
    """Flag -> field name of ``cls``'s command-line options."""
    return {_flag(f): f.name for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}


def check_flags_used(
    args: argparse.Namespace, used: Iterable[type[Options]], known: Iterable[type[Options]]
) -> None:
    """Refuse a flag given on the command line that none of the ``used`` classes reads
    (e.g. ``--layers`` when only ICL runs), naming the classes that would read it."""
    read = {flag for cls in used for flag in flags_of(cls)}
    for cls in known:
        for flag in flags_of(cls):
            if flag not in read and getattr(args, _dest(flag), None) is not None:
                owners = sorted(c.section for c in known if flag in flags_of(c))
                raise ConfigError(
                    f"{flag} is not read by the analyses that run; it is an option of "
                    f"{', '.join(owners)}. Add one of them to --analyses or drop {flag}."
                )
