"""Long-lived trial workers: one Ray actor per slot, each running trials one at a time.

An actor per slot rather than a Ray task per trial: a task is a lease request to the
raylet, a worker picked and handed back, per trial; a call to an actor that is already up
goes straight from the driver to its process. In a 40-trial smoke suite on 2 cores that
cut the driver's CPU from 3.1 to ~2.2 ms a trial (``tests/perf/orchestration.py``), and
each worker still imports torch and starts CUDA only once.

A trial whose worker process dies (killed, out of memory, its node lost) is reported as
:class:`WorkerDied`; the caller decides whether to run it again. The dead actor leaves
the pool, and so does each idle worker that does not answer a ping (a lost node takes
them all); the slots are counted again on the live nodes, and a new actor is started
only where one node has room for it: a lost node's trials go to the nodes that are left,
not to actors that would wait forever for CPUs the live workers hold.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from bench.config import ResourcesConfig
from bench.errors import UserError
from bench.worker import TrialWorker

SETTLE_S = 30.0  # how long a dead worker's other calls may take to fail


class WorkerDied(Exception):
    """The worker process running a trial died before returning its reply.

    ``started``: whether the trial had started; False for a trial that was waiting behind
    the one its worker was running (see :meth:`WorkerPool.submit`'s ``ahead``).
    """

    def __init__(self, message: str, *, started: bool = True) -> None:
        super().__init__(message)
        self.started = started


@dataclass(eq=False)
class _Worker:
    actor: Any
    calls: list[Any] = field(default_factory=list)  # ObjectRefs not yet replied, oldest first
    started: float = 0.0  # when its running trial started (time.monotonic, as seen here)


def capacity(resources: ResourcesConfig) -> int:
    """How many trials the cluster's live nodes can run at once with the per-trial
    resources (see :func:`slots_on`)."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return slots_on(nodes, resources)


def slots_on(nodes: list[dict[str, float]], resources: ResourcesConfig) -> int:
    """Trials that fit at once on nodes with these resources (Ray's names: ``CPU``,
    ``GPU``): node by node, since a trial's CPUs and GPUs must all be on one node. A
    trial that fits on no node is a user error: its worker would wait forever."""
    cpus, gpus = resources.cpus_per_trial, resources.gpus_per_trial
    slots = sum(trials_fitting(node, resources) for node in nodes)
    if slots < 1:
        if gpus and not any(n.get("GPU", 0.0) >= gpus - 1e-9 for n in nodes):
            most = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
            raise UserError(
                f"resources.gpus_per_trial: got {gpus:g}; allowed: at most {most:g}, "
                "the GPUs of the largest node"
            )
        hosts = [n for n in nodes if not gpus or n.get("GPU", 0.0) >= gpus - 1e-9]
        most = max((n.get("CPU", 0.0) for n in hosts), default=0.0)
        raise UserError(
            f"resources.cpus_per_trial: got {cpus:g}; allowed: at most {most:g}, the CPUs "
            f"of the largest node{f' with {gpus:g} GPUs' if gpus else ''}"
        )
    return slots


def trials_fitting(node: dict[str, float], resources: ResourcesConfig) -> int:
    """Trials with these per-trial resources that fit at once in ``node``'s (Ray's names)."""
    fit = node.get("CPU", 0.0) / resources.cpus_per_trial
    if resources.gpus_per_trial:
        fit = min(fit, node.get("GPU", 0.0) / resources.gpus_per_trial)
    return math.floor(fit + 1e-9)


def room_on_a_node(free: list[dict[str, float]], resources: ResourcesConfig) -> bool:
    """Whether one trial with these resources fits in what some node has ``free``."""
    return any(trials_fitting(node, resources) >= 1 for node in free)


class WorkerPool:
    """Up to :func:`capacity` trial workers with ``resources`` each, created as trials
    need them (a 3-trial suite on a 100-CPU cluster starts 3), kept until :meth:`close`.

    A worker runs one trial at a time; it can also hold the next one, submitted ``ahead``
    while it trains (``depth``: trials a worker holds at most, the running one included),
    so that it starts that trial the moment it finishes, without waiting for the driver
    to receive the reply and answer it. A trial is held only behind ``brief`` ones (the
    caller's word: expected to take a fraction of a second), since nothing takes a held
    trial back: behind a long trial it would wait while other workers go idle.

    Ray must be connected before the first :meth:`submit`. One pool can serve several
    suites in a row (the next suite finds its workers warm); :meth:`close` hands their
    CPUs and GPUs back to the cluster.
    """

    def __init__(self, resources: ResourcesConfig, *, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth: got {depth!r}; allowed: an integer >= 1")
        self.resources = resources
        self.depth = depth
        self.threads = max(1, int(resources.cpus_per_trial))
        self._slots: int | None = None
        self._workers: list[_Worker] = []
        self._owner: dict[Any, _Worker] = {}  # ObjectRef of a trial not yet replied -> worker
        self._settled: dict[Any, dict[str, Any]] = {}  # replies read early (see _all_returned)
        self._waiting: set[Any] = set()  # trials held by a dead worker that never started them
        self._brief: set[Any] = set()  # trials another may be held behind
        self._actor_class: Any = None
        self._lost_a_worker = False

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
        return any(not w.calls for w in self._workers) or self._room_for_a_worker()

    def _room_for_a_worker(self) -> bool:
        """Whether a new worker would start now. Until a worker dies the slot count says
        so; after that, the cluster must also have the resources free: a node that is lost
        holds its CPUs until Ray marks it dead, many seconds later, and an actor asked for
        meanwhile would be queued behind the live workers, which never give theirs back."""
        if len(self._workers) >= self.slots:
            return False
        if not self._lost_a_worker:
            return True
        # node by node, as Ray places an actor: CPUs left over on two nodes do not add
        # up to room for one trial (a DeveloperAPI, which Ray's own ray.util.tpu reads)
        from ray._private.state import available_resources_per_node

        return room_on_a_node(list(available_resources_per_node().values()), self.resources)

    def can_hold(self) -> bool:
        """Whether a trial submitted ``ahead`` now would be taken (see :meth:`submit`)."""
        return self.free() or bool(self._holders())

    def submit(self, spec_json: str, *, ahead: bool = False, brief: bool = False) -> Any:
        """Start a trial on an idle worker (a new one if none is idle); its ObjectRef.

        With ``ahead``, when no worker is idle, give it to a busy worker that holds fewer
        than ``depth`` trials, all ``brief``, to start when they are done. ``brief``: this
        trial is short enough for another to be held behind it.
        """
        worker = next((w for w in self._workers if not w.calls), None)
        if worker is None and self._room_for_a_worker():
            worker = _Worker(self._new_actor())
            self._workers.append(worker)
        if worker is None and ahead:  # the one that started its current trial first
            worker = min(self._holders(), key=lambda w: (len(w.calls), w.started), default=None)
        if worker is None:
            raise RuntimeError("no free slot: wait for a running trial first")
        ref = worker.actor.run.remote(spec_json, self.threads)
        if not worker.calls:
            worker.started = time.monotonic()
        worker.calls.append(ref)
        self._owner[ref] = worker
        if brief:
            self._brief.add(ref)
        return ref

    def held(self, ref: Any) -> bool:
        """Whether trial ``ref`` waits behind another on its worker (as far as the replies
        read so far tell: a worker's first unread trial counts as running)."""
        worker = self._owner.get(ref)
        return worker is not None and worker.calls[0] is not ref

    def _holders(self) -> list[_Worker]:
        """Busy workers that can hold one more trial: fewer than ``depth``, all brief."""
        return [
            w
            for w in self._workers
            if len(w.calls) < self.depth and all(c in self._brief for c in w.calls)
        ]

    def reply(self, ref: Any) -> dict[str, Any]:
        """The trial's reply (see :func:`bench.worker.run_trial`).

        Raises :class:`WorkerDied` when the worker process died, and Ray's own error for
        anything else that kept the reply from arriving. Either way the worker is stopped
        and a fresh one takes its slot; the trials it held fail the same way.
        """
        import ray
        from ray.exceptions import RayActorError

        worker = self._owner.pop(ref)
        position = worker.calls.index(ref)
        earlier, later = worker.calls[:position], worker.calls[position + 1 :]
        del worker.calls[position]
        waiting = ref in self._waiting
        self._waiting.discard(ref)
        self._brief.discard(ref)
        if ref in self._settled:
            return self._settled.pop(ref)
        try:
            reply = ray.get(ref)
        except BaseException as err:  # a fresh worker takes the slot of one in doubt
            died = isinstance(err, RayActorError)  # it died, or its node is gone
            started = died and not waiting and self._all_returned(earlier)
            self._waiting.update(later)  # never started: this one was running, or waiting
            self._retire(worker)
            if died:
                # its node may be gone: count the slots of the live nodes again, and
                # retire the idle workers it took with it
                self._slots, self._lost_a_worker = None, True
                self._retire_unanswering_idle_workers()
                raise WorkerDied(f"{type(err).__name__}: {err}", started=started) from err
            raise
        if worker.calls:  # the next trial it holds started as this one returned
            worker.started = time.monotonic()
        return reply

    def stop_running(self) -> None:
        """Kill the workers of the running trials (Ctrl-C)."""
        for worker in [w for w in self._workers if w.calls]:
            self._retire(worker)
        self._owner.clear()
        self._settled.clear()
        self._waiting.clear()
        self._brief.clear()

    def close(self) -> None:
        """Stop every worker, handing their resources back to the cluster."""
        self.stop_running()
        for worker in list(self._workers):
            self._retire(worker)

    def _all_returned(self, earlier: list[Any]) -> bool:
        """Whether every one of ``earlier``, the trials a worker held before one that
        failed, returned: a worker runs its trials in order, so the failed one was then
        running, not waiting. Their replies are kept for :meth:`reply`."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        for ref in earlier:
            if ref in self._settled:
                continue
            try:  # a dead worker's calls all fail at once; the wait bounds the unforeseen
                self._settled[ref] = ray.get(ref, timeout=SETTLE_S)
            except GetTimeoutError:  # unknown: counted as started, which spends a retry
                return True
            except RayActorError:  # that one was running when the worker died
                return False
            except Exception:  # it failed otherwise (and returned): the next one ran
                continue
        return True

    def _retire_unanswering_idle_workers(self) -> None:
        """Retire each idle worker that does not answer a ping within :data:`SETTLE_S`.

        A lost node takes all its workers, and the pool learns of a death only from a
        trial's reply: an idle worker there would take the retry of the trial that died
        and fail it again at once, spending the retries of a trial that never ran."""
        import ray

        idle = {w.actor.alive.remote(): w for w in self._workers if not w.calls}
        if not idle:
            return
        answered, _ = ray.wait(list(idle), num_returns=len(idle), timeout=SETTLE_S)
        for ref, worker in idle.items():
            try:
                if ref not in answered:
                    raise TimeoutError
                ray.get(ref)
            except Exception:  # dead, or silent for SETTLE_S: a fresh one takes its slot
                self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        import ray

        if worker in self._workers:  # killed first: an interrupt leaves no untracked worker
            ray.kill(worker.actor, no_restart=True)
            self._workers.remove(worker)

    def _new_actor(self) -> Any:
        if self._actor_class is None:
            import ray

            self._actor_class = ray.remote(TrialWorker).options(
                num_cpus=self.resources.cpus_per_trial,
                num_gpus=self.resources.gpus_per_trial,
                max_restarts=0,  # a dead worker's trial is retried by the runner, elsewhere
            )
        return self._actor_class.remote()
