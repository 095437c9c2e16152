"""tvlens: find and test task vectors in transformers, built on TransformerLens 4."""

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

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "Batch",
    "ConfigError",
    "FamilyConfig",
    "ModelConfig",
    "Run",
    "RunConfig",
    "TaskFamily",
    "TaskModel",
    "TrainConfig",
    "add_hook",
    "capture",
    "capture_means",
    "hook_name",
    "load_run",
    "make_family",
    "patch_hook",
    "project_out_hook",
    "reference_table",
    "replace_subspace_hook",
    "train",
]
