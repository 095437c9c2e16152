"""Pretrained LLMs through TransformerBridge, and shipped natural-language ICL tasks.

``load`` boots a HF model as a TransformerLens bridge and :class:`LLMRun` pairs it with the
folder its analyses write; the analyses are registered drivers (``analyse_icl``,
``analyse_task_vectors``, ``analyse_function_vectors``, ``analyse_decodability``,
``analyse_geometry``) run with :func:`tvlens.run_analyses`, each with its options dataclass
(:mod:`tvlens.llm.config`). ``load_task`` / ``load_tasks`` read the shipped task files;
``icl_table``, ``task_vector_table``, ``function_vector_analysis``,
``decodability_by_shots``, ``pca_table`` and ``mixture_geometry`` are the functions behind
the drivers. Names other than ``load`` are imported lazily so that ``import tvlens.llm``
(and the CLI) stays cheap.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# eager, so that the attribute ``tvlens.llm.load`` is the function, not its module
from tvlens.llm.load import LoadError as LoadError
from tvlens.llm.load import load as load

_EXPORTS = {
    "NLTask": "tvlens.llm.tasks",
    "TaskDataError": "tvlens.llm.tasks",
    "load_task": "tvlens.llm.tasks",
    "load_tasks": "tvlens.llm.tasks",
    "task_names": "tvlens.llm.tasks",
    "task_groups": "tvlens.llm.tasks",
    "Template": "tvlens.llm.prompts",
    "sample_prompts": "tvlens.llm.prompts",
    "encode": "tvlens.llm.prompts",
    "run_prompts": "tvlens.llm.prompts",
    "icl_table": "tvlens.llm.icl",
    "task_vector_table": "tvlens.llm.task_vectors",
    "analyse_icl": "tvlens.llm.icl",
    "analyse_task_vectors": "tvlens.llm.task_vectors",
    "analyse_function_vectors": "tvlens.llm.function_vectors",
    "analyse_decodability": "tvlens.llm.decodability",
    "analyse_geometry": "tvlens.llm.geometry",
    "function_vector_analysis": "tvlens.llm.function_vectors",
    "head_indirect_effects": "tvlens.llm.function_vectors",
    "decodability_by_shots": "tvlens.llm.decodability",
    "td_icl_correlation_table": "tvlens.llm.decodability",
    "pca_table": "tvlens.llm.geometry",
    "mixture_geometry": "tvlens.llm.geometry",
    "LLMSettings": "tvlens.llm.config",
    "ICLOptions": "tvlens.llm.config",
    "TaskVectorOptions": "tvlens.llm.config",
    "FunctionVectorOptions": "tvlens.llm.config",
    "DecodabilityOptions": "tvlens.llm.config",
    "GeometryOptions": "tvlens.llm.config",
    "LLMRun": "tvlens.llm.run",
    "build_tiny_checkpoint": "tvlens.llm.tiny",
}

#: old names -> the naming rule's (docs/cli.md, "API: one naming rule"); one release
DEPRECATED = {
    "icl_accuracy": "icl_table",
    "task_vector_sweep": "task_vector_table",
    "td_icl_correlation": "td_icl_correlation_table",
}
__all__ = sorted([*_EXPORTS, "LoadError", "load", "run_llm"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in DEPRECATED:
        warnings.warn(
            f"tvlens.llm.{name} is deprecated; use tvlens.llm.{DEPRECATED[name]} (same function).",
            DeprecationWarning,
            stacklevel=2,
        )
        return __getattr__(DEPRECATED[name])
    if name == "run_llm":  # deprecated itself (it warns when called)
        return importlib.import_module("tvlens.llm.run").run_llm
    raise AttributeError(f"module 'tvlens.llm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
