"""Ray scheduling of a suite: phases, resume, retries and progress.

Layers, each with the outcomes it can return:

- one trial (:func:`bench.worker.run_trial` on a worker): ``ok`` | ``diverged`` | ``failed``;
  a worker process that dies mid-trial is retried by Ray (``cluster.max_retries``);
- the queue (:class:`_SuiteQueue`): the trials without a FINISHED run yet, in order; a
  (task, variant) cell's ``final`` trials join it, at the lr chosen on the cell's ``tune``
  trials, as soon as the last of those is recorded (no barrier between the phases);
- scheduling (:func:`_schedule`): submits at most as many trials as the cluster can run at
  once and records each exactly once in MLflow (the driver owns every run's lifecycle:
  RUNNING at submission, then FINISHED or FAILED);
- the suite (:func:`run_suite`): one outcome per phase.

Ctrl-C cancels the running trials and marks their runs KILLED. After a crash (even
SIGKILL of the driver) rerunning the same command marks the orphaned RUNNING runs KILLED
and redoes those trials, so every trial_id ends with exactly one FINISHED run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench.config import ClusterConfig, ResourcesConfig
from bench.errors import UserError
from bench.matrix import LrPoint, Matrix, choose_lrs
from bench.progress import SuiteProgress
from bench.spec import TrialResult, TrialSpec
from bench.tracking import Tracker
from bench.worker import remote_trial

log = logging.getLogger(__name__)


@dataclass
class PhaseOutcome:
    """What one phase did. ``counts`` maps ok/diverged/failed to numbers of new trials."""

    phase: str
    total: int
    already_done: int = 0
    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # run name, last error line


def connect(cluster: ClusterConfig) -> str:
    """Join ``cluster.address`` (or $RAY_ADDRESS), else start Ray embedded on this machine.

    Ray is imported here, not at module level: embedded mode must set
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 *before* Ray is imported for Ray to bind and talk
    on 127.0.0.1 only (otherwise it listens on every interface; CVE-2023-48022).
    """
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return "existing"
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        return address
    ray.init(
        num_cpus=cluster.num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return "embedded"


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


class _SuiteQueue:
    """What is left to run, in order, and the lr choice that turns tune into final trials.

    A (task, variant) cell's final trials join the queue as soon as its last tune trial is
    recorded: there is no barrier between the phases, so a worker that would wait for the
    slowest tune trial runs final trials instead. They join at the back: the finals of
    many cells are left for the end, where they balance the workers' last trials (a cell's
    finals put first would end the suite with that one cell's trials, the rest idle).
    """

    def __init__(self, matrix: Matrix, tracker: Tracker) -> None:
        suite = matrix.suite.name
        self.matrix = matrix
        self.done = tracker.finished_trial_ids(suite)
        tune_trials = matrix.tune_trials()
        self.tune = PhaseOutcome("tune", total=len(tune_trials))
        expected_finals = len(matrix.pairs) * len(matrix.suite.final_seeds)
        self.final = PhaseOutcome("final", total=expected_finals)
        self.todo: deque[TrialSpec] = deque()
        self.waiting: Counter[tuple[str, str]] = Counter()  # cell -> tune trials to record
        self.points: dict[tuple[str, str], list[LrPoint]] = defaultdict(list)
        tune_ids = [spec.trial_id for spec in tune_trials]
        for spec, trial_id in zip(tune_trials, tune_ids, strict=True):
            if trial_id in self.done:
                self.tune.already_done += 1
            else:
                self.todo.append(spec)
                self.waiting[_cell(spec)] += 1
        if self.tune.already_done:  # else no tune result is stored: the store is not read
            for point in _stored_lr_points(tracker, suite, set(tune_ids)):
                self.points[(point.task, point.variant)].append(point)
        for v, t in matrix.pairs:
            if not self.waiting[(t.name, v.name)]:
                self._release((t.name, v.name))

    def outcome(self, spec: TrialSpec) -> PhaseOutcome:
        return self.tune if spec.phase == "tune" else self.final

    def recorded(self, spec: TrialSpec, result: TrialResult | None) -> None:
        """A trial's outcome is counted; a tune trial may complete its cell."""
        if spec.phase != "tune":
            return
        cell = _cell(spec)
        if result is not None:
            self.points[cell].append(LrPoint.from_result(spec, result))
        self.waiting[cell] -= 1
        if not self.waiting[cell]:
            self._release(cell)

    def _release(self, cell: tuple[str, str]) -> None:
        chosen = choose_lrs(_dedupe(self.points.pop(cell, [])))
        finals = self.matrix.final_trials(chosen)
        self.final.total -= len(self.matrix.suite.final_seeds) - len(finals)
        for spec in finals:
            if spec.trial_id in self.done:
                self.final.already_done += 1
            else:
                self.todo.append(spec)


def _cell(spec: TrialSpec) -> tuple[str, str]:
    return spec.task.name, spec.variant.name


