"""Analyses: task vectors, geometry, decodability, patching, steering."""
