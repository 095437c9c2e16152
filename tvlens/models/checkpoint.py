"""Checkpoints: one self-verifying safetensors file each, written atomically.

A checkpoint ``step_000123.safetensors`` holds the tensors and, in the safetensors header
metadata, everything else as JSON (step, config, ...) plus a SHA-256 over the tensor
header, that JSON and the tensor bytes. It is written to a temporary file, fsync-ed and
renamed into place (:mod:`tvlens.io`), so a checkpoint is one atomic unit: it exists
completely or not at all, and truncation, byte flips or edited metadata are detected on
load. Nothing is ever unpickled.

Format version 1 (tensors in ``NAME.safetensors`` plus a ``NAME.json`` sidecar carrying the
hash) is still read, so older run directories keep loading.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from tvlens.io import atomic_write_bytes, save_text

FORMAT = "tvlens-checkpoint"
FORMAT_VERSION = 2
SUFFIX = ".safetensors"
KEY = "tvlens"  # the one safetensors metadata key: JSON with format, version, sha256, meta


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or from another model."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (kept for callers; see :func:`tvlens.io.save_text`)."""
    save_text(path, text)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def foreign_format(head: bytes) -> str | None:
    """What a file that starts with ``head`` is, if it is a known non-safetensors format
    (a pickle, a ``torch.save`` zip, a GGUF, ...); ``None`` otherwise."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "looks like a pickle (e.g. torch.save's legacy format)"
    if head[:4] == b"PK\x03\x04":
        return "looks like a zip archive, as torch.save writes: a pickle inside"
    if head[:4] == b"GGUF":
        return "is a GGUF model file"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "is an HDF5 file"
    if head[:6] == b"\x93NUMPY":
        return "is a NumPy .npy file"
    return None


def _split(blob: bytes, where: Path) -> tuple[dict[str, Any], bytes]:
    """The safetensors header (as a dict) and the tensor byte buffer of ``blob``."""
    what = foreign_format(blob[:8])
    foreign = CheckpointError(
        f"{where} is not a tvlens checkpoint ({what}); tvlens never unpickles files. Use "
        "another step, or retrain; a checkpoint is the .safetensors file tvlens writes."
    )
    if len(blob) < 8:
        raise CheckpointError(f"{where} is truncated ({len(blob)} bytes); use another step.")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:  # a header length read from another format's magic bytes
        if what is not None:
            raise foreign
        raise CheckpointError(f"{where} is truncated (header of {n} bytes cut off).")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if what is not None:
            raise foreign from None
        raise CheckpointError(f"{where} has a corrupt header ({e}); use another step.") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} has a corrupt header; use another step.")
    return header, blob[8 + n :]


def _digest(header: Mapping[str, Any], meta_json: str, data: bytes) -> str:
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    h = hashlib.sha256(json.dumps(tensors, sort_keys=True).encode())
    h.update(b"\0" + meta_json.encode() + b"\0")
    h.update(data)
    return h.hexdigest()


def checkpoint_path(stem: Path | str) -> Path:
    """``stem`` (with or without a suffix) as the checkpoint's ``.safetensors`` path."""
    stem = Path(stem)
    if stem.suffix in (".json", SUFFIX):
        stem = stem.with_suffix("")
    return stem.with_suffix(SUFFIX)


def save_checkpoint(stem: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``stem.safetensors`` (tensors + ``meta`` + SHA-256) atomically; return its path.

    The header carries one metadata key, ``tvlens``, so the file's bytes are a pure function
    of ``tensors`` and ``meta`` (safetensors orders several keys at random). Any legacy
    ``stem.json`` sidecar is removed afterwards, so one checkpoint never has two versions.
    """
    path = checkpoint_path(stem)
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta_json = json.dumps(dict(meta))
    header, data = _split(st_save(contiguous), path)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sha256": _digest(header, meta_json, data),
        "meta": meta_json,
    }
    blob = st_save(contiguous, metadata={KEY: json.dumps(record)})
    atomic_write_bytes(path, blob)
    path.with_suffix(".json").unlink(missing_ok=True)
    return path


def read_meta(stem: Path | str) -> dict[str, Any]:
    """The verified metadata of a checkpoint, without building its tensors."""
    return load_checkpoint(stem, tensors=False)[1]


def checkpoint_sha256(stem: Path | str) -> str:
    """The SHA-256 a checkpoint records for itself (v1: the tensor file's hash)."""
    return read_meta(stem)["sha256"]


def load_checkpoint(
    stem: Path | str, *, tensors: bool = True
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; raise :class:`CheckpointError` with the fix on failure.

    Returns ``(tensors, meta)``; ``meta`` carries ``sha256``. With ``tensors=False`` the
    file is still verified but no tensors are built (``{}`` is returned for them).
    """
    path = checkpoint_path(stem)
    sidecar = path.with_suffix(".json").exists()
    if not path.exists():
        if sidecar:
            raise CheckpointError(f"{path} is missing; the checkpoint is incomplete.")
        raise CheckpointError(
            f"no checkpoint at {path}; an interrupted save leaves none — point at another "
            "step or retrain."
        )
    blob = path.read_bytes()
    try:
        header, data = _split(blob, path)
    except CheckpointError:
        if sidecar:
            return _load_v1(path, tensors)
        raise
    try:
        info = json.loads((header.get("__metadata__") or {}).get(KEY, "null"))
    except (json.JSONDecodeError, TypeError):
        info = None
    if not isinstance(info, dict):
        if sidecar:
            return _load_v1(path, tensors)
        raise CheckpointError(
            f"{path} is not a tvlens checkpoint (no {KEY!r} record in its header); load it "
            "with the tool that wrote it."
        )
    if info.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a tvlens checkpoint (format={info.get('format')!r}); load it "
            "with the tool that wrote it."
        )
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {info.get('format_version')!r}; this "
            f"tvlens reads {FORMAT_VERSION} — upgrade tvlens or retrain."
        )
    meta_json = info.get("meta")
    if not isinstance(meta_json, str) or _digest(header, meta_json, data) != info.get("sha256"):
        raise CheckpointError(
            f"{path} does not match the SHA-256 it records: the file is truncated, corrupt "
            "or was edited. Use another checkpoint step or retrain."
        )
    try:
        meta = json.loads(meta_json)
        out = st_load(blob) if tensors else {}
    except (json.JSONDecodeError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path} could not be read as safetensors ({e}).") from e
    meta["sha256"] = info["sha256"]
    return out, meta


def _load_v1(path: Path, tensors: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
    json_path = path.with_suffix(".json")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{json_path} is not valid JSON ({e}); the file is corrupt.") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"{json_path} is not a tvlens checkpoint (format={fmt!r}); load it with the tool "
            "that wrote it."
        )
    if meta.get("format_version", 0) != 1:
        raise CheckpointError(
            f"{json_path} has format version {meta.get('format_version')!r}, but a JSON "
            "sidecar belongs to version 1; the checkpoint is mixed up — retrain."
        )
    if not path.exists():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete.")
    if _sha256(path) != meta.get("sha256"):
        raise CheckpointError(
            f"{path} does not match the SHA-256 recorded in {json_path.name}: the file is "
            "truncated or corrupt. Use another checkpoint step or retrain."
        )
    if not tensors:
        return {}, meta
    try:
        blob = path.read_bytes()
        return st_load(blob), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} could not be read as safetensors ({e}).") from e


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
