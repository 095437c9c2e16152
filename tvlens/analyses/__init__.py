"""Analyses: task vectors, geometry, decodability, patching, steering."""

from tvlens.analyses.decodability import (
    analyse_decodability,
    collect_representations,
    decodability_table,
    knn_loo_accuracy,
    probe_accuracy,
    task_decodability,
)
from tvlens.analyses.dynamics import (
    decodability_dynamics,
    emergence_correlation,
    td_and_loss,
    td_performance_correlation,
)
from tvlens.analyses.finetune import compare_finetuning
from tvlens.analyses.geometry import (
    BetaFit,
    fit_beta,
    geometry_points,
    principal_angle_table,
    principal_angles,
    project_simplex,
    projection_r2,
    simplex_fit,
    simplex_table,
    subspace_ablation,
)
from tvlens.analyses.modes import mode_diagnostic, mode_heatmap_table, mode_scores
from tvlens.analyses.patching import analyse_patching, patch_sweep, recovered
from tvlens.analyses.steering import convexity_table, steering_hook, steering_table
from tvlens.analyses.task_vectors import TaskVectors, anova_r2, task_vectors

__all__ = [
    "BetaFit",
    "TaskVectors",
    "analyse_decodability",
    "analyse_patching",
    "anova_r2",
    "collect_representations",
    "compare_finetuning",
    "convexity_table",
    "decodability_dynamics",
    "decodability_table",
    "emergence_correlation",
    "fit_beta",
    "geometry_points",
    "knn_loo_accuracy",
    "mode_diagnostic",
    "mode_heatmap_table",
    "mode_scores",
    "patch_sweep",
    "principal_angle_table",
    "principal_angles",
    "probe_accuracy",
    "project_simplex",
    "projection_r2",
    "recovered",
    "simplex_fit",
    "simplex_table",
    "steering_hook",
    "steering_table",
    "subspace_ablation",
    "task_decodability",
    "task_vectors",
    "td_and_loss",
    "td_performance_correlation",
]
