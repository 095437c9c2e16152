"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint ``step_000123`` is two files: ``step_000123.safetensors`` and
``step_000123.json``. The JSON is written last and records the SHA-256 of the tensor file,
so a checkpoint exists only once both are complete, and truncation or corruption is
detected on load. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT = "tvlens-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or from another model."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    _atomic_write_bytes(Path(path), text.encode())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(stem: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``stem.safetensors`` then ``stem.json`` atomically; return the JSON path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    st_path = stem.with_suffix(".safetensors")
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{st_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(contiguous, tmp, metadata={"format": FORMAT})
        os.replace(tmp, st_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tensors": st_path.name,
        "sha256": _sha256(st_path),
        **meta,
    }
    json_path = stem.with_suffix(".json")
    atomic_write_text(json_path, json.dumps(record, indent=2))
    return json_path


def load_checkpoint(stem: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; raise :class:`CheckpointError` with the fix on failure."""
    stem = Path(stem)
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    json_path, st_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    if not json_path.exists():
        raise CheckpointError(
            f"no checkpoint at {stem} ({json_path.name} is missing); an interrupted save "
            "leaves no JSON — point at another step or retrain."
        )
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{json_path} is not valid JSON ({e}); the file is corrupt.") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{json_path} is not a tvlens checkpoint (format={meta.get('format') if isinstance(meta, dict) else None!r}); "
            "load it with the tool that wrote it."
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{json_path} has format version {meta['format_version']}, newer than this tvlens "
            f"({FORMAT_VERSION}); upgrade tvlens."
        )
    if not st_path.exists():
        raise CheckpointError(f"{st_path} is missing; the checkpoint is incomplete.")
    if _sha256(st_path) != meta.get("sha256"):
        raise CheckpointError(
            f"{st_path} does not match the SHA-256 recorded in {json_path.name}: the file is "
            "truncated or corrupt. Use another checkpoint step or retrain."
        )
    try:
        tensors = load_file(st_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{st_path} could not be read as safetensors ({e}).") from e
    return tensors, meta


def load_module_state(module: torch.nn.Module, tensors: Mapping[str, Tensor], where: str) -> None:
    """Load ``tensors`` into ``module`` strictly, naming mismatched keys and shapes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    bad_shapes = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or extra or bad_shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{'…' if len(extra) > 5 else ''}")
        if bad_shapes:
            parts.append("shape mismatch " + "; ".join(bad_shapes[:5]))
        raise CheckpointError(
            f"{where} does not fit this model ({', '.join(parts)}); it was saved from a "
            "different config — load it with the run's own config.json."
        )
    module.load_state_dict(dict(tensors), strict=True)
