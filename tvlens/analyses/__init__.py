"""Analyses: task vectors, geometry, decodability, patching, steering."""

from tvlens.analyses.patching import analyse_patching, patch_sweep, recovered

__all__ = ["analyse_patching", "patch_sweep", "recovered"]
