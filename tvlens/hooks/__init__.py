"""Capture, patch and steer hooks over TransformerLens hook names."""

from tvlens.hooks.core import (
    RESID_POINTS,
    StreamingMean,
    add_hook,
    capture,
    capture_means,
    check_hook_names,
    hook_name,
    orthonormal_basis,
    patch_hook,
    project_out_hook,
    replace_subspace_hook,
    resolve_positions,
)

__all__ = [
    "RESID_POINTS",
    "StreamingMean",
    "add_hook",
    "capture",
    "capture_means",
    "check_hook_names",
    "hook_name",
    "orthonormal_basis",
    "patch_hook",
    "project_out_hook",
    "replace_subspace_hook",
    "resolve_positions",
]
