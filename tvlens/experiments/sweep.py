"""Declarative sweeps: one config file names every trial; any engine runs them.

A sweep config (JSON, or YAML with a ``.yaml``/``.yml`` name) lists the axes of the sweep and
what each trial does::

    name: dice-two-modes
    families: [dice]              # task families (tvlens.tasks.FAMILIES)
    ks: [-1, 0, 2, 4, 6, 8]       # 2**k minor tasks; -1 for none
    seeds: [0, 1, 2]              # each sets model.seed, train.seed and family.seed
    model: {n_layers: 6, d_model: 128, n_heads: 2, d_mlp: 512}   # or models: {NAME: {...}}
    family: {seq_len: 64}         # fields shared by every family (optional)
    train: {steps: 30000}         # train.device defaults to cuda when resources.gpu > 0
    analyses: [two_modes]         # or {two_modes: {n_eval: 256}, decodability: {}}
    resources: {cpu: 1, gpu: 1}   # per trial; Ray places one gpu-1 trial per GPU
    trial_dir: "{family}_{model}_k{k}_s{seed}"   # the default
    grid: {family.n_major: [4, 16, 64]}   # optional: more axes over config fields

The trials are the product families × models × ks × seeds (× every ``grid`` axis: a
``SECTION.FIELD`` of the family, model or train section and its values; each adds
``_FIELDVALUE`` to the trial directory and a ``FIELD`` column to ``results.csv``, as the
Raventós sweep over the pool size does). Each trial trains a model with

:func:`tvlens.models.train` and runs the named run-level analysis drivers on it, in its own
run directory ``OUT/<trial_dir>``. The directory is built in ``OUT/.partial/<trial_dir>`` under
a run lock and renamed into place (one atomic ``rename``) only when training, every analysis
and ``trial.json`` are written, so ``OUT/<trial_dir>`` exists exactly when the trial is
complete. A restarted sweep skips complete trials and resumes interrupted training from its
resume state. A trial that raises is recorded (``status = failed``, the error in
``results.csv``, the traceback in ``.partial/<trial_dir>/error.txt``) and the sweep goes on.

``OUT/results.csv`` has one row per trial (complete or failed): the trial's axes, its status,
seconds, error and the headline numbers of its analyses (for ``two_modes`` the columns of
:func:`tvlens.experiments.two_modes.headline`). With two or more seeds per setting,
``OUT/results_seeds.csv`` gives each headline number's mean and sd over seeds. With ``two_modes`` among the analyses the
across-k tables (``OUT/analyses/*.csv``, read by ``tvlens report OUT``) and figures
(``OUT/figures``) are written too.

Every trial sets ``torch.set_num_threads(resources.cpu)`` and seeds everything from its
config, so its numbers do not depend on the engine or on which worker runs it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import string
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tvlens.tasks.base import ConfigError

log = logging.getLogger(__name__)

PARTIAL = ".partial"
TRIAL_JSON = "trial.json"
RESULTS = "results.csv"
#: mean and sd of every headline number over training seeds (:func:`seed_summary`)
RESULTS_BY_SEED = "results_seeds.csv"
DEFAULT_TRIAL_DIR = "{family}_{model}_k{k}_s{seed}"
TRIAL_DIR_FIELDS = ("family", "model", "k", "seed", "n_minor")
#: the columns of results.csv that say which trial a row is
AXES = ("trial", "family", "model", "k", "n_minor", "seed", "n_layers", "d_model", "steps")

_KEYS = {
    "name",
    "families",
    "ks",
    "seeds",
    "model",
    "models",
    "family",
    "train",
    "analyses",
    "resources",
    "trial_dir",
    "grid",
}
#: sections a ``grid`` axis may vary, and the fields that are axes of their own
_GRID_SECTIONS = {"family": ("seed", "k", "name"), "model": ("seed",), "train": ("seed",)}


# ------------------------------------------------------------------------------ spec
@dataclass(frozen=True)
class Resources:
    """What one trial needs: CPU cores (also its torch threads) and GPUs (may be fractional)."""

    cpu: int = 1
    gpu: float = 0.0


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: its directory name, axes, full run config and analyses."""

    id: str
    family: str
    model: str
    k: int
    seed: int
    config: dict[str, Any]
    analyses: dict[str, dict[str, Any]]
    resources: Resources
    grid: tuple[tuple[str, Any], ...] = ()  # (column, value) of each grid axis

    @property
    def axes(self) -> dict[str, Any]:
        m = self.config["model"]
        return dict(self.grid) | {
            "trial": self.id,
            "family": self.family,
            "model": self.model,
            "k": self.k,
            "n_minor": n_minor(self.k),
            "seed": self.seed,
            "n_layers": m["n_layers"],
            "d_model": m["d_model"],
            "steps": self.config["train"]["steps"],
        }

    @classmethod
    def from_config(
        cls,
        id: str,
        config: Any,
        analyses: Mapping[str, Mapping[str, Any]],
        resources: Resources | None = None,
        model: str | None = None,
    ) -> Trial:
        """A trial for one ready-made run config (a :class:`RunConfig` or its dict), for
        callers with their own directory names; family, k and seed come from the config."""
        from tvlens.models import RunConfig

        cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config))
        m = cfg.model
        return cls(
            id,
            cfg.family.name,
            model or f"L{m.n_layers}d{m.d_model}",
            int(cfg.family.k),
            int(cfg.train.seed),
            cfg.to_dict(),
            {n: dict(o) for n, o in analyses.items()},
            resources or Resources(),
        )

    def to_payload(self, out: Path) -> dict[str, Any]:
        """Everything a worker needs, as plain JSON-able data (no pickled objects)."""
        return {
            "id": self.id,
            "out": str(out),
            "config": self.config,
            "analyses": self.analyses,
            "threads": self.resources.cpu,
            "axes": self.axes,
        }


