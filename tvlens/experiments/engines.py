"""Engines that run a sweep's trials: a local process pool, or Ray (a laptop or a cluster).

An engine runs ``fn(payload) -> record`` once per payload and yields ``(trial id, record)``
as trials finish, in completion order. Payloads and records are plain JSON-like data. ``fn``
(:func:`tvlens.experiments.sweep.run_trial`) catches a trial's own errors; an engine turns
the death of a worker (a crash, an out-of-memory kill, a lost node) into a ``failed``
record too, so one bad trial never stops the sweep.

* :class:`LocalEngine` (``--engine local``, the default): today's behaviour, no Ray needed.
  ``jobs=1`` runs the trials one after another in this process; ``jobs > 1`` runs them in
  a pool of spawned worker processes (like ``tvlens experiment two-modes --jobs``).
* :class:`RayEngine` (``--engine ray``): with no address it starts an embedded Ray instance
  (``ray.init(num_cpus=...)``); ``address="auto"`` joins the cluster this machine belongs to
  (``ray start --head`` / KubeRay / Ray on Slurm) and ``"ray://HOST:PORT"`` connects through
  Ray Client. Each trial is a Ray task asking for ``resources.cpu`` CPUs and
  ``resources.gpu`` GPUs, so Ray places one ``gpu: 1`` trial per GPU and sets its
  ``CUDA_VISIBLE_DEVICES``. Tasks are not retried (a failed trial is reported instead).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

Payload = Mapping[str, Any]
Record = dict[str, Any]
#: ``on_event(event, record, running)``: event is "running" or "finished"
OnEvent = Callable[..., None]


class Engine(Protocol):
    """What :func:`tvlens.experiments.sweep.run_sweep` needs from an engine."""

    name: str

    def run(
        self,
        payloads: Sequence[Payload],
        fn: Callable[[Payload], Record],
        on_event: OnEvent,
        resources: Any,
    ) -> Iterator[tuple[str, Record]]: ...


def failed_record(payload: Payload, error: str) -> Record:
    """The record of a trial whose worker died before it could report."""
    return {**payload["axes"], "status": "failed", "seconds": None, "error": error}


# ----------------------------------------------------------------------------- local
class LocalEngine:
    """Run trials on this machine: in this process (``jobs=1``) or a spawned process pool.

    ``jobs=None`` picks ``cores // resources.cpu`` for CPU trials (at least 1) and 1 for GPU
    trials (every local worker would share the same GPU; use Ray to spread them).
    """

    name = "local"

    def __init__(self, jobs: int | None = None) -> None:
        if jobs is not None and jobs < 1:
            raise ValueError(f"jobs={jobs}: use at least 1 worker (or None for the default).")
        self.jobs = jobs

    def check_resources(self, resources: Any) -> None:
        """Refuse a trial that asks for more cores or GPUs than this machine has."""
        cores = os.cpu_count() or 1
        if resources.cpu > cores:
            raise ValueError(
                f"resources.cpu is {resources.cpu} but this machine has {cores} CPU cores; "
                f"each trial runs {resources.cpu} torch threads, so set resources.cpu to at "
                f"most {cores} in the sweep config (or run on a Ray cluster with --engine ray)."
            )
        if resources.gpu > 0:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if gpus == 0 or resources.gpu > gpus:
                raise ValueError(
                    f"resources.gpu is {resources.gpu:g} but this machine has {gpus} CUDA "
                    "GPU(s); set resources.gpu: 0 (and train.device: cpu), or run where the "
                    "GPUs are (--engine ray on a GPU cluster)."
                )

    def workers(self, resources: Any) -> int:
        if self.jobs is not None:
            return self.jobs
        if resources.gpu > 0:
            return 1
        return max(1, (os.cpu_count() or 1) // resources.cpu)

    def run(
        self,
        payloads: Sequence[Payload],
        fn: Callable[[Payload], Record],
        on_event: OnEvent,
        resources: Any,
    ) -> Iterator[tuple[str, Record]]:
        jobs = min(self.workers(resources), max(1, len(payloads)))
        if jobs == 1:
            for p in payloads:
                on_event("running", running=1)
                rec = fn(p)
                on_event("finished", rec, running=0)
                yield p["id"], rec
            return
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool
        from multiprocessing import get_context

        pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"))
        try:
            pending = {pool.submit(fn, p): p for p in payloads}
            on_event("running", running=min(jobs, len(pending)))
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    p = pending.pop(fut)
                    try:
                        rec = fut.result()
                    except BrokenProcessPool as e:
                        rec = failed_record(p, f"worker process died ({e or 'killed'})")
                    except Exception as e:  # noqa: BLE001 — reported as the trial's failure
                        rec = failed_record(p, f"{type(e).__name__}: {e}")
                    on_event("finished", rec, running=min(jobs, len(pending)))
                    yield p["id"], rec
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------- ray
def import_ray() -> Any:
    """``ray``, or an error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            '--engine ray needs Ray, which is an optional extra: pip install -e ".[ray]" '
            "(or pip install 'ray[client]'), or run with --engine local."
        ) from None
    return ray


def _has_token() -> bool:
    """Whether a Ray auth token is configured for this user (env or ``~/.ray/auth_token``)."""
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return (Path.home() / ".ray" / "auth_token").exists()


#: seconds to wait for a Ray address to accept a connection before giving up
CONNECT_TIMEOUT_S = 10.0


