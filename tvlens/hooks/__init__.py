"""Capture, patch and steer hooks over TransformerLens hook names.

``core`` holds the one hook vocabulary (:func:`hook_name`, TransformerLens's own
``get_act_name`` grammar: ``hook_name(2, "z") == "blocks.2.attn.hook_z"``), the one bridge
adapter (:func:`as_bridge`) and layer check (:func:`check_layers`), capture and the hook
factories; ``rowwise`` the one-position-per-row hooks for padded prompts; ``suffix`` the
patching engines that re-run only the blocks after a patch; ``tl_compat`` the TransformerLens
private APIs behind a version check. Names are re-exported lazily (no torch on import).
"""

from tvlens._lazy import lazy_exports

_EXPORTS = {
    "RESID_POINTS": "tvlens.hooks.core",
    "StreamingMean": "tvlens.hooks.core",
    "add_hook": "tvlens.hooks.core",
    "as_bridge": "tvlens.hooks.core",
    "check_layers": "tvlens.hooks.core",
    "LayerError": "tvlens.hooks.core",
    "capture": "tvlens.hooks.core",
    "capture_means": "tvlens.hooks.core",
    "check_hook_names": "tvlens.hooks.core",
    "hook_name": "tvlens.hooks.core",
    "orthonormal_basis": "tvlens.hooks.core",
    "patch_hook": "tvlens.hooks.core",
    "project_out_hook": "tvlens.hooks.core",
    "replace_subspace_hook": "tvlens.hooks.core",
    "resolve_positions": "tvlens.hooks.core",
    "add_rows_hook": "tvlens.hooks.rowwise",
    "patch_head_rows_hook": "tvlens.hooks.rowwise",
    "patch_rows_hook": "tvlens.hooks.rowwise",
    "store_rows_hook": "tvlens.hooks.rowwise",
    "gather_rows_hook": "tvlens.hooks.rowwise",
    "project_out_rows_hook": "tvlens.hooks.rowwise",
    "model_device": "tvlens.hooks.core",
    "BridgeSuffixRunner": "tvlens.hooks.suffix",
    "NativeSuffixRunner": "tvlens.hooks.suffix",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
