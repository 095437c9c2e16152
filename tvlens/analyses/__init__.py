"""Analyses: pure functions returning DataFrames, and one run-level driver per analysis.

Each ``tvlens/analyses/<name>.py`` holds the functions of one analysis and its driver
``analyse_<name>(run, out_dir=None, *, seed, ...)``, registered in :mod:`tvlens.registry`:
``two_modes`` (task vectors, geometry, alignment, ablation, steering, modes), ``decodability``,
``dynamics``, ``patching`` and ``attention``. Helper modules hold shared pure functions
(``task_vectors``, ``geometry``, ``steering``, ``modes``, ``finetune``, ``paper_metrics``,
``common``). Analyses never import :mod:`tvlens.viz`. Names are re-exported lazily.
"""

from tvlens._lazy import lazy_exports

_EXPORTS = {
    "analyse_decodability": "tvlens.analyses.decodability",
    "collect_representations": "tvlens.analyses.decodability",
    "decodability_table": "tvlens.analyses.decodability",
    "knn_loo_accuracy": "tvlens.analyses.decodability",
    "probe_accuracy": "tvlens.analyses.decodability",
    "task_decodability_table": "tvlens.analyses.decodability",
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
    "fit_simplex": "tvlens.analyses.geometry",
    "simplex_fit": "tvlens.analyses.geometry",
    "simplex_table": "tvlens.analyses.geometry",
    "ablation_table": "tvlens.analyses.geometry",
    "mode_table": "tvlens.analyses.modes",
    "mode_heatmap_table": "tvlens.analyses.modes",
    "mode_scores": "tvlens.analyses.modes",
    "analyse_attention": "tvlens.analyses.attention",
    "analyse_two_modes": "tvlens.analyses.two_modes",
    "analyse_patching": "tvlens.analyses.patching",
    "patch_sweep": "tvlens.analyses.patching",
    "recovered": "tvlens.analyses.patching",
    "convexity_table": "tvlens.analyses.steering",
    "steering_hook": "tvlens.analyses.steering",
    "steering_table": "tvlens.analyses.steering",
    "TaskVectors": "tvlens.analyses.task_vectors",
    "anova_table": "tvlens.analyses.task_vectors",
    "task_vectors": "tvlens.analyses.task_vectors",
}
#: old public names -> the naming rule's names (README, "API"); kept for one release
DEPRECATED = {
    "anova_r2": "anova_table",
    "mode_diagnostic": "mode_table",
    "subspace_ablation": "ablation_table",
    "task_decodability": "task_decodability_table",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, DEPRECATED)

__all__ = sorted(_EXPORTS)