@dataclass
class SweepSpec:
    """A validated sweep config (see the module docstring for the file format)."""

    families: list[str]
    ks: list[int]
    seeds: list[int] = field(default_factory=lambda: [0])
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    family: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    analyses: dict[str, dict[str, Any]] = field(default_factory=lambda: {"two_modes": {}})
    resources: Resources = field(default_factory=Resources)
    trial_dir: str = DEFAULT_TRIAL_DIR
    name: str = "sweep"
    source: str = "sweep config"
    grid: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.models:
            self.models = {"": {}}  # one model of the default size, named by its shape
        self._trials = _build_trials(self)

    def trials(self) -> list[Trial]:
        """Every trial, in the order families × models × ks × seeds."""
        return list(self._trials)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        d.pop("_trials", None)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "sweep config") -> SweepSpec:
        """Validate a parsed config; every error names ``source``, the field and the fix."""
        return _parse(d, source)

    @classmethod
    def load(cls, path: Path | str) -> SweepSpec:
        """Read a sweep config from JSON or YAML (by file extension)."""
        return _parse(load_sweep_file(path), str(path))


def grid_suffix(grid: Sequence[tuple[str, Any]]) -> str:
    """What a trial's grid values add to its directory name: ``_n_major64`` …"""
    return "".join(f"_{name}{v}" for name, v in grid)


def n_minor(k: int) -> int:
    return 0 if k < 0 else 2**k