def probe_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse within ``timeout`` seconds a ``HOST:PORT`` or ``ray://HOST:PORT`` where
    nothing accepts a TCP connection (``ray.init`` would wait minutes there, printing only
    its log lines). ``auto`` is left to Ray, which fails fast without a local cluster."""
    import socket

    if address == "auto":
        return
    hostport = address.removeprefix("ray://").split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ValueError(
            f"--address {address!r}: expected HOST:PORT or ray://HOST:PORT (e.g. "
            "ray://10.0.0.5:10001), or auto."
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise RuntimeError(
            f"cannot reach a Ray cluster at {address!r}: {why} (tried for up to {timeout:g} s). "
            "Check "
            "that the head node runs (`ray status` on it) and that HOST:PORT is its address "
            "(Ray Client listens on 10001, the GCS on 6379), or use --engine local."
        ) from None


class RayEngine:
    """Run trials as Ray tasks: an embedded instance, or a cluster at ``address``.

    ``num_cpus``/``num_gpus`` size the embedded instance (default: what Ray detects) and
    are ignored when joining a cluster. Ray is shut down afterwards only if this engine
    started it; an already initialised Ray (``ray.init`` by the caller) is used as it is.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        runtime_env: dict | None = None,
    ) -> None:
        if address is not None and not (
            address == "auto" or address.startswith("ray://") or ":" in address
        ):
            raise ValueError(
                f"--address {address!r}: use auto (the cluster this machine belongs to), "
                "ray://HOST:PORT (Ray Client, port 10001 by default) or HOST:PORT (the GCS)."
            )
        if num_cpus is not None and num_cpus < 1:
            raise ValueError(f"num_cpus={num_cpus}: the embedded Ray needs at least 1 CPU.")
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.runtime_env = runtime_env

    def _init(self, ray: Any) -> bool:
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False}
        if self.runtime_env:
            kwargs["runtime_env"] = self.runtime_env
        if self.address is None:
            kwargs.update(num_cpus=self.num_cpus, num_gpus=self.num_gpus)
        else:
            kwargs["address"] = self.address
        if self.address and self.address.startswith("ray://") and _has_token():
            # Ray Client sends the cluster's auth token only in token mode; ray.init turns
            # that on by itself when a token exists, the client path does not
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        if self.address is not None:
            probe_address(self.address)
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise RuntimeError(
                f"cannot reach a Ray cluster at {self.address!r} ({e}). Start one with "
                "`ray start --head` (then --address auto), or check HOST:PORT; a cluster with "
                "token authentication needs its token here (copy the head's ~/.ray/auth_token "
                "or set RAY_AUTH_TOKEN)."
            ) from None
        return True

    def slots(self, ray: Any, resources: Any) -> int:
        """How many trials the cluster can run at once (0: none fits)."""
        have = ray.cluster_resources()
        n = int(have.get("CPU", 0) // resources.cpu)
        if resources.gpu > 0:
            n = min(n, int(have.get("GPU", 0) // resources.gpu))
        return n

    def run(
        self,
        payloads: Sequence[Payload],
        fn: Callable[[Payload], Record],
        on_event: OnEvent,
        resources: Any,
    ) -> Iterator[tuple[str, Record]]:
        if not payloads:
            return
        ray = import_ray()
        started = self._init(ray)
        try:
            slots = self.slots(ray, resources)
            if slots == 0:
                have = ray.cluster_resources()
                msg = (
                    f"no Ray node can run a trial: each asks for {resources.cpu} CPU and "
                    f"{resources.gpu:g} GPU, the cluster has {have.get('CPU', 0):g} CPU and "
                    f"{have.get('GPU', 0):g} GPU. Lower resources in the sweep config, or add "
                    "nodes (an autoscaling cluster adds them when asked)."
                )
                if self.address is None:
                    raise RuntimeError(msg)
                log.warning(msg)
                slots = 1
            remote = ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu, max_retries=0)(fn)
            pending = {remote.remote(dict(p)): p for p in payloads}
            on_event("running", running=min(slots, len(pending)))
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        p = pending.pop(ref)
                        try:
                            rec = ray.get(ref)
                        except Exception as e:  # noqa: BLE001 — a dead worker or lost node
                            rec = failed_record(p, f"{type(e).__name__}: {e}")
                        on_event("finished", rec, running=min(slots, len(pending)))
                        yield p["id"], rec
            finally:
                for ref in pending:  # interrupted: do not leave trials running
                    ray.cancel(ref, force=True)
        finally:
            if started:
                ray.shutdown()


def make_engine(
    name: str,
    *,
    address: str | None = None,
    jobs: int | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
) -> Engine:
    """The engine named on the command line, with its options checked."""
    if name == "local":
        if address is not None:
            raise ValueError("--address joins a Ray cluster; add --engine ray.")
        if num_cpus is not None or num_gpus is not None:
            raise ValueError("--num-cpus/--num-gpus size the embedded Ray; add --engine ray.")
        return LocalEngine(jobs)
    if name == "ray":
        if jobs is not None:
            raise ValueError(
                "--jobs sets the local pool; with --engine ray the trials' resources decide "
                "how many run at once (resources: {cpu: N} in the sweep config)."
            )
        if address is not None and (num_cpus is not None or num_gpus is not None):
            raise ValueError(
                "--num-cpus/--num-gpus size an embedded Ray; a cluster at --address has its "
                "own resources. Drop one of them."
            )
        import_ray()
        return RayEngine(address, num_cpus=num_cpus, num_gpus=num_gpus)
    raise ValueError(f"--engine {name!r}: choose local or ray.")
