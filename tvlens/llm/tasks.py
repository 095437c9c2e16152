"""Shipped natural-language ICL tasks: load and validate the JSON files in ``tvlens/llm/data``.

A task file is ``{"schema_version": 1, "name", "family", "description", "pairs": [{"input",
"output"}, ...]}``. :func:`load_task` checks the schema, types, empty or padded fields and
duplicate inputs, and names the file and entry of any problem. Families: ``word`` (antonym,
country_capital, ...: tasks a pretrained model knows), ``pos`` and ``bitwise`` (Han et al.'s
task sets), ``null`` (labels that follow no rule) and ``novel`` (seeded mappings no model can
know before the prompt: in-context-only tasks; see :mod:`tvlens.llm.make_data`).

Shipped files hold at least :data:`SHIPPED_MIN_PAIRS` pairs each (a test checks it); a user's
own file needs :data:`MIN_PAIRS`. :func:`task_groups` splits a task list into the sets the
decodability analysis compares (one per family, with Null restricted to that family's inputs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
FAMILIES = ("word", "pos", "bitwise", "null", "novel")
REQUIRED_KEYS = ("schema_version", "name", "family", "description", "pairs")
MIN_PAIRS = 10
SHIPPED_MIN_PAIRS = 60


class TaskDataError(ValueError):
    """A task file is malformed; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class NLTask:
    """One natural-language ICL task: ``(input, output)`` string pairs."""

    name: str
    family: str
    description: str
    pairs: tuple[tuple[str, str], ...]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def inputs(self) -> list[str]:
        return [x for x, _ in self.pairs]

    @property
    def outputs(self) -> list[str]:
        return [y for _, y in self.pairs]


def _fail(path: Path | str, what: str) -> TaskDataError:
    return TaskDataError(f"task file {path}: {what}")


def parse_task(data: object, path: Path | str = "<memory>") -> NLTask:
    """Validate a decoded task dict and return it as an :class:`NLTask`."""
    if not isinstance(data, dict):
        raise _fail(path, f"top level must be a JSON object, got {type(data).__name__}.")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise _fail(path, f"missing key(s) {missing}; required keys are {list(REQUIRED_KEYS)}.")
    if data["schema_version"] != 1:
        raise _fail(path, f"schema_version {data['schema_version']!r} is unknown; expected 1.")
    for key in ("name", "family", "description"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise _fail(path, f"{key!r} must be a non-empty string, got {data[key]!r}.")
    if data["family"] not in FAMILIES:
        raise _fail(path, f"family {data['family']!r} is not one of {FAMILIES}.")
    if isinstance(path, Path) and path.stem != data["name"]:
        raise _fail(path, f"name {data['name']!r} differs from the file name {path.stem!r}.")
    pairs = data["pairs"]
    if not isinstance(pairs, list) or len(pairs) < MIN_PAIRS:
        raise _fail(path, f"'pairs' must be a list of at least {MIN_PAIRS} entries.")
    seen: dict[str, int] = {}
    out = []
    for i, entry in enumerate(pairs):
        where = f"entry {i} ({entry!r})"
        if not isinstance(entry, dict) or set(entry) != {"input", "output"}:
            raise _fail(path, f"{where} must be an object with exactly 'input' and 'output'.")
        for key in ("input", "output"):
            value = entry[key]
            if not isinstance(value, str):
                raise _fail(path, f"{where}: {key!r} must be a string, got {type(value).__name__}.")
            if not value.strip():
                raise _fail(path, f"{where}: {key!r} is empty.")
            if value != value.strip() or "\n" in value:
                raise _fail(
                    path, f"{where}: {key!r} has surrounding whitespace or a newline; strip it."
                )
        x = entry["input"]
        if x in seen:
            raise _fail(path, f"{where}: duplicate input {x!r} (first at entry {seen[x]}).")
        seen[x] = i
        out.append((x, entry["output"]))
    return NLTask(data["name"], data["family"], data["description"], tuple(out))


def load_task_file(path: str | Path) -> NLTask:
    """Load and validate one task file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"is not valid UTF-8 JSON ({e}).") from e
    return parse_task(data, path)


def task_names(directory: str | Path = DATA_DIR) -> list[str]:
    """Names of the tasks in ``directory`` (the shipped ones by default), sorted."""
    return sorted(p.stem for p in Path(directory).glob("*.json"))


def load_task(name: str, directory: str | Path = DATA_DIR) -> NLTask:
    """A shipped task by name (e.g. ``"antonym"``), or a task file given by path."""
    if name.endswith(".json") or Path(name).is_file():
        return load_task_file(name)
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown task {name!r}; available: {task_names(directory)}.")
    return load_task_file(path)


def load_tasks(
    names: str | list[str] | None = None, directory: str | Path = DATA_DIR
) -> list[NLTask]:
    """Several tasks: a list of names, a family (``"pos"``, ``"bitwise"``, ``"word"``,
    ``"null"``), ``"all"``/``None``, or a comma-separated string of either."""
    if names is None:
        names = "all"
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    every = [load_task_file(Path(directory) / f"{n}.json") for n in task_names(directory)]
    out: list[NLTask] = []
    for n in names:
        if n == "all":
            out.extend(every)
        elif n in FAMILIES:
            out.extend(t for t in every if t.family == n)
        else:
            out.append(load_task(n, directory))
    unique = list({t.name: t for t in out}.values())
    if not unique:
        raise KeyError(f"no tasks selected by {names!r}; available: {task_names(directory)}.")
    return unique


def restrict_inputs(task: NLTask, inputs: set[str] | list[str]) -> NLTask:
    """The pairs of ``task`` whose input is in ``inputs`` (e.g. Null on the POS sentences)."""
    keep = set(inputs)
    pairs = tuple(p for p in task.pairs if p[0] in keep)
    return NLTask(task.name, task.family, task.description, pairs)


def task_groups(tasks: list[NLTask], min_pairs: int = MIN_PAIRS) -> dict[str, list[NLTask]]:
    """Split ``tasks`` into the sets decodability compares: one group per family of real
    tasks, each with the Null task (when given) restricted to that family's inputs, so Null
    differs from the group's tasks only by its input-label relation (Han et al. add a Null
    class to each task set). A Null restriction with fewer than ``min_pairs`` pairs is left
    out of that group; groups with fewer than two tasks are dropped.
    """
    null = [t for t in tasks if t.family == "null"]
    groups: dict[str, list[NLTask]] = {}
    for t in tasks:
        if t.family != "null":
            groups.setdefault(t.family, []).append(t)
    for family, members in list(groups.items()):
        inputs = {x for t in members for x in t.inputs}
        for n in null:
            r = restrict_inputs(n, inputs)
            if len(r) >= min_pairs:
                members.append(r)
        if len(members) < 2:
            del groups[family]
    return groups