def load_sweep_file(path: Path | str) -> Any:
    """The object in a JSON or YAML sweep file, with errors naming the file and the fix."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass a sweep config file (.json or .yaml).")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"sweep config {path} does not exist; check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read sweep config {path} ({e}).") from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"{path} is YAML but PyYAML is not installed; pip install pyyaml, or write "
                "the sweep as JSON."
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML ({e}); fix it.") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); fix it.") from None
    raise ConfigError(
        f"{path}: unknown sweep config type {suffix!r}; name it .json, .yaml or .yml."
    )


def _err(source: str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {msg}")


def _int_list(d: dict, key: str, source: str, default: list[int] | None, lo: int) -> list[int]:
    raw = d.get(key, default)
    if raw is None:
        raise _err(source, key, f"missing; list the values, e.g. {key}: [{lo}, {lo + 1}].")
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _err(source, key, f"must be a non-empty list of integers; got {raw!r}.")
    for v in raw:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise _err(source, key, f"{v!r} is not an integer >= {lo}; fix that entry.")
    dup = sorted({v for v in raw if raw.count(v) > 1})
    if dup:
        raise _err(source, key, f"lists {dup} more than once; list each value once.")
    return list(raw)


def _section(d: dict, key: str, source: str) -> dict[str, Any]:
    raw = d.get(key, {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _err(source, key, f"must be a mapping of fields; got {type(raw).__name__}.")
    return dict(raw)


def _parse(d: Any, source: str) -> SweepSpec:
    from tvlens.tasks import FAMILIES

    if not isinstance(d, dict):
        raise ConfigError(
            f"{source}: a sweep config must be a mapping with keys families, ks, ...; got "
            f"{'nothing' if d is None else type(d).__name__}. See `tvlens sweep --help`."
        )
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys are {sorted(_KEYS)}.")
    fams = d.get("families")
    if isinstance(fams, str):
        fams = [fams]
    if not isinstance(fams, list) or not fams or not all(isinstance(f, str) for f in fams):
        raise _err(
            source, "families", f"must be a non-empty list of names from {sorted(FAMILIES)}."
        )
    for f in fams:
        if f not in FAMILIES:
            raise _err(
                source, "families", f"{f!r} is not a task family; use one of {sorted(FAMILIES)}."
            )
    if len(set(fams)) < len(fams):
        raise _err(source, "families", "lists a family twice; list each once.")
    ks = _int_list(d, "ks", source, None, -1)
    seeds = _int_list(d, "seeds", source, [0], 0)
    if "model" in d and "models" in d:
        raise ConfigError(
            f"{source}: give either model (one size) or models (NAME: sizes), not both."
        )
    if "models" in d:
        models = d["models"]
        if not isinstance(models, dict) or not models:
            raise _err(
                source, "models", "must map a name to model fields, e.g. {small: {d_model: 64}}."
            )
        for name, m in models.items():
            if not isinstance(name, str) or not name or not isinstance(m, dict | None):
                raise _err(source, f"models.{name}", "must be a name mapping to model fields.")
        models = {str(n): dict(m or {}) for n, m in models.items()}
    else:
        models = {"": _section(d, "model", source)}
    family = _section(d, "family", source)
    train = _section(d, "train", source)
    for sec, fields_ in (("family", family), ("train", train)):
        for bad in ("seed", "k", "name") if sec == "family" else ("seed",):
            if bad in fields_:
                axis = {"seed": "seeds", "k": "ks", "name": "families"}[bad]
                raise _err(source, f"{sec}.{bad}", f"is a sweep axis; list it under {axis}.")
    for name, m in models.items():
        if "seed" in m:
            raise _err(
                source,
                f"models.{name}.seed" if name else "model.seed",
                "is a sweep axis; list it under seeds.",
            )
    resources = _parse_resources(d.get("resources", {}), source)
    analyses = _parse_analyses(d.get("analyses", ["two_modes"]), source)
    trial_dir = d.get("trial_dir", DEFAULT_TRIAL_DIR)
    if not isinstance(trial_dir, str) or not trial_dir:
        raise _err(source, "trial_dir", f"must be a template string such as {DEFAULT_TRIAL_DIR!r}.")
    name = d.get("name", "sweep")
    if not isinstance(name, str):
        raise _err(source, "name", f"must be a string; got {name!r}.")
    grid = _parse_grid(d.get("grid", {}), source)
    return SweepSpec(
        families=list(fams),
        ks=ks,
        seeds=seeds,
        models=models,
        family=family,
        train=train,
        analyses=analyses,
        resources=resources,
        trial_dir=trial_dir,
        name=name,
        source=source,
        grid=grid,
    )


def _parse_grid(raw: Any, source: str) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _err(source, "grid", "must map SECTION.FIELD to a list of values.")
    out: dict[str, list[Any]] = {}
    columns: set[str] = set()
    for key, values in raw.items():
        section, _, name = str(key).partition(".")
        if section not in _GRID_SECTIONS or not name or "." in name:
            raise _err(
                source,
                f"grid.{key}",
                f"name a field as SECTION.FIELD with SECTION in {sorted(_GRID_SECTIONS)}.",
            )
        if name in _GRID_SECTIONS[section]:
            axis = {"seed": "seeds", "k": "ks", "name": "families"}[name]
            raise _err(source, f"grid.{key}", f"is a sweep axis; list it under {axis}.")
        if name in AXES or name in columns:
            raise _err(source, f"grid.{key}", f"the column {name!r} is taken; vary another field.")
        if not isinstance(values, list) or not values:
            raise _err(
                source, f"grid.{key}", f"must be a non-empty list of values; got {values!r}."
            )
        if any(isinstance(v, dict | list) for v in values) or len(set(map(repr, values))) < len(
            values
        ):
            raise _err(source, f"grid.{key}", "must list distinct plain values (numbers, strings).")
        columns.add(name)
        out[str(key)] = list(values)
    return out


def _parse_resources(raw: Any, source: str) -> Resources:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _err(source, "resources", "must be a mapping such as {cpu: 1, gpu: 0}.")
    unknown = sorted(set(raw) - {"cpu", "gpu"})
    if unknown:
        raise _err(source, "resources", f"unknown field(s) {unknown}; use cpu and gpu.")
    cpu, gpu = raw.get("cpu", 1), raw.get("gpu", 0)
    if not isinstance(cpu, int) or isinstance(cpu, bool) or cpu < 1:
        raise _err(
            source,
            "resources.cpu",
            f"{cpu!r} must be a whole number of cores >= 1 (it is also the trial's torch thread count).",
        )
    if (
        isinstance(gpu, bool)
        or not isinstance(gpu, int | float)
        or not (gpu >= 0)
        or math.isinf(gpu)
    ):
        raise _err(
            source,
            "resources.gpu",
            f"{gpu!r} must be a number >= 0 (1: one GPU per trial; 0.5: two trials share one).",
        )
    if gpu > 1 and gpu != int(gpu):
        raise _err(source, "resources.gpu", f"{gpu} GPUs: above 1 use a whole number.")
    return Resources(cpu=int(cpu), gpu=float(gpu))


def check_resources(engine: Any, resources: Resources) -> None:
    """Refuse resources the engine's machine cannot give (e.g. ``cpu`` above this machine's
    cores on the local engine), naming both numbers; engines without a check pass."""
    check = getattr(engine, "check_resources", None)
    if callable(check):
        check(resources)


def _parse_analyses(raw: Any, source: str) -> dict[str, dict[str, Any]]:
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, list):
        if not all(isinstance(a, str) for a in raw):
            raise _err(source, "analyses", "a list must hold analysis names.")
        if len(set(raw)) < len(raw):
            raise _err(source, "analyses", "names an analysis twice; list each once.")
        raw = {a: {} for a in raw}
    if not isinstance(raw, dict):
        raise _err(
            source, "analyses", f"must list names from {sorted(drivers())} or map them to options."
        )
    out: dict[str, dict[str, Any]] = {}
    known = drivers()
    for name, opts in raw.items():
        if name not in known:
            raise _err(
                source,
                "analyses",
                f"{name!r} is not a known analysis; use one of {sorted(known)}.",
            )
        if opts is None:
            opts = {}
        if not isinstance(opts, dict):
            raise _err(
                source, f"analyses.{name}", "options must be a mapping of keyword arguments."
            )
        from tvlens.registry import get

        try:
            get(name).options_class().build(opts)
        except ConfigError as e:
            raise _err(source, f"analyses.{name}", str(e)) from None
        out[name] = dict(opts)
    return out


def drivers() -> dict[str, str]:
    """Analysis name -> ``"module:function"`` of every trained-run driver a sweep can run
    (the entries of :data:`tvlens.registry.ANALYSES` with a driver)."""
    from tvlens.registry import get, names

    return {n: str(get(n).driver) for n in names("trained")}


def _build_trials(spec: SweepSpec) -> list[Trial]:
    from tvlens.models import RunConfig

    src = spec.source
    fields_ = [f for _, f, _, _ in string.Formatter().parse(spec.trial_dir) if f is not None]
    bad = sorted(set(fields_) - set(TRIAL_DIR_FIELDS))
    if bad or any(not f for f in fields_):
        raise _err(
            src,
            "trial_dir",
            f"{spec.trial_dir!r} uses {bad or ['{}']}; use only named fields from {list(TRIAL_DIR_FIELDS)}.",
        )
    trials, seen = [], {}
    grid_axes = [[(key, v) for v in values] for key, values in spec.grid.items()]
    for fam, (mname, msizes), k, seed, point in itertools.product(
        spec.families, spec.models.items(), spec.ks, spec.seeds, itertools.product(*grid_axes)
    ):
        over: dict[str, dict[str, Any]] = {"family": {}, "model": {}, "train": {}}
        for key, v in point:
            section, _, name = key.partition(".")
            over[section][name] = v
        train = dict(spec.train) | over["train"]
        gpu = spec.resources.gpu > 0
        device = str(train.setdefault("device", "cuda" if gpu else "cpu"))
        if gpu and not device.startswith("cuda"):
            raise _err(
                src,
                "train.device",
                f"is {device!r} but resources.gpu={spec.resources.gpu}; set train.device: cuda, or resources.gpu: 0.",
            )
        if device.startswith("cuda") and not gpu:
            raise _err(
                src,
                "train.device",
                f"is {device!r} but resources.gpu is 0 (Ray hides GPUs from trials that request none); set resources.gpu: 1.",
            )
        try:
            cfg = RunConfig.for_family(
                fam,
                family={**spec.family, **over["family"], "k": k, "seed": seed},
                model={**msizes, **over["model"], "seed": seed},
                train={**train, "seed": seed},
            )
        except (ConfigError, TypeError) as e:
            raise ConfigError(
                f"{src}: trial family={fam} model={mname or 'model'} k={k} seed={seed}: {e}"
            ) from None
        label = mname or f"L{cfg.model.n_layers}d{cfg.model.d_model}"
        tid = spec.trial_dir.format(family=fam, model=label, k=k, seed=seed, n_minor=n_minor(k))
        grid = tuple((key.partition(".")[2], v) for key, v in point)
        tid += grid_suffix(grid)
        if "/" in tid or "\\" in tid or tid.startswith(".") or tid in ("", "analyses", "figures"):
            raise _err(
                src,
                "trial_dir",
                f"gives the directory name {tid!r}; it must be one plain name that is not hidden nor 'analyses'/'figures'.",
            )
        if tid in seen:
            raise _err(
                src,
                "trial_dir",
                f"{spec.trial_dir!r} gives {tid!r} to two trials ({seen[tid]} and family={fam} model={label} k={k} seed={seed}); add the axes that vary, e.g. {DEFAULT_TRIAL_DIR!r}.",
            )
        seen[tid] = f"family={fam} model={label} k={k} seed={seed}"
        trials.append(
            Trial(tid, fam, label, k, seed, cfg.to_dict(), spec.analyses, spec.resources, grid)
        )
    return trials


# ----------------------------------------------------------------------------- trial
def run_trial(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Train and analyse one trial in its own run directory; never raises.

    Returns the trial's record (``status`` ``done`` or ``failed``, its axes, seconds, the
    tables each analysis wrote, its headline numbers, and for a failure the error). This is
    the function engines run in their workers; its argument and result are plain data.
    """
    t0 = time.perf_counter()
    out = Path(payload["out"])
    tid = payload["id"]
    final, partial = out / tid, out / PARTIAL / tid
    record: dict[str, Any] = {**payload["axes"], "status": "failed", "seconds": 0.0, "error": ""}
    try:
        if (final / TRIAL_JSON).exists():
            prev = _read_record(final)
            if prev.get("analyses") == _plain(payload["analyses"]):
                return {**prev, "skipped": True}
            # other analyses or options than last time: keep the model, redo the analyses
        record.update(_run_trial(payload, final, partial))
        record["status"] = "done"
    except BaseException as e:  # noqa: BLE001 — a failed trial is reported, never fatal
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        record["error"] = f"{type(e).__name__}: {e}"
        try:
            from tvlens.io import save_text

            save_text(partial / "error.txt", traceback.format_exc())
            record["traceback"] = str(partial / "error.txt")
        except Exception:  # noqa: BLE001 — the record still carries the error
            pass
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def _run_trial(payload: Mapping[str, Any], final: Path, partial: Path) -> dict[str, Any]:
    import torch

    from tvlens.models import RunConfig

    if final.exists():
        adopt(final, partial, payload["config"])
    config = RunConfig.from_dict(payload["config"])
    threads = torch.get_num_threads()
    torch.set_num_threads(int(payload["threads"]))
    try:
        return _run_trial_locked(payload, config, final, partial)
    finally:
        torch.set_num_threads(threads)  # the local engine runs trials in this process


