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
from tvlens.hooks.rowwise import (
    add_rows_hook,
    patch_head_rows_hook,
    patch_rows_hook,
    store_rows_hook,
)
from tvlens.hooks.suffix import BridgeSuffixRunner, NativeSuffixRunner

__all__ = [
    "BridgeSuffixRunner",
    "NativeSuffixRunner",
    "RESID_POINTS",
    "StreamingMean",
    "add_hook",
    "add_rows_hook",
    "capture",
    "capture_means",
    "check_hook_names",
    "hook_name",
    "orthonormal_basis",
    "patch_head_rows_hook",
    "patch_hook",
    "patch_rows_hook",
    "project_out_hook",
    "replace_subspace_hook",
    "resolve_positions",
    "store_rows_hook",
]
