"""The error that loading a pretrained model raises (shared by ``load`` and ``weights``).

It lives on its own so that :mod:`tvlens.llm.load` can call :mod:`tvlens.llm.weights` and
both raise the same type without importing each other in a cycle.
"""

from __future__ import annotations


class LoadError(RuntimeError):
    """A model could not be loaded; the message says what to do."""