def _run_trial_locked(
    payload: Mapping[str, Any], config: Any, final: Path, partial: Path
) -> dict[str, Any]:
    import torch

    from tvlens.io import fsync_dir, run_lock, save_json

    t0 = time.perf_counter()
    with run_lock(partial, f"tvlens sweep trial {payload['id']}, pid {os.getpid()}"):
        (partial / "error.txt").unlink(missing_ok=True)
        if (partial / TRIAL_JSON).exists():  # re-analysing: drop the tables it wrote before
            prev = _read_record(partial)
            for stem in {t for names in (prev.get("tables") or {}).values() for t in names}:
                (partial / "analyses" / f"{stem}.csv").unlink(missing_ok=True)
            (partial / TRIAL_JSON).unlink()
        run = train_or_resume(config, partial)
        t_train = time.perf_counter() - t0
        tables_written: dict[str, list[str]] = {}
        headline: dict[str, Any] = {}
        for name, opts in payload["analyses"].items():
            tables = call_driver(name, run, opts)
            tables_written[name] = sorted(tables)
            headline.update(headline_for(name, tables, run))
        rec = {
            **payload["axes"],
            "status": "done",
            "train_seconds": round(t_train, 2),
            "seconds": round(time.perf_counter() - t0, 2),
            "error": "",
            "analyses": _plain(payload["analyses"]),
            "tables": tables_written,
            "headline": headline,
            "config": payload["config"],
            "torch_threads": torch.get_num_threads(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": config.train.device,
        }
        rec = _finite(rec)
        save_json(partial / TRIAL_JSON, rec)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)  # the whole run directory appears at once
        fsync_dir(final.parent)
        fsync_dir(partial.parent)
    return rec


