"""Exceptions shared across tvlens, in a module with no heavy imports (the CLI's option
declarations use them before torch is loaded)."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and the fix."""
