"""tvlens: find and test task vectors in transformers, built on TransformerLens 4.

The public API in one place. Tasks own their exact references (``make_family``); models train
on the raw module and analyse through the bridge (``train``, ``load_run``); hooks speak
TransformerLens hook names; analyses return tidy DataFrames; ``write_report`` turns any run
directory into one offline HTML page. Pretrained models live in :mod:`tvlens.llm`.
"""

from tvlens.analyses import (
    analyse_decodability,
    analyse_patching,
    anova_r2,
    convexity_table,
    decodability_table,
    fit_beta,
    mode_diagnostic,
    patch_sweep,
    principal_angles,
    project_simplex,
    projection_r2,
    simplex_fit,
    steering_hook,
    steering_table,
    subspace_ablation,
    task_decodability,
    task_vectors,
)
from tvlens.hooks import (
    add_hook,
    capture,
    capture_means,
    hook_name,
    patch_hook,
    project_out_hook,
    replace_subspace_hook,
)
from tvlens.models import (
    CheckpointError,
    ModelConfig,
    Run,
    RunConfig,
    TaskModel,
    TrainConfig,
    load_run,
    reference_table,
    train,
)
from tvlens.tasks import FAMILIES, Batch, ConfigError, FamilyConfig, TaskFamily, make_family
from tvlens.viz.report import write_report

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "FamilyConfig",
    "ModelConfig",
    "Run",
    "RunConfig",
    "TaskFamily",
    "TaskModel",
    "TrainConfig",
    "add_hook",
    "analyse_decodability",
    "analyse_patching",
    "anova_r2",
    "capture",
    "capture_means",
    "convexity_table",
    "decodability_table",
    "fit_beta",
    "hook_name",
    "load_run",
    "make_family",
    "mode_diagnostic",
    "patch_hook",
    "patch_sweep",
    "principal_angles",
    "project_out_hook",
    "project_simplex",
    "projection_r2",
    "reference_table",
    "replace_subspace_hook",
    "simplex_fit",
    "steering_hook",
    "steering_table",
    "subspace_ablation",
    "task_decodability",
    "task_vectors",
    "train",
    "write_report",
]