def adopt(final: Path, partial: Path, config: Mapping[str, Any]) -> None:
    """Take over a run directory where the trial belongs that needs its analyses run: one
    that ``tvlens train`` or ``tvlens experiment`` wrote (no ``trial.json``), or a finished
    trial whose analyses changed. With the same run config it moves into the staging area,
    where training is reused (or resumed) and the analyses run, then moves back.
    Anything else there is refused rather than overwritten."""
    from tvlens.io import run_lock
    from tvlens.models.train import config_diff

    cfg = final / "config.json"
    if not cfg.exists():
        raise FileExistsError(
            f"{final} exists but is neither a finished trial ({TRIAL_JSON}) nor a run "
            "(config.json); move it away (or delete it) and run the sweep again."
        )
    diff = config_diff(json.loads(cfg.read_text(encoding="utf-8")), json.loads(json.dumps(config)))
    if diff:
        raise FileExistsError(
            f"{final} holds a run with a different config ({'; '.join(diff[:3])}); delete it "
            "or run the sweep into another --out."
        )
    if partial.exists():
        raise FileExistsError(
            f"both {final} and {partial} hold this trial's run; keep one of them (delete the "
            "other) and run the sweep again."
        )
    partial.parent.mkdir(parents=True, exist_ok=True)
    with run_lock(final, f"tvlens sweep adopting {final.name}, pid {os.getpid()}"):
        os.replace(final, partial)
    log.info("adopted the run in %s as trial %s", final, final.name)


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _finite(obj.item())
    return obj


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))


def _read_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / TRIAL_JSON).read_text(encoding="utf-8"))


def train_or_resume(config: Any, run_dir: Path) -> Any:
    """Load the finished run in ``run_dir``, resume an interrupted one, or train a new one."""
    from tvlens.models import list_checkpoints, load_run, train
    from tvlens.models.train import config_diff, has_resume_state

    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        saved = json.loads(cfg_path.read_text(encoding="utf-8"))
        diff = config_diff(saved, json.loads(json.dumps(config.to_dict())))
        if diff:
            raise FileExistsError(
                f"{run_dir} holds a run with a different config ({'; '.join(diff[:3])}); "
                "delete that directory or use another --out."
            )
        if config.train.steps in list_checkpoints(run_dir) and has_resume_state(run_dir):
            return load_run(run_dir, config.train.steps)
        return train(config, run_dir, resume=True, progress=False)
    return train(config, run_dir, progress=False)


