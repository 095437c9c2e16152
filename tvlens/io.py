"""Safe file writes for everything tvlens saves: atomic, durable, umask-respecting, locked.

Every file tvlens writes goes through :func:`atomic_write_bytes` (or one of the
``save_*`` helpers built on it):

1. the bytes go to a temporary file ``.NAME.XXXXXXXX.tmp`` in the same directory, created
   with mode ``0o666`` so the process umask applies exactly as for an ordinary file (644
   under umask 022; ``tempfile.mkstemp`` would force 600);
2. the file is flushed and ``fsync``-ed, then ``os.replace``-d over ``NAME`` and the
   directory is ``fsync``-ed, so after a crash ``NAME`` is either the old or the new
   content, never a mix;
3. a full disk raises :class:`DiskFullError` ("no space left in DIR; kept: ...") instead of
   a raw ``OSError [Errno 28]``, and the temporary file is removed.

A run directory has one writer at a time: :func:`run_lock` takes an exclusive
``fcntl.flock`` on ``DIR/.tvlens.lock`` and refuses a second writer with
:class:`RunLockedError`, naming the process that holds it. Temporaries left behind by a
killed writer are removed by :func:`clean_stale_tmp` when the lock is taken.

Results can say where they came from: ``save_csv(path, df, source={"step": 1500, ...})``
records ``source`` and the file's SHA-256 in ``provenance.json`` beside it, and logs a
warning when it overwrites a file that came from a different source (another
checkpoint), so that never happens silently. ``tvlens check`` reads these records.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "LOCK_NAME",
    "PROVENANCE",
    "DiskFullError",
    "RunLockedError",
    "atomic_path",
    "atomic_write_bytes",
    "clean_stale_tmp",
    "fsync_dir",
    "read_provenance",
    "run_lock",
    "save_csv",
    "save_json",
    "save_text",
]

log = logging.getLogger(__name__)

LOCK_NAME = ".tvlens.lock"
PROVENANCE = "provenance.json"
_TMP_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_HELD: dict[Path, int] = {}  # run directories this process has locked -> nesting depth


class DiskFullError(RuntimeError):
    """The disk (or quota) filled up while writing; nothing already on disk was damaged."""


class RunLockedError(RuntimeError):
    """Another process is writing to this run directory."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _is_no_space(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return True
    # safetensors and some C extensions wrap ENOSPC in their own exception types
    return "No space left on device" in str(e) or "Disk quota exceeded" in str(e)


def _disk_full(path: Path, e: BaseException) -> DiskFullError:
    kept = (
        f"the previous {path.name} unchanged" if path.exists() else f"no {path.name} (none existed)"
    )
    return DiskFullError(
        f"no space left in {path.parent} while writing {path.name}; kept: {kept}, and every "
        "file written before it. Free some space (or choose another directory) and run again "
        "— a training run continues with --resume."
    )


def fsync_dir(directory: Path) -> None:
    """``fsync`` a directory so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success, fsync it and move it into place.

    For writers that insist on a file name (e.g. ``safetensors.torch.save_file``). The body
    must create the file; it is created with the writer's own mode, which follows the umask.
    On any error the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _is_no_space(e):
            raise _disk_full(path, e) from e
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; the file mode follows the umask."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # O_EXCL: never follow or reuse an existing file; 0o666 & ~umask, like open(..., "w")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return path


def save_text(
    path: Path | str, text: str, *, source: dict | None = None, record: dict | None = None
) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; ``source`` (what it was computed from)
    and ``record`` (e.g. the analysis and its options) go to its provenance record."""
    path = Path(path)
    if source is None and record is None:
        return atomic_write_bytes(path, text.encode("utf-8"))
    prov = read_provenance(path.parent)
    old = prov.get(path.name, {}).get("source")
    if path.exists() and old is not None and old != source:
        log.warning(
            "overwriting %s (computed from %s) with one computed from %s", path, old, source
        )
    data = text.encode("utf-8")
    atomic_write_bytes(path, data)
    prov[path.name] = {
        "source": source,
        "sha256": hashlib.sha256(data).hexdigest(),
        **(record or {}),
    }
    save_json(path.parent / PROVENANCE, prov, sort_keys=True)
    return path


def save_json(
    path: Path | str, obj: Any, *, source: dict | None = None, **dumps_kwargs: Any
) -> Path:
    """Write ``obj`` as indented JSON (``allow_nan=False``: NaN is not JSON) atomically."""
    kwargs = {"indent": 2, "allow_nan": False, **dumps_kwargs}
    return save_text(path, json.dumps(obj, **kwargs) + "\n", source=source)


def save_csv(
    path: Path | str, df: pd.DataFrame, *, source: dict | None = None, record: dict | None = None
) -> Path:
    """Write ``df`` as CSV without the index, atomically, with its provenance
    (:func:`save_text`)."""
    return save_text(path, df.to_csv(index=False), source=source, record=record)


def read_csv(path: Path | str, **kwargs: Any) -> pd.DataFrame:
    """A table tvlens wrote, read back as written: only empty cells and ``nan`` are missing.

    pandas' default also reads the *strings* ``null``, ``NA``, ``None`` … as NaN, which would
    erase the Null task (``task = null``) of the LLM tables.
    """
    return pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"], **kwargs)


def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """``df`` as a GitHub markdown table (floats to ``digits`` places), for the README."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_provenance(directory: Path | str) -> dict[str, dict]:
    """``DIR/provenance.json`` (file name → ``{"source": ..., "sha256": ...}``), or ``{}``."""
    p = Path(directory) / PROVENANCE
    if not p.exists():
        return {}
    try:
        prov = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        log.warning("%s is unreadable (%s); starting a new provenance record", p, e)
        return {}
    return prov if isinstance(prov, dict) else {}


def clean_stale_tmp(directory: Path | str, *, min_age_s: float = 0.0) -> list[Path]:
    """Remove tvlens temporaries (``.NAME.XXXXXXXX.tmp``) under ``directory``; return them.

    Call it only while holding :func:`run_lock` on ``directory`` (so no live writer owns
    them), or with ``min_age_s`` large enough that no write can still be in progress.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    now, removed = time.time(), []
    for p in directory.rglob("*.tmp"):
        if not _TMP_RE.match(p.name) or not p.is_file():
            continue
        try:
            if now - p.stat().st_mtime >= min_age_s:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:
            continue
    return removed


@contextlib.contextmanager
def run_lock(directory: Path | str, purpose: str = "tvlens") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` for the body; refuse if another process holds it.

    The lock is ``fcntl.flock`` on ``DIR/.tvlens.lock``, so the kernel releases it when the
    holder exits, even on ``kill -9``; a stale lock file never blocks. The file records the
    holder's pid and ``purpose`` for the error message. Stale temporaries from a killed
    writer are removed once the lock is held. Nested calls in the holding process are free.
    """
    import fcntl

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"{directory} is a file, not a directory; choose another output directory."
        )
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield directory / LOCK_NAME
        finally:
            _HELD[key] -= 1
        return
    lock_path = directory / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise RunLockedError(
                f"{directory} is in use by {holder}; two writers would mix their files. Wait "
                "for it to finish, or write to another directory."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({purpose})".encode(), 0)
        clean_stale_tmp(directory)
        _HELD[key] = 1
        try:
            yield lock_path
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing the descriptor releases the flock