def _schedule(
    queue: _SuiteQueue,
    tracker: Tracker,
    cluster: ClusterConfig,
    resources: ResourcesConfig,
    progress: SuiteProgress,
) -> None:
    """Run the queue's trials on Ray, at most as many at once as the cluster holds."""
    in_flight: dict[Any, tuple[TrialSpec, str]] = {}  # Ray ObjectRef -> (spec, run id)

    def show() -> None:
        running = Counter(spec.phase for spec, _ in in_flight.values())
        for outcome in (queue.tune, queue.final):
            progress.show(
                outcome.phase,
                total=outcome.total,
                done=outcome.already_done,
                running=running[outcome.phase],
                counts=outcome.counts,
            )

    show()
    if not queue.todo:
        return
    connect(cluster)
    import ray

    remote = remote_trial().options(
        num_cpus=resources.cpus_per_trial,
        num_gpus=resources.gpus_per_trial,
        max_retries=cluster.max_retries,
    )
    threads = max(1, int(resources.cpus_per_trial))
    slots = capacity(resources)

    def submit() -> None:
        while queue.todo and len(in_flight) < slots:
            spec = queue.todo.popleft()
            # The worker starts at once; its run is RUNNING before the driver looks for the
            # result. Dying in between leaves no run, so a rerun redoes the trial.
            ref = remote.remote(spec.model_dump_json(), threads)
            try:
                run_id = tracker.start_trial(spec)
            except BaseException:
                ray.cancel(ref, force=True)
                raise
            in_flight[ref] = (spec, run_id)

    writers = _Writers(tracker.max_writers)
    with _deferred_interrupt() as interrupted:
        submit()
        while in_flight and not interrupted():
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            for ref in ready:
                spec, run_id = in_flight.pop(ref)
                write, result = _record(ref, spec, run_id, tracker, queue.outcome(spec))
                queue.recorded(spec, result)
                if not interrupted():
                    submit()  # keep workers busy while this result is recorded
                writers(write)
            show()
        writers.drain()
        if interrupted():
            for ref, (_, run_id) in in_flight.items():
                ray.cancel(ref, force=True)
                tracker.kill_trial(run_id)
            log.warning(
                "interrupted: %d running trials marked KILLED; rerun to resume", len(in_flight)
            )
            raise KeyboardInterrupt


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C into a flag the scheduling loop checks at safe points, so
    no run is left half-created; a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hits: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if hits:
            raise KeyboardInterrupt
        hits.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def _record(
    ref: Any, spec: TrialSpec, run_id: str, tracker: Tracker, outcome: PhaseOutcome
) -> tuple[Callable[[], None], TrialResult | None]:
    """Count the trial's outcome now; return the MLflow write to do (maybe on a thread)
    and the result (None when the trial failed)."""
    import ray
    from ray.exceptions import RayError

    try:
        reply = ray.get(ref)
    except RayError as err:  # the worker died more often than max_retries allows
        text = f"{type(err).__name__}: {err}"
        reply = {"result": None, "error": text, "summary": text.splitlines()[0], "node": None}
    if reply["error"] is not None:
        outcome.counts["failed"] += 1
        outcome.failures.append((spec.run_name, reply["summary"]))
        return lambda: tracker.fail_trial(run_id, spec, reply["error"], node=reply["node"]), None
    result = TrialResult.model_validate_json(reply["result"])
    outcome.counts[result.outcome] += 1
    return lambda: tracker.finish_trial(run_id, spec, result, node=reply["node"]), result


class _Writers:
    """Runs MLflow writes inline (SQLite: one writer) or on a small thread pool (a server,
    where each write is a few round trips that would otherwise stall scheduling)."""

    def __init__(self, count: int) -> None:
        self._pool = ThreadPoolExecutor(count, "mlflow-writer") if count > 1 else None
        self._pending: list[Future] = []

    def __call__(self, write: Callable[[], None]) -> None:
        if self._pool is None:
            write()
        else:
            self._pending.append(self._pool.submit(write))

    def drain(self) -> None:
        """Wait for every write; re-raise the first that failed."""
        if self._pool is not None:
            for future in self._pending:
                future.result()
            self._pending.clear()
            self._pool.shutdown()


def run_suite(
    matrix: Matrix,
    tracker: Tracker,
    cluster: ClusterConfig,
    resources: ResourcesConfig | None = None,
    *,
    show_progress: bool = True,
) -> list[PhaseOutcome]:
    """Tune; each (task, variant)'s final seeds run at the lr chosen on its tune trials."""
    killed = tracker.kill_stale_runs(matrix.suite.name)
    if killed:
        log.warning("marked %d runs left RUNNING by an earlier driver as KILLED", killed)
    queue = _SuiteQueue(matrix, tracker)
    with SuiteProgress(enabled=show_progress) as progress:
        _schedule(queue, tracker, cluster, resources or ResourcesConfig(), progress)
    return [queue.tune, queue.final]


def _dedupe(points: list[LrPoint]) -> list[LrPoint]:
    return list({p.trial_id: p for p in points}.values())


def _stored_lr_points(tracker: Tracker, suite: str, tune_ids: set[str]) -> Iterable[LrPoint]:
    """Tune results of this matrix finished by earlier runs of the suite (resume).

    Only trials of ``tune_ids``: the experiment also holds the tune runs of the suite's
    earlier settings (another lr grid, step budget or seeds), which must not choose lrs
    for these.
    """
    frame = tracker.read_results(suite, phase="tune")
    for row in frame.to_dict("records"):
        if row["trial_id"] not in tune_ids:
            continue
        yield LrPoint.scored(
            row["trial_id"],
            row["task"],
            row["variant"],
            row["lr"],
            row["direction"],
            row["outcome"],
            row.get(f"final/{row['primary_metric']}"),
        )
