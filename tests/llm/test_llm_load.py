"""Booting tiny local Llama / Gemma-2 checkpoints through ``load``, and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from tvlens.llm.load import LoadError, load, resolve_dtype


def test_bridge_logits_equal_the_hf_forward(tiny_dirs, bridges, arch):
    from transformers import AutoModelForCausalLM

    bridge = bridges[arch]
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], attn_implementation="eager").eval()
    tok = bridge.tokenizer
    texts = ["hot -> cold\nbig -> small\ntall ->", "France -> Paris\nJapan ->"]
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert ids[0, 0] == tok.bos_token_id
        with torch.no_grad():
            ours, ref = bridge(ids), hf(ids).logits
        assert ours.shape == ref.shape == (1, ids.shape[1], len(tok))
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert not any(m.training for m in bridge.modules())
    assert "blocks.1.attn.hook_z" in bridge.hook_dict
    expected = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM"}[arch]
    assert json.loads((tiny_dirs[arch] / "config.json").read_text())["architectures"] == [expected]


def test_tokenizers_mark_leading_spaces_like_the_real_ones(bridges):
    llama = bridges["llama"].tokenizer.tokenize(" cold")
    gemma = bridges["gemma2"].tokenizer.tokenize(" cold")
    assert llama[0].startswith("Ġ") and gemma[0].startswith("▁")


def test_missing_or_incomplete_local_paths(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(LoadError, match="no config.json"):
        load(tmp_path)


def test_unsupported_architecture(tmp_path):
    from transformers import XLNetConfig

    XLNetConfig(d_model=16, n_layer=1, n_head=2, d_inner=32, vocab_size=20).save_pretrained(
        tmp_path
    )
    with pytest.raises(LoadError, match="architecture xlnet is not supported.*Gemma-2, Llama"):
        load(tmp_path, device="cpu")


def test_offline_hub_id_fails_fast_with_advice(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LoadError, match="HF_HUB_OFFLINE.*huggingface-cli download"):
        load("no-such-org/no-such-model-xyz", device="cpu")


def test_hub_without_dns_fails_fast(monkeypatch):
    import socket

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(LoadError, match="cannot be reached.*no DNS.*--local-dir"):
        load("no-such-org/no-such-model-xyz", device="cpu")


def test_unreachable_hub_error_is_translated(monkeypatch):
    import socket

    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])  # DNS "works"

    def boom(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(boom))
    with pytest.raises(LoadError, match="unreachable or the name is wrong.*--local-dir"):
        load("google/gemma-2-2b", device="cpu")


def test_device_options_are_checked(tiny_dirs):
    with pytest.raises(ValueError, match="either device="):
        load(tiny_dirs["llama"], device="cpu", n_devices=2)
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="n_devices=2 needs 2 CUDA devices"):
            load(tiny_dirs["llama"], n_devices=2)
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("auto", "cpu") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3")


def test_explicit_cpu_device_map_loads(tiny_dirs):
    bridge = load(tiny_dirs["llama"], device_map={"": "cpu"}, dtype="float32")
    ids = bridge.tokenizer("hot ->", return_tensors="pt")["input_ids"]
    assert bridge(ids).shape[:2] == ids.shape


class _Planted:
    """Unpickling this touches a marker file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_weights_are_refused_and_never_unpickled(tiny_dirs, tmp_path):
    import pickle
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dirs["llama"], folder)
    for p in folder.glob("*.safetensors"):
        p.unlink()
    marker = tmp_path / "UNPICKLED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(LoadError, match=r"pickles \(pytorch_model.bin\).*never unpickles"):
        load(folder, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "bogus"}, r"device='bogus' is not a device; use cpu, cuda"),
        ({"device": 3.5}, r"device=3.5 is not a device"),
        ({"device_map": "everywhere"}, r"device_map='everywhere' is not a placement; pass auto"),
        ({"device_map": '{"model": 0,'}, r"is not valid JSON .*; pass auto"),
        ({"device_map": "[1, 2]"}, r"is not a placement"),
        ({"device_map": {"model": [0]}}, r"device_map\['model'\] is \[0\]; use a GPU index"),
        ({"device_map": {"model": "gpu7"}}, r"device_map\['model'\]='gpu7' is not a device"),
    ],
)
def test_bad_device_and_device_map_are_clear_errors(tiny_dirs, kwargs, message):
    with pytest.raises(LoadError, match=message):
        load(tiny_dirs["llama"], **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_dirs):
    with pytest.raises(LoadError, match="CUDA is not available here; use cpu"):
        load(tiny_dirs["llama"], device="cuda")
    with pytest.raises(LoadError, match=r"device_map\['lm_head'\]='cuda:0' but CUDA"):
        load(tiny_dirs["llama"], device_map={"lm_head": 0})
