"""Model configs, the TL-native task model, training and checkpoints."""

from tvlens.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tvlens.models.config import ModelConfig, RunConfig, TrainConfig
from tvlens.models.evaluate import References, eval_batches, predict, reference_table
from tvlens.models.model import TaskModel
from tvlens.models.train import (
    NonFiniteLossError,
    Run,
    checkpoint_schedule,
    has_resume_state,
    list_checkpoints,
    load_run,
    train,
)

__all__ = [
    "CheckpointError",
    "ModelConfig",
    "NonFiniteLossError",
    "References",
    "Run",
    "RunConfig",
    "TaskModel",
    "TrainConfig",
    "checkpoint_schedule",
    "eval_batches",
    "has_resume_state",
    "list_checkpoints",
    "load_checkpoint",
    "load_run",
    "predict",
    "reference_table",
    "save_checkpoint",
    "train",
]
