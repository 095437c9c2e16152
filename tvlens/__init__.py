"""tvlens: find and test task vectors in transformers, built on TransformerLens 4.

The public API in one place. Tasks own their exact references (``make_family``); models train
on the raw module and analyse through the bridge (``train``, ``load_run``); hooks speak
TransformerLens hook names; analyses return tidy DataFrames; ``write_report`` turns any run
directory into one offline HTML page. Pretrained models live in :mod:`tvlens.llm`.

Every name is imported on first use (PEP 562), so ``import tvlens`` and ``tvlens --help``
stay cheap: no torch, TransformerLens or transformers until a command needs them.
"""

from tvlens._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "analyse_decodability": "tvlens.analyses",
    "analyse_patching": "tvlens.analyses",
    "analyse_two_modes": "tvlens.analyses",
    "analyse_dynamics": "tvlens.analyses",
    "analyse_attention": "tvlens.analyses",
    "as_bridge": "tvlens.hooks",
    "check_layers": "tvlens.hooks",
    "ANALYSES": "tvlens.registry",
    "run_analyses": "tvlens.registry",
    "anova_table": "tvlens.analyses",
    "convexity_table": "tvlens.analyses",
    "decodability_table": "tvlens.analyses",
    "fit_beta": "tvlens.analyses",
    "mode_table": "tvlens.analyses",
    "patch_sweep": "tvlens.analyses",
    "principal_angles": "tvlens.analyses",
    "project_simplex": "tvlens.analyses",
    "projection_r2": "tvlens.analyses",
    "fit_simplex": "tvlens.analyses",
    "simplex_fit": "tvlens.analyses",
    "steering_hook": "tvlens.analyses",
    "steering_table": "tvlens.analyses",
    "ablation_table": "tvlens.analyses",
    "task_decodability_table": "tvlens.analyses",
    "task_vectors": "tvlens.analyses",
    "TaskVectors": "tvlens.analyses",
    "add_hook": "tvlens.hooks",
    "capture": "tvlens.hooks",
    "capture_means": "tvlens.hooks",
    "hook_name": "tvlens.hooks",
    "patch_hook": "tvlens.hooks",
    "project_out_hook": "tvlens.hooks",
    "replace_subspace_hook": "tvlens.hooks",
    "CheckpointError": "tvlens.models",
    "ModelConfig": "tvlens.models",
    "Run": "tvlens.models",
    "RunConfig": "tvlens.models",
    "TaskModel": "tvlens.models",
    "TrainConfig": "tvlens.models",
    "load_run": "tvlens.models",
    "reference_table": "tvlens.models",
    "train": "tvlens.models",
    "FAMILIES": "tvlens.tasks",
    "Batch": "tvlens.tasks",
    "ConfigError": "tvlens.tasks",
    "family_config": "tvlens.tasks",
    "TaskFamily": "tvlens.tasks",
    "make_family": "tvlens.tasks",
    "write_report": "tvlens.viz.report",
}
#: old public names -> the naming rule's names (docs, "API naming"); kept for one release.
#: One table: the analyses package's (a light import: it holds only the lazy name map).
from tvlens.analyses import DEPRECATED  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, DEPRECATED)

__all__ = sorted(_EXPORTS)