def call_driver(name: str, run: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """Run analysis ``name`` on ``run`` with the config's ``options``. The driver writes its
    tables into ``RUN_DIR/analyses`` and picks its own seeds from the run unless the options
    set ``seed``, exactly as ``tvlens demo`` and the experiments call it."""
    from tvlens.registry import run_analyses

    return run_analyses(run, [name], options={name: options})[0]


def headline_for(name: str, tables: Mapping[str, Any], run: Any) -> dict[str, Any]:
    """The numbers of analysis ``name`` that go into the trial's ``results.csv`` row (its
    registry entry's ``headline``)."""
    from tvlens.registry import get

    return get(name).headline_numbers(tables, run)


# ----------------------------------------------------------------------------- sweep
@dataclass
class SweepResult:
    """What a sweep did: every trial's record, and which ran, were skipped or failed."""

    records: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    failed: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed


def completed(out: Path, trials: Iterable[Trial]) -> dict[str, dict[str, Any]]:
    """Records of the trials already complete in ``out`` with the same analyses and options
    (with other analyses a trial keeps its model and re-runs them); a complete trial whose
    run config differs from the sweep's is an error naming the trial and the fix."""
    from tvlens.models.train import config_diff

    done = {}
    for t in trials:
        path = out / t.id / TRIAL_JSON
        if not path.exists():
            continue
        rec = _read_record(out / t.id)
        diff = config_diff(rec.get("config", {}), json.loads(json.dumps(t.config)))
        if diff:
            raise FileExistsError(
                f"{out / t.id} was trained with a different config ({'; '.join(diff[:3])}); "
                "run this sweep into another --out, or delete that trial directory to redo it."
            )
        if rec.get("analyses") != _plain(t.analyses):
            continue  # same model, other analyses: the trial re-runs its analyses only
        done[t.id] = rec
    return done


# ------------------------------------------------------------------- folder ownership
SWEEP_JSON = "sweep.json"
SWEEP_CONFIG_TXT = "sweep_config.txt"
#: what a sweep writes at its top level: moved aside together by ``--force``
SUMMARY_FILES = (
    RESULTS,
    RESULTS_BY_SEED,
    SWEEP_JSON,
    SWEEP_CONFIG_TXT,
    "analyses",
    "figures",
)
#: sweep-config keys whose values may only grow in a rerun (widening a sweep adds trials)
_WIDENING = ("families", "ks", "seeds")
#: sweep-config keys that change how trials run, not what they compute
_EXECUTION = ("resources",)


class SweepFolderError(FileExistsError):
    """``--out`` holds another sweep's summaries, which this sweep would replace."""


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def spec_conflicts(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """How sweep config ``new`` (``SweepSpec.to_dict()``) differs from ``old`` in ways that
    would replace ``old``'s summaries: every field must be equal, except that ``families``,
    ``ks``, ``seeds``, ``models`` and ``grid`` values may gain entries (widening a sweep
    only adds trials) and ``resources`` may change. Empty: ``new`` may run into ``old``'s
    folder."""
    problems = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key in _EXECUTION or a == b:
            continue
        if key in _WIDENING and isinstance(a, list) and isinstance(b, list):
            if all(v in b for v in a):
                continue
        elif key == "models" and isinstance(a, dict) and isinstance(b, dict):
            if all(b.get(m) == v for m, v in a.items()):
                continue
        elif key == "grid" and isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
            if all(v in b[g] for g, vals in a.items() for v in vals):
                continue
        problems.append(f"{key}: {_short(a)} there, {_short(b)} here")
    return problems


def _summary_trials(out: Path) -> list[str]:
    """The trial ids in ``out``'s ``results.csv`` (none if absent or unreadable)."""
    import csv

    try:
        with open(out / RESULTS, newline="", encoding="utf-8") as f:
            return [row["trial"] for row in csv.DictReader(f) if row.get("trial")]
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return []


def folder_conflict(
    out: Path, trials: Sequence[Trial], spec: SweepSpec | None = None
) -> str | None:
    """Why running ``trials`` (of ``spec``, if given) into ``out`` would replace another
    sweep's summaries, or ``None`` when it would not (an empty folder, the same sweep, or
    the same sweep widened)."""
    out = Path(out)
    sweep_json = out / SWEEP_JSON
    if spec is not None and sweep_json.exists():
        try:
            old = json.loads(sweep_json.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            return f"{sweep_json} is unreadable ({e}), so it cannot be told whose folder this is"
        if not isinstance(old, dict):
            return f"{sweep_json} is not a sweep config (a {type(old).__name__})"
        new = json.loads(json.dumps(spec.to_dict()))
        diff = spec_conflicts(old, new)
        if diff:
            old_cfg = out / SWEEP_CONFIG_TXT
            where = old_cfg if old_cfg.exists() else sweep_json
            return (
                f"{out} holds the sweep {old.get('name')!r} (config: {where}), and "
                f"{spec.source} is the sweep {spec.name!r} with a different config "
                f"({'; '.join(diff[:4])})"
            )
    ids = {t.id for t in trials}
    lost = [tid for tid in _summary_trials(out) if tid not in ids]
    if lost:
        shown = ", ".join(lost[:4]) + (f" and {len(lost) - 4} more" if len(lost) > 4 else "")
        source = f"{spec.source} (sweep {spec.name!r})" if spec is not None else "this sweep"
        return (
            f"{out / RESULTS} holds {len(lost)} trial(s) that {source} does not have "
            f"({shown}); its summary would replace theirs"
        )
    return None


def _refusal(reason: str) -> SweepFolderError:
    return SweepFolderError(
        f"{reason}. A sweep folder belongs to one sweep: run this one into a new --out, or "
        "pass --force to move the old summaries (results.csv, sweep.json, analyses/, "
        "figures/ ...) aside into a timestamped folder inside it (nothing is deleted)."
    )


def move_aside(out: Path, trials: Sequence[Trial] = ()) -> Path | None:
    """Move ``out``'s sweep summaries (:data:`SUMMARY_FILES`) and the trial directories of
    ``trials`` trained with another run config into ``out/replaced-YYYYmmdd-HHMMSS/``; the
    folder moved into, or ``None`` if there was nothing to move. Nothing is deleted."""
    from tvlens.models.train import config_diff

    out = Path(out)
    moving = [out / name for name in SUMMARY_FILES if (out / name).exists()]
    for t in trials:
        rec_path = out / t.id / TRIAL_JSON
        if rec_path.exists():
            rec = _read_record(out / t.id)
            if config_diff(rec.get("config", {}), json.loads(json.dumps(t.config))):
                moving.append(out / t.id)
    if not moving:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = out / f"replaced-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = out / f"replaced-{stamp}-{n}"
    dest.mkdir()
    for path in moving:
        os.replace(path, dest / path.name)
    log.warning("moved the previous sweep's %s aside into %s", [p.name for p in moving], dest)
    return dest


def run_sweep(
    spec: SweepSpec,
    out: Path | str,
    engine: Any = None,
    *,
    progress: bool = True,
    config_text: str | None = None,
    force: bool = False,
) -> SweepResult:
    """Run every missing trial of ``spec`` on ``engine`` (default: the local engine), then
    write ``OUT/results.csv`` over all trials and the across-k tables and figures.

    Complete trials are skipped; failures are recorded and do not stop the others. ``out``
    belongs to one sweep: another config (other than a widened one, see
    :func:`spec_conflicts`) is refused with :class:`SweepFolderError`, unless ``force``,
    which first moves the old summaries aside (:func:`move_aside`).
    """
    out = Path(out)
    extra = {SWEEP_JSON: json.dumps(spec.to_dict(), indent=2) + "\n"}
    if config_text is not None:
        extra[SWEEP_CONFIG_TXT] = config_text
    return run_trials(
        spec.trials(),
        out,
        engine,
        name=spec.name,
        progress=progress,
        files=extra,
        spec=spec,
        force=force,
    )


def run_trials(
    trials: Sequence[Trial],
    out: Path | str,
    engine: Any = None,
    *,
    name: str = "sweep",
    progress: bool = True,
    files: Mapping[str, str] | None = None,
    spec: SweepSpec | None = None,
    force: bool = False,
) -> SweepResult:
    """Run the missing ``trials`` into ``out`` (see :func:`run_sweep`), for callers that
    build their trials themselves, e.g. an experiment with its own directory names
    (``Trial(id="k2", ...)``). ``files`` are written into ``out`` first (name -> text).

    A folder whose ``results.csv`` lists trials that ``trials`` lacks (or whose
    ``sweep.json`` is another ``spec``) is refused before anything is written, unless
    ``force`` moves its summaries aside: a summary is never replaced by a subset."""
    from tvlens.experiments.engines import LocalEngine
    from tvlens.io import run_lock, save_text

    out = Path(out)
    engine = engine or LocalEngine()
    trials = list(trials)
    if not trials:
        raise ValueError("no trials to run; list at least one k, seed and family.")
    ids = [t.id for t in trials]
    if len(set(ids)) < len(ids):
        raise ValueError(
            f"trial ids must be unique; {sorted({i for i in ids if ids.count(i) > 1})} repeat."
        )
    resources = trials[0].resources
    if any(t.resources != resources for t in trials):
        raise ValueError("every trial of one sweep must ask for the same resources.")
    check_resources(engine, resources)
    conflict = None if force else folder_conflict(out, trials, spec)
    if conflict:  # before the lock: a running sweep's folder gets this message too
        raise _refusal(conflict)
    t0 = time.perf_counter()
    with run_lock(out, f"tvlens sweep {name}, pid {os.getpid()}"):
        conflict = folder_conflict(out, trials, spec)
        if conflict and not force:
            raise _refusal(conflict)
        if conflict:
            move_aside(out, trials)
        for fname, text in (files or {}).items():
            save_text(out / fname, text)
        done = completed(out, trials)
        todo = [t for t in trials if t.id not in done]
        records = dict(done)
        bar = _Progress(len(todo), len(done), name, enabled=progress)
        try:
            for tid, rec in engine.run(
                # absolute: a Ray worker on another node does not start in our directory
                [t.to_payload(out.absolute()) for t in todo],
                run_trial,
                bar.update,
                resources,
            ):
                records[tid] = rec
                if rec.get("status") != "done":
                    log.warning("trial %s failed: %s", tid, rec.get("error"))
        finally:
            bar.close()
            # results.csv over every trial, written even when interrupted
            ordered = [records[t.id] for t in trials if t.id in records]
            write_results(out, ordered, list(dict.fromkeys(n for t in trials for n, _ in t.grid)))
        if any("two_modes" in t.analyses for t in trials):
            finish_two_modes(out, trials, records)
        try:  # nothing in progress any more: drop the empty staging directory
            (out / PARTIAL).rmdir()
        except OSError:
            pass  # absent, or it keeps failed trials' partial runs and error.txt
    failed = [t.id for t in trials if records.get(t.id, {}).get("status") != "done"]
    return SweepResult(
        records=[records[t.id] for t in trials if t.id in records],
        ran=[t.id for t in todo],
        skipped=[t.id for t in trials if t.id in done],
        failed=failed,
        seconds=time.perf_counter() - t0,
    )


def write_results(out: Path, records: list[dict[str, Any]], grid: Sequence[str] = ()) -> Any:
    """``OUT/results.csv``: one row per trial (axes, ``grid`` columns, status, seconds,
    error, headline)."""
    import pandas as pd

    from tvlens.io import save_csv

    rows = []
    for rec in records:
        row = {key: rec.get(key) for key in (*AXES, *grid)}
        row["status"] = rec.get("status")
        row["seconds"] = rec.get("seconds")
        row["train_seconds"] = rec.get("train_seconds")
        row["error"] = rec.get("error", "")
        row.update(rec.get("headline") or {})
        rows.append(row)
    df = pd.DataFrame(rows)
    save_csv(out / RESULTS, df)
    seeds = seed_summary(df, grid)
    if seeds is not None:
        save_csv(out / RESULTS_BY_SEED, seeds)
    return df


def seed_summary(results: Any, grid: Sequence[str] = ()) -> Any:
    """The training-seed interval of every headline number: complete trials grouped by
    every axis but the seed, with ``<col>_mean``, ``<col>_sd`` and ``n_seeds`` per group
    (``OUT/results_seeds.csv``); ``None`` when no group holds two seeds."""
    import pandas as pd

    done = results[results["status"] == "done"] if "status" in results else results
    keys = [c for c in ("family", "model", "k", "n_minor", *grid) if c in done]
    if done.empty or not keys or done.groupby(keys)["seed"].nunique().max() < 2:
        return None
    skip = {*AXES, *grid, "status", "seconds", "train_seconds", "error"}
    numeric = [c for c in done.columns if c not in skip and pd.api.types.is_numeric_dtype(done[c])]
    g = done.groupby(keys, sort=False)[numeric]
    out = g.mean().add_suffix("_mean").join(g.std().add_suffix("_sd"))
    out = out[[f"{c}_{s}" for c in numeric for s in ("mean", "sd")]]
    out.insert(0, "n_seeds", done.groupby(keys, sort=False)["seed"].nunique())
    return out.reset_index()


def finish_two_modes(out: Path, trials: list[Trial], records: Mapping[str, dict]) -> None:
    """Across-k tables and figures for every (family, model, seed) group of complete trials.

    One group (the ``tvlens experiment two-modes`` case) writes ``OUT/analyses/*.csv`` and
    ``OUT/figures`` exactly as that experiment does. Several groups write their tables
    stacked (with family, model and seed columns) and figures per group in
    ``OUT/figures/<family>_<model>_s<seed>/``.
    """
    import pandas as pd

    from tvlens.analyses.common import save_tables
    from tvlens.registry import get
    from tvlens.viz.common import write_figures

    across_k = get("two_modes").across_function()
    figures = _two_modes_figures()
    groups: dict[tuple, list[Trial]] = {}
    for t in trials:
        if records.get(t.id, {}).get("status") == "done":
            groups.setdefault((t.family, t.model, t.seed, t.grid), []).append(t)
    if not groups:
        return
    results = pd.read_csv(out / RESULTS)
    stacked: dict[str, list[pd.DataFrame]] = {}
    for (fam, model, seed, grid), members in groups.items():
        per_k = {t.k: _load_tables(out / t.id) for t in members}
        tables = across_k(per_k)
        sel = (results["family"] == fam) & (results["model"] == model) & (results["seed"] == seed)
        for name, v in grid:
            sel &= results[name] == v
        res = results[sel & (results["status"] == "done")]
        fig_dir = out / "figures"
        if len(groups) > 1:
            fig_dir = fig_dir / (f"{fam}_{model}_s{seed}" + grid_suffix(grid))
        write_figures({**tables, "results": res}, fig_dir, figures)
        for t in members:
            best = int(res.loc[res["trial"] == t.id, "best_layer"].iloc[0])
            pts = per_k[t.k]["geometry_points"]
            write_figures(
                {"geometry_points": pts[pts["layer"] == best]}, fig_dir, figures, f"k{t.k}_"
            )
        for name, df in tables.items():
            if len(groups) > 1:
                df = df.assign(family=fam, model=model, seed=seed, **dict(grid))
            stacked.setdefault(name, []).append(df)
    save_tables({n: pd.concat(v, ignore_index=True) for n, v in stacked.items()}, out / "analyses")


def _load_tables(run_dir: Path) -> dict[str, Any]:
    """A run directory's ``analyses/*.csv`` tables, by name."""
    import pandas as pd

    return {p.stem: pd.read_csv(p) for p in sorted((run_dir / "analyses").glob("*.csv"))}


def _two_modes_figures() -> dict[str, Callable[..., Any]]:
    """Table -> figure function for the two-modes tables, per run and across k."""
    try:
        from tvlens.registry import figure_functions
    except ImportError:
        from tvlens.viz.geometry import FIGURES as GEOMETRY
        from tvlens.viz.steering import FIGURES as STEERING

        return {**GEOMETRY, **STEERING}
    return figure_functions(["two_modes", "two_modes_sweep"])


class _Progress:
    """A tqdm bar over the trials to run: done / running / failed, and tqdm's ETA.

    The bar hides itself when stderr is not a terminal (tqdm's ``disable=None``); every
    finished trial is also logged with the counts and the estimated time left, so a batch
    job's log shows the progress too.
    """

    def __init__(
        self, total: int, skipped: int, name: str, enabled: bool = True, file: Any = None
    ) -> None:
        from tqdm.auto import tqdm

        self.done = self.failed = self.running = 0
        self.total, self.skipped = total, skipped
        disable = (False if file is not None else None) if enabled else True
        self.bar = tqdm(total=total, desc=f"sweep {name}", unit="trial", disable=disable, file=file)
        self.t0 = time.perf_counter()
        self._post()

    def _post(self) -> None:
        self.bar.set_postfix_str(
            f"done={self.done} running={self.running} failed={self.failed} skipped={self.skipped}",
            refresh=True,
        )

    def eta(self) -> float | None:
        """Seconds left at the mean rate so far (None before the first trial ends)."""
        n = self.done + self.failed
        if not n:
            return None
        return (self.total - n) * (time.perf_counter() - self.t0) / n

    def update(self, event: str, record: Mapping[str, Any] | None = None, running: int = 0) -> None:
        """``event``: ``"running"`` (count changed) or ``"finished"`` (one trial ended)."""
        self.running = running
        if event == "finished" and record is not None:
            if record.get("status") == "done":
                self.done += 1
            else:
                self.failed += 1
            self.bar.update(1)
            eta = self.eta()
            log.info(
                "trial %s %s: %d/%d finished (%d failed), %d running, ETA %s",
                record.get("trial"),
                record.get("status"),
                self.done + self.failed,
                self.total,
                self.failed,
                self.running,
                "?" if eta is None else f"{eta:.0f} s",
            )
        self._post()

    def close(self) -> None:
        self.bar.close()
