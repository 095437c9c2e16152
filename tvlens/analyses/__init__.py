"""Analyses: task vectors, geometry, decodability, patching, steering."""

from tvlens._lazy import lazy_exports

_EXPORTS = {
    "analyse_decodability": "tvlens.analyses.decodability",
    "collect_representations": "tvlens.analyses.decodability",
    "decodability_table": "tvlens.analyses.decodability",
    "knn_loo_accuracy": "tvlens.analyses.decodability",
    "probe_accuracy": "tvlens.analyses.decodability",
    "task_decodability": "tvlens.analyses.decodability",
    "analyse_dynamics": "tvlens.analyses.dynamics",
    "decodability_dynamics": "tvlens.analyses.dynamics",
    "emergence_correlation": "tvlens.analyses.dynamics",
    "td_and_loss": "tvlens.analyses.dynamics",
    "td_performance_correlation": "tvlens.analyses.dynamics",
    "compare_finetuning": "tvlens.analyses.finetune",
    "BetaFit": "tvlens.analyses.geometry",
    "fit_beta": "tvlens.analyses.geometry",
    "geometry_points": "tvlens.analyses.geometry",
    "principal_angle_table": "tvlens.analyses.geometry",
    "principal_angles": "tvlens.analyses.geometry",
    "project_simplex": "tvlens.analyses.geometry",
    "projection_r2": "tvlens.analyses.geometry",
    "simplex_fit": "tvlens.analyses.geometry",
    "simplex_table": "tvlens.analyses.geometry",
    "subspace_ablation": "tvlens.analyses.geometry",
    "mode_diagnostic": "tvlens.analyses.modes",
    "mode_heatmap_table": "tvlens.analyses.modes",
    "mode_scores": "tvlens.analyses.modes",
    "analyse_patching": "tvlens.analyses.patching",
    "patch_sweep": "tvlens.analyses.patching",
    "recovered": "tvlens.analyses.patching",
    "convexity_table": "tvlens.analyses.steering",
    "steering_hook": "tvlens.analyses.steering",
    "steering_table": "tvlens.analyses.steering",
    "TaskVectors": "tvlens.analyses.task_vectors",
    "anova_r2": "tvlens.analyses.task_vectors",
    "task_vectors": "tvlens.analyses.task_vectors",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
