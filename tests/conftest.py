"""Suite-wide fixtures. Tiny configs live in ``tests/tiny.py`` (a uniquely named module:
``from conftest import ...`` is ambiguous once sub-folders have their own conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)  # tiny models: one thread is fastest and never oversubscribes
    yield
