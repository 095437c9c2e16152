"""Pretrained LLMs through TransformerBridge, and shipped natural-language ICL tasks.

``load`` boots a HF model as a TransformerLens bridge; ``load_task`` / ``load_tasks`` read the
shipped task files; ``icl_accuracy``, ``task_vector_sweep``, ``function_vector_analysis``,
``decodability_by_shots``, ``pca_table`` and ``mixture_geometry`` are the analyses, and
``run_llm`` runs them all into a run directory (``tvlens llm``). Names other than ``load`` are
imported lazily so that ``import tvlens.llm`` (and the CLI) stays cheap.
"""

from __future__ import annotations

import importlib
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
    "icl_accuracy": "tvlens.llm.icl",
    "task_vector_sweep": "tvlens.llm.task_vectors",
    "function_vector_analysis": "tvlens.llm.function_vectors",
    "head_indirect_effects": "tvlens.llm.function_vectors",
    "decodability_by_shots": "tvlens.llm.decodability",
    "td_icl_correlation": "tvlens.llm.decodability",
    "pca_table": "tvlens.llm.geometry",
    "mixture_geometry": "tvlens.llm.geometry",
    "LLMConfig": "tvlens.llm.config",
    "run_llm": "tvlens.llm.run",
    "build_tiny_checkpoint": "tvlens.llm.tiny",
}

__all__ = sorted([*_EXPORTS, "LoadError", "load"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tvlens.llm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
