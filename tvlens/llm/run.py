"""An LLM run: a pretrained model (a TransformerBridge) and the folder its analyses write.

:class:`LLMRun` is the pretrained counterpart of a trained :class:`~tvlens.models.Run`:
every LLM analysis is a registered driver (:mod:`tvlens.registry`, ``kind = "llm"``) run with
:func:`tvlens.run_analyses`, and writes its tables through :mod:`tvlens.io` with a
provenance record (model, weights hash, template, seed, the analysis and its options).
``tvlens llm`` is "load, then ``run_analyses``".

Layout (the same as a synthetic run's, so ``tvlens report RUN_DIR`` works on both)::

    RUN_DIR/config.json                 kind "llm", model, settings, each analysis's options,
                                        library versions and the wall time of each analysis
    RUN_DIR/analyses/llm_*.csv          the tables (see each analysis's registry entry)
    RUN_DIR/analyses/provenance.json    where every table came from
    RUN_DIR/function_vectors.safetensors  one function vector per task

Example::

    from tvlens import run_analyses
    from tvlens.llm import LLMRun, load

    run = LLMRun(load("smollm2"), "runs/llm/smollm2", name="smollm2")
    tables, seconds = run_analyses(run, ["task_vectors"], options={"task_vectors": {"layers": [15]}})
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Mapping
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from tvlens.llm.config import LLMSettings, resolve_template

log = logging.getLogger(__name__)

#: files an LLM run writes besides ``config.json`` (removed when a run starts afresh)
RUN_FILES = ("function_vectors.safetensors",)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("tvlens", "transformer-lens", "transformers", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


def weights_sha256(name_or_path: str | Path) -> str | None:
    """A content hash of a model's weights, from the SHA-256s that tvlens recorded when it
    converted or installed them (``tvlens_manifest.json``); ``None`` for a model without
    one (a hub id or a plain HF folder: its files are not hashed here)."""
    from tvlens.llm.weights import REGISTRY, cache_root, read_manifest

    name = str(name_or_path)
    folder = cache_root() / "models" / name if name in REGISTRY else Path(name)
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        return None
    files = sorted((n, r["sha256"]) for n, r in manifest["files"].items())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


class LLMRun:
    """A pretrained model and the run directory its analyses write.

    ``model`` is a bridge from :func:`tvlens.llm.load`; ``name`` is what it was loaded
    from (a registered name, a folder, a hub id), recorded with its weights hash;
    ``settings`` (:class:`~tvlens.llm.config.LLMSettings` or a mapping of its fields) say how
    every analysis writes and scores prompts. With ``fresh=True`` (the default) the tables of
    an earlier run in ``run_dir`` are removed first, so the folder only holds this run's.
    """

    kind = "llm"

    def __init__(
        self,
        model: Any,
        run_dir: str | Path,
        *,
        name: str = "?",
        settings: LLMSettings | Mapping[str, Any] | None = None,
        fresh: bool = True,
    ) -> None:
        s = LLMSettings.build(settings)
        self.model = model
        self.dir = Path(run_dir)
        self.name = str(name)
        self.settings = replace(s, template=resolve_template(s.template, self.name))
        #: expensive intermediate results shared by this run's analyses (geometry reuses
        #: decodability's query states); never written
        self.cache: dict[Any, Any] = {}
        self._weights = weights_sha256(self.name)
        self._fresh = fresh  # cleared when the first analysis starts (see record)
        cfg = model.cfg
        self.meta: dict[str, Any] = {
            "kind": "llm",
            "model": {
                "name": self.name,
                "weights_sha256": self._weights,
                "n_layers": int(cfg.n_layers),
                "n_heads": int(cfg.n_heads),
                "d_model": int(cfg.d_model),
                "dtype": str(getattr(cfg, "dtype", "?")),
                "device": str(getattr(cfg, "device", "?")),
            },
            "settings": self.settings.to_dict(),
            "analyses": {},
            "versions": _versions(),
            "timings_s": {},
        }

    # ------------------------------------------------------------------ prompt settings
    @property
    def template(self) -> str:
        return self.settings.template

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def prompt_kwargs(self) -> dict[str, Any]:
        """The settings every prompt-level function takes: template, seed, batch size."""
        s = self.settings
        return {"template": s.template, "seed": s.seed, "batch_size": s.batch_size}

    # ----------------------------------------------------------------------- provenance
    @property
    def source(self) -> dict[str, Any]:
        """What every table of this run is computed from (its provenance ``source``)."""
        s = self.settings
        return {
            "model": self.name,
            "weights_sha256": self._weights,
            "template": s.template,
            "seed": s.seed,
            "mode": s.mode,
            "point": s.point,
        }

    def record(self, analysis: str, options: Any) -> None:
        """Record ``analysis``'s options in ``config.json`` as it starts. The first call
        also clears an earlier run's tables (with ``fresh=True``): only once every option has
        been validated, so a typo never costs the previous results."""
        if self._fresh:  # a rerun must not leave tables of analyses it did not redo
            stale = [*(self.dir / "analyses").glob("llm_*.csv"), *map(self.dir.joinpath, RUN_FILES)]
            for path in [*stale, self.dir / "analyses" / "provenance.json"]:
                path.unlink(missing_ok=True)
            self._fresh = False
        self.meta["analyses"][analysis] = options.to_dict()
        self._write_meta()

    def record_timing(self, analysis: str, seconds: float) -> None:
        self.meta["timings_s"][analysis] = seconds
        self._write_meta()

    def _write_meta(self) -> None:
        from tvlens.io import save_json

        self.dir.mkdir(parents=True, exist_ok=True)
        save_json(self.dir / "config.json", self.meta, default=str)

    def __repr__(self) -> str:
        return f"LLMRun({self.name!r}, {str(self.dir)!r}, template={self.template!r})"


def summary(tables: Mapping[str, pd.DataFrame], run: Any = None) -> pd.DataFrame:
    """One line per headline number of a run's tables (the registry entries' headlines)."""
    from tvlens.registry import ANALYSES

    rows = []
    for entry in ANALYSES.values():
        if entry.kind == "llm" and entry.headline and set(entry.tables) & set(tables):
            rows.extend(entry.headline_numbers(tables, run).items())
    return pd.DataFrame(rows, columns=["measure", "value"])


def run_llm(
    model: Any,
    run_dir: str | Path,
    config: Mapping[str, Any] | None = None,
    model_name: str = "?",
    progress: bool = False,
) -> dict[str, pd.DataFrame]:
    """Deprecated: ``run_analyses(LLMRun(model, run_dir, name=...), names, options=...)``.

    ``config`` maps ``"settings"`` to :class:`LLMSettings` fields, ``"analyses"`` to the
    names to run, and each analysis name to its options."""
    import warnings

    from tvlens.registry import LLM, run_analyses

    warnings.warn(
        "run_llm is deprecated; use tvlens.run_analyses(LLMRun(model, run_dir, name=...), ...)",
        DeprecationWarning,
        stacklevel=2,
    )
    cfg = dict(config or {})
    names = list(cfg.pop("analyses", LLM))
    run = LLMRun(model, run_dir, name=model_name, settings=cfg.pop("settings", None))
    return run_analyses(run, names, options=cfg, progress=progress)[0]
