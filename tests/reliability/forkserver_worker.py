"""A tiny fork server for fault tests: import torch and tvlens once, fork a trainer per line.

Run as ``python forkserver_worker.py``; for each line ``RUN_DIR CONFIG_JSON`` on stdin it
forks a child that runs ``train(config, RUN_DIR, resume=True)``, prints the child's pid,
waits for it and prints its wait status. The server itself runs no torch op before forking,
so children start in milliseconds instead of re-importing torch (seconds per kill).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch

from tvlens.models import RunConfig, TaskModel, train
from tvlens.tasks import make_family


def main() -> None:
    torch.set_num_threads(1)  # before any op: no thread pool exists when we fork
    warm = RunConfig.for_family("dice")
    TaskModel(warm.model, make_family(warm.family))  # import everything lazy, once
    for line in sys.stdin:
        run_dir, config_json = line.rstrip("\n").split(" ", 1)
        config = RunConfig.from_dict(json.loads(config_json))
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(1)
            try:
                train(config, run_dir, resume=True, progress=False)
            except BaseException:  # noqa: BLE001 — reported to the test through stderr
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(status, flush=True)


if __name__ == "__main__":
    main()
