"""load_run and checkpoints: bad arguments and damaged or foreign files get clear errors."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from tiny import tiny_config

from tvlens.cli import main
from tvlens.models import CheckpointError, load_run, train
from tvlens.models.checkpoint import load_checkpoint
from tvlens.validation import InputTypeError, InvalidInputError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("load_run") / "run"
    train(tiny_config(steps=12), d, progress=False)  # checkpoints at 0, 3?, ..., 12
    return d


@pytest.mark.parametrize("step", ["12", 12.0, True, [12]])
def test_load_run_step_must_be_an_integer(run_dir, step):
    with pytest.raises(InputTypeError, match="step must be an integer >= 0; got"):
        load_run(run_dir, step=step)


def test_load_run_step_range_and_numpy_ints(run_dir):
    import numpy as np

    with pytest.raises(InvalidInputError, match="step must be >= 0; got -1"):
        load_run(run_dir, step=-1)
    assert load_run(run_dir, step=np.int64(12)).step == 12


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "metrics.csv is empty"),
        (b"\x00\xff\xfe garbage \x00\x01", "metrics.csv is not"),
        (b"epoch,acc\n1,0.5\n", r"not a tvlens metrics table \(no \['step'\] column"),
    ],
)
def test_a_garbage_or_empty_metrics_csv_is_a_clear_error(run_dir, tmp_path, content, message):
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    (bad / "metrics.csv").write_bytes(content)
    with pytest.raises(CheckpointError, match=message + ".*--resume"):
        load_run(bad)


def test_a_pickle_in_place_of_a_checkpoint_is_named_a_pickle(run_dir, tmp_path, capsys):
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    ckpt = bad / "checkpoints" / "step_000012.safetensors"
    ckpt.write_bytes(pickle.dumps({"w": list(range(100))}, protocol=4))
    with pytest.raises(CheckpointError, match=r"not a tvlens checkpoint \(looks like a pickle"):
        load_checkpoint(ckpt.with_suffix(""))
    zipped = bad / "checkpoints" / "step_000000.safetensors"
    torch.save({"w": torch.zeros(2)}, zipped)
    with pytest.raises(CheckpointError, match="looks like a zip archive, as torch.save writes"):
        load_checkpoint(zipped.with_suffix(""))
    assert main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "looks like a pickle" in out and "header of" not in out
