"""The Ray executor: the cells of one or more plans on a Ray cluster (``vlmbench run --executor ray``).

One long-lived actor per GPU (or, on a cluster without GPUs, per CPU slot of ``--threads`` cores) plans
each request itself and keeps a :class:`~vlmbench.execute.Workbench` per request, so models, trained
weights and text embeddings stay loaded between cells (Ray's GPU *tasks* would start a fresh worker per
cell). The driver sends the jobs longest-first (:func:`~vlmbench.execute.job_cost`), one at a time to
each idle actor, preferring the longest job of the model and defense that actor has loaded, and
advances one progress bar as jobs finish.

The guarantees are the local executor's, because the actors run the same code
(:meth:`Workbench.run_job <vlmbench.execute.Workbench.run_job>`) into the same output folder, which on
a cluster must be shared storage: a cell is computed under its lock, its batches are staged atomically
and its file is written atomically, so a job whose actor dies (killed, out of memory, node lost) is
sent again, resumes from the staged batches, and loses or duplicates no row. A job is tried at most
:data:`MAX_ATTEMPTS` times. An error in the cell itself (a defense returning bad logits) is not a
worker failure: it stops the run, as it does locally.

Ray is an optional dependency (``pip install 'vlmbench[ray]'``); it is imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlmbench.cell import CellOutcome, remove_leftovers
from vlmbench.execute import job_cost
from vlmbench.plan import CellKey, Plan
from vlmbench.preflight import probe_ray_address
from vlmbench.request import RunError, RunRequest

MAX_ATTEMPTS = 3  # a job whose worker died this many times stops the run
# environment the workers need to read and write what the driver does (on a cluster they may be other machines)
FORWARDED_ENV = ("VLMBENCH_CACHE", "VLMBENCH_DATA_ROOT", "HF_HUB_OFFLINE", "HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME")

Work = tuple[int, tuple[CellKey, ...]]  # (index of the request / plan, job)


class CellWorker:
    """A Ray actor's state: the requests, their plans (made on first use) and workbenches."""

    def __init__(self, requests: Sequence[RunRequest], plugin_sources: Sequence[str], threads: int | None) -> None:
        import torch

        from vlmbench.registry import plugins

        if threads is not None:
            torch.set_num_threads(threads)
        for source in plugin_sources:
            plugins().load_source(source)
        self.requests = list(requests)
        self.benches: dict[int, Any] = {}

    def run(self, index: int, job: tuple[CellKey, ...], labels: tuple[str, ...]) -> list[tuple[str, str]]:
        """Compute one job of request ``index``; ``labels`` are the driver's names of its cells (the
        worker's plan must agree, or the two sides see different plugins or data). Returns each cell's
        ``(file, status)``."""
        from vlmbench.execute import Workbench
        from vlmbench.plan import plan

        if index not in self.benches:
            if len(self.benches) >= 2:  # keep the memory of two requests' models, as a workbench keeps two
                self.benches.pop(next(iter(self.benches)))
            self.benches[index] = Workbench(plan(self.requests[index]))
        bench = self.benches[index]
        mine = tuple(bench.plan.label(key) for key in job)
        if mine != labels:
            raise RunError(f"a Ray worker planned {mine[0]!r} where the driver planned {labels[0]!r}: the worker "
                           "sees other plugins or data (install the same vlmbench, plugins and datasets on every node)")
        return [(str(outcome.path), outcome.status) for outcome in bench.run_job(job)]

    def pid(self) -> int:
        return os.getpid()


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to), or start a local
    instance when ``address`` is None. Returns whether this call started the connection (and so must
    end it). RunError, one line, when the cluster cannot be reached or Ray is not installed."""
    try:
        import ray
    except ImportError:
        raise RunError("--executor ray needs Ray: pip install 'vlmbench[ray]'") from None
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file in the user's home for a local instance
    if address is not None:
        probe_ray_address(address)
    try:
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RunError(f"cannot reach {where}: {first}") from None
    return True


def worker_count(threads: int | None) -> tuple[int, dict[str, float]]:
    """How many actors the cluster holds and what each asks for: one per GPU, else one per ``threads``
    CPUs (default 1)."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus > 0:
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    per_worker = threads or 1
    return max(1, int(resources.get("CPU", 1)) // per_worker), {"num_cpus": per_worker}


def _wait_until_restarted(worker: Any, timeout: float = 300.0) -> None:
    """Wait until Ray has restarted ``worker`` (``max_restarts``) and it answers again; a job sent to it
    before that would fail as "unavailable" and be counted as another death."""
    import time

    import ray

    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get(worker.pid.remote(), timeout=30)
            return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise RunError(f"a Ray worker did not come back within {timeout:.0f} s after dying; stopping "
                               "(the staged batches are kept: run again to resume)") from None
            time.sleep(0.5)


def execute_on_ray(plans: Sequence[Plan], work: Sequence[Work], address: str | None = None,
                   plugin_sources: Sequence[str] = (), threads: int | None = None,
                   on_advance: Callable[[int], None] | None = None,
                   on_started: Callable[[int], None] | None = None,
                   on_note: Callable[[str], None] | None = None) -> list[CellOutcome]:
    """Run ``work`` (jobs of ``plans``) on Ray; the outcomes come back in ``work`` order.

    ``on_started(n)`` reports the number of workers once they exist, ``on_advance(k)`` the images of
    each finished job, ``on_note(message)`` a retried job.
    """
    import ray

    from vlmbench import results
    from vlmbench.protocol import Protocol

    outputs = {plan_.request.output for plan_ in plans}
    for output in outputs:
        remove_leftovers(output)
    started = connect(address)
    env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    try:
        count, resources = worker_count(threads)
        actor = ray.remote(CellWorker).options(max_restarts=-1, runtime_env={"env_vars": env}, **resources)
        requests = [plan_.request for plan_ in plans]
        workers = [actor.remote(requests, tuple(plugin_sources), threads) for _ in range(min(count, len(work)) or 1)]
        if on_started:
            on_started(len(workers))
        order = sorted(range(len(work)), key=lambda k: (-job_cost(plans[work[k][0]], work[k][1]), k))  # longest first
        attempts = [0] * len(work)
        done: dict[int, list[tuple[str, str]]] = {}
        running: dict[Any, tuple[int, Any]] = {}  # object ref → (work position, worker)
        idle = list(workers)

        def submit(position: int, worker: Any) -> None:
            index, job = work[position]
            labels = tuple(plans[index].label(key) for key in job)
            attempts[position] += 1
            running[worker.run.remote(index, job, labels)] = (position, worker)

        loaded: dict[int, tuple[int, int, int]] = {}  # worker → (request, model, defense) it ran last

        def setting(position: int) -> tuple[int, int, int]:
            index, job = work[position]
            return index, job[0].model, job[0].defense

        def next_for(worker: Any) -> int:
            """The longest job whose model and defense ``worker`` has loaded, else the longest job."""
            mine = loaded.get(id(worker))
            chosen = next((k for k, position in enumerate(order) if setting(position) == mine), 0)
            return order.pop(chosen)

        while order or running:
            while order and idle:
                worker = idle.pop(0)
                position = next_for(worker)
                loaded[id(worker)] = setting(position)
                submit(position, worker)
            ready, _ = ray.wait(list(running), num_returns=1)
            position, worker = running.pop(ready[0])
            try:
                done[position] = ray.get(ready[0])
            except ray.exceptions.RayActorError:  # the worker died mid-job: its staged batches stay for the retry
                index, job = work[position]
                if attempts[position] >= MAX_ATTEMPTS:
                    raise RunError(f"{plans[index].label(job[0])}: its Ray worker died {attempts[position]} times; "
                                   "stopping (the staged batches are kept: run again to resume)") from None
                if on_note:
                    on_note(f"a Ray worker died during {plans[index].label(job[0])}; retrying it "
                            f"(attempt {attempts[position] + 1} of {MAX_ATTEMPTS})")
                _wait_until_restarted(worker)
                order.insert(0, position)
            except ray.exceptions.RayTaskError as exc:  # the cell itself failed: as locally, the run stops
                cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
                raise (cause if cause is not None else exc) from None
            else:
                if on_advance:
                    index, job = work[position]
                    on_advance(sum(plans[index].n_images_of(key) for key in job))
            idle.append(worker)
        outcomes = []
        for position in range(len(work)):
            for path, status in done[position]:
                rows = results.read_cell(Path(path))
                outcomes.append(CellOutcome(Path(path), Protocol.from_json(rows["protocol"].iloc[0]), status, rows))
        return outcomes
    finally:
        if started:
            ray.shutdown()
        for output in outputs:
            remove_leftovers(output)
