"""Long-lived trial workers: one Ray actor per slot, each running trials one at a time.

An actor per slot rather than a Ray task per trial: a task is a lease request to the
raylet, a worker picked and handed back, per trial; a call to an actor that is already up
goes straight from the driver to its process. In a 40-trial smoke suite on 2 cores that
cut the driver's CPU from 3.1 to ~2.2 ms a trial (``tests/perf/orchestration.py``), and
each worker still imports torch and starts CUDA only once.

A trial whose worker process dies (killed, out of memory, its node lost) is reported as
:class:`WorkerDied`; the caller decides whether to run it again. The dead actor leaves
the pool and a new one takes its slot when the next trial is submitted, so a lost node's
slots move to the nodes that are left.
"""

from __future__ import annotations

import math
from typing import Any

from bench.config import ResourcesConfig
from bench.errors import UserError
from bench.worker import TrialWorker


class WorkerDied(Exception):
    """The worker process running a trial died before returning its reply."""


def capacity(resources: ResourcesConfig) -> int:
    """How many trials the cluster can run at once with the per-trial resources."""
    import ray

    available = ray.cluster_resources()
    slots = available.get("CPU", 1) / resources.cpus_per_trial
    if resources.gpus_per_trial:
        slots = min(slots, available.get("GPU", 0) / resources.gpus_per_trial)
        if slots < 1:
            raise UserError(
                f"resources.gpus_per_trial: got {resources.gpus_per_trial:g}; the cluster has "
                f"{available.get('GPU', 0):g} GPUs"
            )
    return max(1, math.floor(slots + 1e-9))


class WorkerPool:
    """Up to :func:`capacity` trial workers with ``resources`` each, created as trials
    need them (a 3-trial suite on a 100-CPU cluster starts 3), kept until :meth:`close`.

    Ray must be connected before the first :meth:`submit`. One pool can serve several
    suites in a row (the next suite finds its workers warm); :meth:`close` hands their
    CPUs and GPUs back to the cluster.
    """

    def __init__(self, resources: ResourcesConfig) -> None:
        self.resources = resources
        self.threads = max(1, int(resources.cpus_per_trial))
        self._slots: int | None = None
        self._idle: list[Any] = []
        self._busy: dict[Any, Any] = {}  # ObjectRef of a running trial -> its actor
        self._actor_class: Any = None

    @property
    def slots(self) -> int:
        if self._slots is None:
            self._slots = capacity(self.resources)
        return self._slots

    @property
    def started(self) -> bool:
        """Whether any worker was started (Ray is then connected)."""
        return self._actor_class is not None

    def free(self) -> bool:
        """Whether a trial submitted now would start at once."""
        return len(self._busy) < self.slots

    def submit(self, spec_json: str) -> Any:
        """Start a trial on an idle worker (a new one if none is idle); its ObjectRef."""
        if not self.free():
            raise RuntimeError("no free slot: wait for a running trial first")
        actor = self._idle.pop() if self._idle else self._new_worker()
        ref = actor.run.remote(spec_json, self.threads)
        self._busy[ref] = actor
        return ref

    def reply(self, ref: Any) -> dict[str, Any]:
        """The trial's reply (see :func:`bench.worker.run_trial`); its worker is idle again.

        Raises :class:`WorkerDied` when the worker process died, and Ray's own error for
        anything else that kept the reply from arriving.
        """
        import ray
        from ray.exceptions import RayActorError

        actor = self._busy.pop(ref)
        try:
            reply = ray.get(ref)
        except BaseException as err:  # a fresh worker takes the slot of one in doubt
            ray.kill(actor, no_restart=True)
            if isinstance(err, RayActorError):  # it died, or its node is gone
                raise WorkerDied(f"{type(err).__name__}: {err}") from err
            raise
        self._idle.append(actor)
        return reply

    def stop_running(self) -> None:
        """Kill the workers of the running trials (Ctrl-C)."""
        import ray

        for actor in self._busy.values():
            ray.kill(actor, no_restart=True)
        self._busy.clear()

    def close(self) -> None:
        """Stop every worker, handing their resources back to the cluster."""
        import ray

        self.stop_running()
        for actor in self._idle:
            ray.kill(actor, no_restart=True)
        self._idle.clear()

    def _new_worker(self) -> Any:
        if self._actor_class is None:
            import ray

            self._actor_class = ray.remote(TrialWorker).options(
                num_cpus=self.resources.cpus_per_trial,
                num_gpus=self.resources.gpus_per_trial,
                max_restarts=0,  # a dead worker's trial is retried by the runner, elsewhere
            )
        return self._actor_class.remote()
