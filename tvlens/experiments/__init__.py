"""Reproducible experiments behind ``tvlens experiment NAME``."""
