"""Session fixtures: tiny random Llama and Gemma-2 checkpoints (with a locally trained BPE
tokenizer) written to a temp dir and booted by path through :func:`tvlens.llm.load`."""

from __future__ import annotations

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
