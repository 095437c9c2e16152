"""Every bad input gives a clear error that names the problem and the fix — never a
traceback: wrong config types, non-finite values, malformed files, degenerate analysis
inputs — and validation happens before anything is deleted."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from tvlens.cli import main
from tvlens.models import RunConfig
from tvlens.tasks import ConfigError
from tvlens.validation import (
    InvalidInputError,
    check_batch_size,
    check_fields,
    check_finite_value,
    check_orthonormal,
    check_states,
    check_token_ids,
)

SET_CASES = [
    ("model.n_layers=abc", "model.n_layers must be an integer, got the string 'abc'"),
    ("model.n_layers=1.5", "model.n_layers must be an integer, got the number 1.5"),
    ("family.k=1.5", "family.k must be an integer"),
    ("train.batch_size=2.5", "train.batch_size must be an integer"),
    ("train.steps=true", "train.steps must be an integer, got the boolean True"),
    ("train.lr=Infinity", "train.lr must be a finite number, got the non-finite number inf"),
    ("train.grad_clip=NaN", "train.grad_clip must be a finite number"),
    ("train.lr=-1", "train.lr=-1.0 must be > 0"),
    ("train.grad_clip=-1", "train.grad_clip=-1.0 must be >= 0"),
    ("model.positional=alibi", "model.positional must be one of 'rotary', 'standard'"),
    ("model.n_ctx=abc", "model.n_ctx must be an integer or null"),
    ("train.device=gpu7", "train.device='gpu7' is not a torch device"),
    ("train=3", "must look like SECTION.FIELD=VALUE"),
    ("optim.lr=3", "must look like SECTION.FIELD=VALUE"),
    ("model.n_layerz=2", "unknown field(s) ['n_layerz'] in section 'model'"),
]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("item,message", SET_CASES)
def test_wrong_set_values_name_the_field_and_the_fix(item, message, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(capsys, "train", "--steps", "2", "--set", item, "--out", str(out))
    assert code == 1, err
    assert message in err
    assert not out.exists()  # rejected before anything was written


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"model": {"n_layers": "4"}}', "model.n_layers must be an integer, got the string '4'"),
        ('{"train": {"lr": "fast"}}', "train.lr must be a finite number, got the string 'fast'"),
        ("[1, 2]", "must hold a JSON object with sections family, model and train; it holds list"),
        ("null", "it holds null"),
        ('{"train": null}', "config section 'train' must be a JSON object"),
        ('{"train": [1]}', "config section 'train' must be a JSON object"),
        ("{not json", "is not valid JSON"),
        ('{"optim": {}}', "unknown config section(s) ['optim']"),
        ('{"family": {"name": "poker"}}', "family.name='poker' is not a known task family"),
    ],
)
def test_bad_config_files_name_the_file(content, message, tmp_path, capsys):
    path = _write(tmp_path / "cfg.json", content)
    code, err = _cli(capsys, "train", "--config", str(path), "--out", str(tmp_path / "run"))
    assert code == 1 and message in err, err
    assert str(path) in err  # which file
    with pytest.raises(ConfigError, match="cfg.json"):
        RunConfig.load(path)


def test_a_config_without_a_section_takes_its_defaults_or_overrides(tmp_path, capsys):
    """A missing section is not a KeyError: flags fill it, defaults fill the rest."""
    path = _write(tmp_path / "cfg.json", json.dumps({"family": {"name": "dice", "seq_len": 8}}))
    code, err = _cli(
        capsys,
        "train",
        "--config",
        str(path),
        "--steps",
        "2",
        "--set",
        "model.n_layers=1",
        "--set",
        "model.d_model=16",
        "--set",
        "model.n_heads=2",
        "--set",
        "model.d_mlp=16",
        "--set",
        "train.eval_size=8",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    assert RunConfig.load(tmp_path / "run" / "config.json").train.steps == 2


def test_directory_or_missing_config_is_named(tmp_path, capsys):
    code, err = _cli(capsys, "train", "--config", str(tmp_path), "--out", str(tmp_path / "r"))
    assert code == 1 and "is a directory, not a config file" in err
    code, err = _cli(capsys, "train", "--config", str(tmp_path / "no.json"))
    assert code == 1 and "does not exist" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_cuda_is_named(tmp_path, capsys):
    code, err = _cli(capsys, "train", "--device", "cuda", "--out", str(tmp_path / "run"))
    assert code == 1 and "no usable CUDA GPU" in err and "--device cpu" in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_check_fields_on_any_dataclass():
    """The validator reads annotations: it works for any family's config dataclass."""

    @dataclass
    class Cfg:
        n: int = 1
        x: float = 0.5
        kind: Literal["a", "b"] = "a"
        shape: tuple[int, ...] = (1, 2)
        pair: tuple[int, str] = (1, "a")
        flag: bool = False
        extra: dict = field(default_factory=dict)
        maybe: float | None = None

    c = Cfg(x=1, shape=[3, 4])  # JSON gives ints for floats and lists for tuples
    check_fields(c, "fam")
    assert c.x == 1.0 and isinstance(c.x, float) and c.shape == (3, 4)
    for kwargs, message in [
        ({"n": 2.0}, "fam.n must be an integer, got the number 2.0"),
        ({"x": math.nan}, "fam.x must be a finite number"),
        ({"x": True}, "fam.x must be a finite number, got the boolean True"),
        ({"kind": "c"}, "fam.kind must be one of 'a', 'b'"),
        ({"shape": [1, "2"]}, "fam.shape must be a list of an integer"),
        ({"pair": [1, 2]}, "fam.pair"),
        ({"flag": 1}, "fam.flag must be true or false"),
        ({"extra": []}, "fam.extra must be a JSON object"),
        ({"maybe": "x"}, "fam.maybe must be a finite number or null"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_fields(Cfg(**kwargs), "fam")


# --------------------------------------------------------------- degenerate analysis inputs
def test_state_checks_refuse_degenerate_inputs():
    good = torch.randn(5, 3)
    check_states(good)
    with pytest.raises(InvalidInputError, match="0 sample"):
        check_states(torch.zeros(0, 3))
    with pytest.raises(InvalidInputError, match="1 sample"):
        check_states(torch.randn(1, 3))
    bad = good.clone()
    bad[2, 1] = math.nan
    with pytest.raises(InvalidInputError, match="1 NaN/inf value.*row 2"):
        check_states(bad)
    with pytest.raises(InvalidInputError, match="identical"):
        check_states(torch.ones(4, 3))
    with pytest.raises(InvalidInputError, match=r"2-D"):
        check_states(torch.randn(2, 3, 4))
    q, _ = torch.linalg.qr(torch.randn(6, 2))
    check_orthonormal(q.T)
    with pytest.raises(InvalidInputError, match="not orthonormal"):
        check_orthonormal(2 * q.T)
    assert check_finite_value(0.5, "m") == 0.5
    with pytest.raises(InvalidInputError, match="metric returned nan"):
        check_finite_value(math.nan, "metric")
    check_token_ids(torch.tensor([[0, 5]]), 6)
    with pytest.raises(InvalidInputError, match=r"token ids in \[0, 6\].*6 tokens"):
        check_token_ids(torch.tensor([[0, 6]]), 6)
    with pytest.raises(InvalidInputError, match=r"\[-1, 2\]"):
        check_token_ids(torch.tensor([[-1, 2]]), 6)
    assert check_batch_size(4) == 4
    for bad_size in (0, -2, 2.5, True):
        with pytest.raises(InvalidInputError, match="batch_size"):
            check_batch_size(bad_size)


def test_llm_force_with_a_malformed_task_file_deletes_nothing(tmp_path):
    """Validation before deletion: the previous run's tables survive a bad --task."""
    from tvlens.cli import main
    from tvlens.llm.config import ICLOptions

    run_dir = tmp_path / "llm"
    (run_dir / "analyses").mkdir(parents=True)
    old = run_dir / "analyses" / "llm_icl.csv"
    old.write_text("task,acc\nantonym,0.5\n")
    (run_dir / "function_vectors.safetensors").write_bytes(b"previous")
    bad = _write(tmp_path / "broken_task.json", '{"schema_version": 1, "name": ')
    with pytest.raises(ValueError, match="broken_task.json"):
        ICLOptions(tasks=str(bad))
    argv = ["llm", "--model", str(tmp_path / "any"), "--out", str(run_dir), "--force"]
    assert main([*argv, "--task", str(bad), "--analyses", "icl"]) == 1
    assert old.read_text() == "task,acc\nantonym,0.5\n"
    assert (run_dir / "function_vectors.safetensors").read_bytes() == b"previous"


def test_analyses_refuse_degenerate_states():
    from tvlens.analyses.geometry import projection_r2, simplex_fit

    verts = torch.eye(3, 4)
    w = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    good = (w / w.sum(1, keepdim=True)) @ verts  # on the simplex: R² = 1 exactly
    assert simplex_fit(good, verts).r2_task == pytest.approx(1.0, abs=1e-5)
    for states, message in [
        (torch.zeros(0, 4), "0 sample"),
        (good[:1], "1 sample"),
        (torch.ones(6, 4), "identical"),
        (good.clone().index_fill_(0, torch.tensor([1]), math.inf), "NaN/inf"),
        (good.clone().index_fill_(0, torch.tensor([2]), math.nan), "NaN/inf"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            simplex_fit(states, verts)
        with pytest.raises(InvalidInputError, match=message):
            projection_r2(states, verts[:2], torch.zeros(4))
    with pytest.raises(InvalidInputError, match="not orthonormal"):
        projection_r2(good, 3 * verts[:2], torch.zeros(4))
    assert projection_r2(good, verts, torch.zeros(4)) == pytest.approx(1.0, abs=1e-5)


def test_capture_and_the_model_refuse_bad_token_ids_and_batch_sizes():
    from tiny import tiny_config

    from tvlens.hooks import capture
    from tvlens.models import TaskModel
    from tvlens.tasks import make_family

    cfg = tiny_config()
    fam = make_family(cfg.family)
    model = TaskModel(cfg.model, fam)
    ids = fam.sample("major", 2, seed=0).inputs
    names = ["blocks.0.hook_resid_post"]
    assert capture(model.bridge, ids, names)[names[0]].shape[0] == 2
    with pytest.raises(InvalidInputError, match="batch_size=0 must be >= 1"):
        capture(model.bridge, ids, names, batch_size=0)
    bad = ids.clone()
    bad[0, 0] = fam.d_vocab
    with pytest.raises(InvalidInputError, match="outside|token ids in"):
        capture(model.bridge, bad, names)
    with pytest.raises(InvalidInputError, match="token ids in"):
        model(bad)


def test_a_metric_returning_nan_is_an_error_not_a_nan_table():
    from tvlens.analyses.patching import _scalar

    assert _scalar(lambda logits: logits.mean(), torch.ones(2, 3)) == 1.0
    with pytest.raises(InvalidInputError, match="the metric returned nan"):
        _scalar(lambda logits: logits.mean() * math.nan, torch.ones(2, 3))
