"""``kill -9`` at random moments of a run that saves its resume state every step.

Every kill must leave a directory that ``tvlens check`` passes and that ``--resume``
continues; the finished run must equal an uninterrupted one byte for byte (every checkpoint,
the resume state and metrics.csv). ``TVLENS_KILLS`` sets the number of kills (default 12;
the README reports a 50-kill run).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import tiny_config

from tvlens.check_cmd import check_run
from tvlens.io import LOCK_NAME
from tvlens.models.checkpoint import read_meta

WORKER = Path(__file__).with_name("forkserver_worker.py")


class ForkServer:
    """Drives forkserver_worker.py: one forked trainer per :meth:`start`."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def start(self, run_dir: Path, config_json: str) -> int:
        self.proc.stdin.write(f"{run_dir} {config_json}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self) -> int:
        """The wait status of the child started last."""
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _files(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def _assert_same(got: dict[str, bytes], expected: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(expected)
    for name, data in expected.items():
        assert got[name] == data, f"{name} differs from the uninterrupted run"


@pytest.fixture
def server():
    s = ForkServer()
    yield s
    s.close()


@pytest.mark.slow
def test_kill_loop_always_resumes_and_matches_the_uninterrupted_run(tmp_path, server):
    n_kills = int(os.environ.get("TVLENS_KILLS", "12"))
    cfg = tiny_config(steps=30)
    cfg.train.eval_every = 1  # a resume state at every step: the tightest kill window
    cfg.train.n_checkpoints = 8
    config_json = json.dumps(cfg.to_dict())

    ref = tmp_path / "ref"
    server.start(ref, config_json)
    assert server.wait() == 0, "the uninterrupted run failed (see stderr)"
    expected = _files(ref)
    assert not [f for f in check_run(ref) if f.level == "problem"]

    # The kill delay is uniform in [0, window]; the window adapts so that most children die
    # young (set-up, a step or two, a save) whatever the machine's speed and load.
    rng = random.Random(0)
    run, window, kills, finished_early, at_steps = tmp_path / "killed", 0.5, 0, 0, []
    while kills < n_kills:
        pid = server.start(run, config_json)
        time.sleep(rng.uniform(0.0, window))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = server.wait()
        if os.WIFSIGNALED(status):
            kills += 1
            window = min(window * 1.2, 5.0)
        else:
            assert os.WEXITSTATUS(status) == 0, "a resume after a kill failed (see stderr)"
            _assert_same(_files(run), expected)  # it finished before its kill: compare it,
            finished_early += 1
            window /= 2
            shutil.rmtree(run)  # then start it over
            continue
        if (run / "config.json").exists():
            problems = [str(f) for f in check_run(run) if f.level == "problem"]
            assert not problems, f"after kill {kills}: {problems}"
        resume = run / "checkpoints" / "resume.safetensors"
        at_steps.append(read_meta(resume)["step"] if resume.exists() else -1)
    server.start(run, config_json)
    assert server.wait() == 0, "the final resume failed (see stderr)"
    _assert_same(_files(run), expected)
    assert not list(run.rglob("*.tmp")), "stale temporaries left behind"
    print(
        f"{kills} kills; {finished_early + 1} interrupted runs finished, each equal to the "
        f"uninterrupted run byte for byte; resume step after each kill: {at_steps}"
    )
