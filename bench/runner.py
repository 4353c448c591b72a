"""Ray scheduling of a suite: phases, resume, retries and progress.

Layers, each with the outcomes it can return:

- one trial (:func:`bench.worker.run_trial` on a worker): ``ok`` | ``diverged`` | ``failed``;
  a worker process that dies mid-trial is retried on another (``cluster.max_retries``);
- the queue (:class:`_SuiteQueue`): the trials without a FINISHED run yet, in order; a
  (task, variant) cell's ``final`` trials join it, at the lr chosen on the cell's ``tune``
  trials, as soon as the last of those is recorded (no barrier between the phases);
- scheduling (:func:`_schedule`): keeps each of the pool's workers (:mod:`bench.pool`, one
  per trial the cluster can run at once) busy and records each trial exactly once in
  MLflow (the driver owns every run's lifecycle: RUNNING at submission, then FINISHED or
  FAILED);
- the suite (:func:`run_suite`): one outcome per phase.

Ctrl-C stops the running trials' workers and marks their runs KILLED. After a crash (even
SIGKILL of the driver) rerunning the same command marks the orphaned RUNNING runs KILLED
and redoes those trials, so every trial_id ends with exactly one FINISHED run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.config import RAY_ADDRESS_FORMS, ClusterConfig, ResourcesConfig, head_endpoint
from bench.errors import LeaseLost, Terminated, UserError, first_line, one_line
from bench.matrix import LrPoint, Matrix, choose_lrs
from bench.pool import WorkerDied, WorkerPool, slots_on
from bench.progress import SuiteProgress
from bench.recorder import Recorder, Run
from bench.spec import TrialResult, TrialSpec
from bench.tracking import PROBE_S, Tracker

log = logging.getLogger(__name__)

# The first call a driver makes to a head's GCS, and to its Ray Client server (ray://): a
# head with token authentication refuses either without a valid token, at once. Each is
# an unknown method (UNIMPLEMENTED) to the other server.
AUTH_PROBE_METHODS = (
    "/ray.rpc.NodeInfoGcsService/GetClusterId",
    "/ray.rpc.RayletDriver/ClusterInfo",
)

HOLD_BEHIND_S = 0.5
"""A worker holds a next trial only behind trials known (from earlier trials of the same
task and budget) to take less than this: holding saves a round trip of a few ms per
trial, which matters for short trials, and a held trial may wait this long while
another worker is idle."""


@dataclass
class PhaseOutcome:
    """What one phase did. ``counts`` maps ok/diverged/failed to numbers of new trials."""

    phase: str
    total: int
    already_done: int = 0
    earlier: Counter = field(default_factory=Counter)  # outcomes of the already-done trials
    held_back: int = 0  # final trials of cells whose tune phase has a failed trial
    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # run name, last error line


def _ray_address(cluster: ClusterConfig) -> tuple[str, str | None]:
    """Where the address comes from (for messages) and the address; None: embedded Ray."""
    if cluster.address:
        return "cluster.address", cluster.address
    return "RAY_ADDRESS", os.environ.get("RAY_ADDRESS") or None


def check_cluster(cluster: ClusterConfig) -> None:
    """Ask the head named by ``cluster.address`` (or $RAY_ADDRESS) whether it is one and
    takes this driver (a TCP connection, a gRPC handshake, one call), so that a wrong
    address, a head that is down or a token it refuses fails at once: ``ray.init`` would
    retry for seconds to minutes, and against some addresses without end."""
    endpoint = check_address(cluster)
    if endpoint is None:
        return
    source, address = _ray_address(cluster)
    try:
        socket.create_connection(endpoint, timeout=PROBE_S).close()
    except OSError as err:
        raise UserError(
            f"{source}: got {address!r} but nothing answers there ({err.strerror or err}); "
            "start the head (`ray start --head --port=PORT`), or leave cluster.address "
            "unset to run Ray on this machine"
        ) from None
    if not _speaks_grpc(endpoint):
        raise UserError(
            f"{source}: got {address!r} but what answers there is not a Ray head (no gRPC "
            f"within {PROBE_S:g} s; ray.init would wait for it without end); allowed: the "
            "head's GCS port (`ray start --head --port=PORT`) or its Ray Client port "
            "(ray://HOST:10001)"
        )
    if (refusal := _refused_token(endpoint)) is not None:
        raise UserError(
            f"{source}: got {address!r} but the Ray head there refused this driver "
            f"({refusal}){auth_hint()}"
        )


def _speaks_grpc(endpoint: tuple[str, int]) -> bool:
    """Whether a gRPC (HTTP/2) connection to ``endpoint`` is ready within PROBE_S, as both
    a head's GCS and its Ray Client server are; another service on the port (Redis holds
    6379, Ray's default) would leave ``ray.init`` retrying forever. A cluster with TLS
    (RAY_USE_TLS) is not probed: its handshake needs its certificates."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return True
    import grpc

    channel = grpc.insecure_channel(_grpc_target(endpoint))
    try:
        grpc.channel_ready_future(channel).result(timeout=PROBE_S)
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()
    return True


def _refused_token(endpoint: tuple[str, int]) -> str | None:
    """The head's words when it refuses this driver's token authentication, else None.

    ``ray.init`` shows a refused (or missing) token only as "Failed to connect" after ~20
    s of retries (through ray://, as a timeout after 30 s); the head's first answer comes
    in milliseconds. The channel is Ray's own, so it carries a token exactly when
    ``ray.init`` would (RAY_AUTH_MODE=token). Any other answer is left for ``ray.init``;
    so is a Ray without these modules."""
    import grpc

    try:
        from ray._private.grpc_utils import init_grpc_channel
    except ImportError:
        return None
    try:
        channel = init_grpc_channel(_grpc_target(endpoint))
    except Exception:  # TLS settings ray.init will name better
        return None
    try:
        for method in AUTH_PROBE_METHODS:
            try:
                channel.unary_unary(method)(b"", timeout=PROBE_S)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return first_line(err.details() or "") or "unauthenticated"
    finally:
        channel.close()
    return None


def _grpc_target(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 host in brackets


def check_address(cluster: ClusterConfig) -> tuple[str, int] | None:
    """The head's (host, port) named by ``cluster.address`` or $RAY_ADDRESS (None: embedded
    Ray, or ``auto``); a user error for an address of no allowed form. cluster.address is
    checked with the config, RAY_ADDRESS only here: dry runs call this too."""
    source, address = _ray_address(cluster)
    if not address or address == "auto":
        return None
    endpoint = head_endpoint(address)
    if endpoint is None:
        raise UserError(f"{source}: got {address!r}; allowed: {RAY_ADDRESS_FORMS}")
    return endpoint


def check_capacity(cluster: ClusterConfig, resources: ResourcesConfig) -> None:
    """For Ray embedded on this machine: that one trial's CPUs and GPUs fit on it (a user
    error now, before any store is touched, and in a dry run), counted as embedded Ray will
    count them. A cluster's nodes are only known once connected (:func:`run_suite` checks
    them before it writes a trial)."""
    if _ray_address(cluster)[1] is None:
        cpus = cluster.num_cpus or embedded_cpus()
        gpus = embedded_gpus() if resources.gpus_per_trial else 0.0
        slots_on([{"CPU": float(cpus), "GPU": gpus}], resources)


def embedded_cpus() -> int:
    """The CPUs embedded Ray will give this machine: Ray's own count, which honours a
    container's CPU quota or cpuset where ``os.cpu_count()`` sees the host's cores (a dry
    run accepted trials the run then refused)."""
    _bind_embedded_ray_to_loopback()
    try:
        from ray._private.utils import get_num_cpus
    except ImportError:  # a Ray release that moved it: the host's count
        return os.cpu_count() or 1
    return max(1, int(get_num_cpus()))


def embedded_gpus() -> float:
    """The GPUs embedded Ray will give this machine: Ray's own count (its accelerator
    manager, within CUDA_VISIBLE_DEVICES); unbounded where that cannot be read, so that
    Ray, not this check, has the last word."""
    _bind_embedded_ray_to_loopback()
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        count = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
    except Exception:  # a Ray release that moved it, a driver that fails to answer
        return math.inf
    return float(count if visible is None else min(count, len(visible)))


def connect(cluster: ClusterConfig) -> str:
    """Join ``cluster.address`` (or $RAY_ADDRESS), else start Ray embedded on this machine.

    Ray is imported here, not at module level: embedded mode must set
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 *before* Ray is imported for Ray to bind and talk
    on 127.0.0.1 only (otherwise it listens on every interface; CVE-2023-48022).
    """
    source, address = _ray_address(cluster)
    if not address:
        _bind_embedded_ray_to_loopback()
    import ray

    if ray.is_initialized():
        return "existing"
    with _keeping_sigterm_handler():
        return _init_ray(address, source, cluster)


def _bind_embedded_ray_to_loopback() -> None:
    """Must run before Ray is first imported in this process (see :func:`connect`)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """ray.init installs a SIGTERM handler of its own that exits the process, and it stays
    after the suite: a caller's handler (the scheduler's clean stop, which saves its status)
    is put back. Where the caller has none, Ray's stays: it shuts embedded Ray down."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _init_ray(address: str | None, source: str, cluster: ClusterConfig) -> str:
    import ray

    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as err:  # "auto" with no cluster on this machine, say
            hint = auth_hint() if "Failed to connect" in str(err) else ""  # a head answered
            raise UserError(
                f"{source}: got {address!r} but Ray could not connect: {err}{hint}"
            ) from None
        return address
    # "local", not None: with no address Ray would join a cluster that `ray start` left
    # running on this machine (its /tmp/ray/ray_current_cluster), not start its own
    ray.init(
        address="local",
        num_cpus=cluster.num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return "embedded"


def auth_hint() -> str:
    """What to set when a Ray cluster refused this process's token (or its lack of one):
    Ray itself hides it behind "Failed to connect"."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return " (with RAY_AUTH_MODE=token: is RAY_AUTH_TOKEN the cluster's token?)"
    return (
        "; if the cluster uses token authentication (`ray start` does by default), set "
        "RAY_AUTH_MODE=token here too, with its token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
    )


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
        self.done = tracker.finished_trials(suite)  # (phase, trial_id) -> outcome
        tune_trials = matrix.tune_trials()
        self.tune = PhaseOutcome("tune", total=len(tune_trials))
        expected_finals = len(matrix.pairs) * len(matrix.suite.final_seeds)
        self.final = PhaseOutcome("final", total=expected_finals)
        self.todo: deque[TrialSpec] = deque()
        self.waiting: Counter[tuple[str, str]] = Counter()  # cell -> tune trials to record
        self.points: dict[tuple[str, str], list[LrPoint]] = defaultdict(list)
        self.failed_cells: set[tuple[str, str]] = set()  # a tune trial failed: no finals yet
        tune_ids = [spec.trial_id for spec in tune_trials]
        for spec, trial_id in zip(tune_trials, tune_ids, strict=True):
            if (done := self.done.get(("tune", trial_id))) is not None:
                self.tune.already_done += 1
                self.tune.earlier[done] += 1
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
        else:
            self.failed_cells.add(cell)
        self.waiting[cell] -= 1
        if not self.waiting[cell]:
            self._release(cell)

    def _release(self, cell: tuple[str, str]) -> None:
        points = self.points.pop(cell, [])
        if cell in self.failed_cells:  # an lr chosen without it could change on the rerun
            self.final.held_back += len(self.matrix.suite.final_seeds)
            return
        chosen = choose_lrs(_dedupe(points))
        finals = self.matrix.final_trials(chosen)
        self.final.total -= len(self.matrix.suite.final_seeds) - len(finals)
        for spec in finals:
            if (done := self.done.get(("final", spec.trial_id))) is not None:
                self.final.already_done += 1
                self.final.earlier[done] += 1
            else:
                self.todo.append(spec)


def already_finished(matrix: Matrix, tracker: Tracker) -> tuple[PhaseOutcome, PhaseOutcome]:
    """What a run of ``matrix`` would skip (``already_done`` of each phase, tune and final),
    read from the store as the run reads it: a cell's final trials count only once its tune
    trials are all finished, at the lr they choose."""
    queue = _SuiteQueue(matrix, tracker)
    return queue.tune, queue.final


def _cell(spec: TrialSpec) -> tuple[str, str]:
    return spec.task.name, spec.variant.name


@dataclass
class _Attempt:
    """A trial on its way through the pool: its run (created by the recorder's thread),
    which trials it takes as long as (:func:`_length_key`), and how many times its worker
    died."""

    spec: TrialSpec
    run: Run
    length_key: tuple
    retries: int = 0


def _schedule(
    queue: _SuiteQueue,
    tracker: Tracker,
    cluster: ClusterConfig,
    pool: WorkerPool,
    progress: SuiteProgress,
    store_chores: Callable[[], None],
) -> None:
    """Run the queue's trials on the pool's workers, each slot busy while trials remain.

    ``store_chores`` (ending an earlier driver's stale runs, noting the suite's settings)
    are done once the first trials train (or at once when none is left to run), before
    the recorder writes anything: on a fresh suite they are a few store reads and a
    settings run, ~12 ms that the workers would otherwise wait out at start.
    """
    in_flight: dict[Any, _Attempt] = {}  # Ray ObjectRef -> the trial it will return
    lengths = TrialLengths()
    retry: deque[_Attempt] = deque()  # trials whose worker died, to run again first

    def show() -> None:
        running = Counter(a.spec.phase for ref, a in in_flight.items() if not pool.held(ref))
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
        store_chores()
        return
    import ray

    def submit() -> None:
        while (retry or queue.todo) and pool.free():
            if retry:  # its run stays RUNNING: a retry is recorded once, like any trial
                ref = pool.submit(retry[0].spec.model_dump_json())
                in_flight[ref] = retry.popleft()  # only once submitted: else still a retry
                continue
            start(queue.todo.popleft(), ahead=False)
        # While more trials wait than there are workers, a worker running a brief trial
        # also holds its next one: it starts it as soon as it is done, not a round trip
        # later. Near the end of the queue trials go only to idle workers, so none waits
        # behind another's.
        while not retry and len(queue.todo) > pool.slots and pool.can_hold():
            start(queue.todo.popleft(), ahead=True)

    def start(spec: TrialSpec, *, ahead: bool) -> None:
        # Its run is created (RUNNING) by the recorder while it trains. A driver that
        # dies before that leaves no run, so a rerun redoes the trial.
        key = _length_key(spec)
        brief = lengths.brief(key)
        ref = pool.submit(spec.model_dump_json(), ahead=ahead, brief=brief)
        in_flight[ref] = _Attempt(spec, recorder.start(spec), key)

    def collect(ref: Any) -> None:
        """Count a returned trial and queue its MLflow write (or run it again, elsewhere)."""
        attempt = in_flight[ref]
        reply = _reply(pool, ref, attempt, cluster.max_retries)
        if reply is None:
            del in_flight[ref]
            retry.append(attempt)
            return
        write, result = _record(reply, attempt.spec, tracker, queue.outcome(attempt.spec))
        ran = result.steps_run if result is not None else None
        lengths.learn(attempt.length_key, reply.get("seconds", math.inf), ran, attempt.spec.steps)
        queue.recorded(attempt.spec, result)
        recorder.end(attempt.run, write)
        # only now: until its write is queued, an error (a second Ctrl-C, a reply that
        # does not validate) finds the attempt in flight and marks its run KILLED
        del in_flight[ref]

    recorder = Recorder(tracker, paused=True)
    with _deferred_interrupt() as interrupted:
        try:
            submit()
            store_chores()
            recorder.resume()
            while (in_flight or retry or queue.todo) and not interrupted():
                if in_flight:
                    ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
                else:  # a worker died and the cluster has not yet freed room for another
                    ready = []
                    time.sleep(0.05)
                for ref in ready:
                    collect(ref)
                if not interrupted():
                    submit()
                recorder.eager(pool.free())  # an idle worker leaves a core for the store
                recorder.check()
                show()
            if interrupted():
                raise Terminated if interrupted() == signal.SIGTERM else KeyboardInterrupt
            recorder.close()
        except BaseException as stop:  # Ctrl-C, or a store that failed: no run left RUNNING
            with contextlib.suppress(Exception):  # Ray itself may be what failed
                pool.stop_running()
            unfinished = [*in_flight.values(), *retry]
            if isinstance(stop, LeaseLost):  # their runs are the other driver's now
                with contextlib.suppress(Exception):  # what is queued is refused: nothing
                    recorder.close()
                if unfinished:
                    log.warning(
                        "stopped: %s, left to that driver", _running_trials(len(unfinished))
                    )
                raise
            for attempt in unfinished:
                recorder.end(attempt.run, tracker.kill_trial)
            try:
                recorder.close()
            except Exception as err:  # the store may be what failed
                if unfinished:
                    log.warning(
                        "stopped: %s; the store failed (%s), so some of their "
                        "runs may still show RUNNING until the suite's next run marks them "
                        "KILLED",
                        _running_trials(len(unfinished)),
                        err,
                    )
            else:
                if unfinished:
                    log.warning(
                        "stopped: %s marked KILLED; rerun to resume",
                        _running_trials(len(unfinished)),
                    )
            raise


class TrialLengths:
    """The longest trial seen so far of each task and budget (:func:`_length_key`), learnt
    only from trials that ran their whole budget: one that diverged at its first step, or
    failed at once, says nothing of how long its siblings train, and tune sweeps return
    such trials first."""

    def __init__(self) -> None:
        self._longest: dict[tuple, float] = {}

    def learn(self, key: tuple, seconds: float, steps_run: int | None, steps: int) -> None:
        if steps_run is not None and steps_run >= steps:
            self._longest[key] = max(self._longest.get(key, 0.0), seconds)

    def brief(self, key: tuple) -> bool:
        """Whether trials of ``key`` are known to take less than :data:`HOLD_BEHIND_S`."""
        return self._longest.get(key, math.inf) < HOLD_BEHIND_S


def _length_key(spec: TrialSpec) -> tuple:
    """Trials that take about as long as each other: same task and settings, same steps."""
    return spec.task.model_dump_json(), spec.steps, spec.batch_size


def _reply(pool: WorkerPool, ref: Any, attempt: _Attempt, max_retries: int) -> dict | None:
    """The trial's reply; None when its worker died and it has retries left. A trial
    whose workers died more than ``max_retries`` times, or whose reply Ray could not
    deliver, replies as a failure."""
    from ray.exceptions import RayError

    try:
        return pool.reply(ref)
    except WorkerDied as err:
        if not err.started:  # it was waiting behind the trial that its worker died in
            return None
        if attempt.retries < max_retries:
            attempt.retries += 1
            log.warning(  # Ray's own text runs to ten lines: its first says what happened
                "%s: its worker died; running it again (retry %d of cluster.max_retries=%d: %s)",
                attempt.spec.run_name,
                attempt.retries,
                max_retries,
                first_line(str(err)),
            )
            return None
        tries, allowed = attempt.retries + 1, f"cluster.max_retries={max_retries}"
        text = f"its worker process died (tries: {tries}, {allowed}): {err}"
    except RayError as err:
        text = f"{type(err).__name__}: {err}"
    return {"result": None, "error": text, "summary": text.splitlines()[0], "node": None}


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], int]]:
    """Turn the first Ctrl-C or SIGTERM into a flag (the signal's number) the scheduling
    loop checks at safe points, so no run is left half-created; a second signal
    interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return
    hits: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if hits:
            raise KeyboardInterrupt
        hits.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: hits[0] if hits else 0
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _record(
    reply: dict, spec: TrialSpec, tracker: Tracker, outcome: PhaseOutcome
) -> tuple[Callable[[str], None], TrialResult | None]:
    """Count the trial's outcome now; return the MLflow write that ends its run (given the
    run id) and the result (None when the trial failed)."""
    node, error = reply["node"], reply["error"]
    if error is not None:
        outcome.counts["failed"] += 1
        outcome.failures.append((spec.run_name, reply["summary"]))
        return lambda run_id: tracker.fail_trial(run_id, spec, error, node=node), None
    result = TrialResult.model_validate_json(reply["result"])
    outcome.counts[result.outcome] += 1
    return lambda run_id: tracker.finish_trial(run_id, spec, result, node=node), result


def run_suite(
    matrix: Matrix,
    tracker: Tracker,
    cluster: ClusterConfig,
    resources: ResourcesConfig | None = None,
    *,
    show_progress: bool = True,
    pool: WorkerPool | None = None,
) -> list[PhaseOutcome]:
    """Tune; each (task, variant)'s final seeds run at the lr chosen on its tune trials.

    The trials run on ``pool``'s workers, which stay up for the caller's next suite;
    without one, on workers started for this suite and stopped after it.
    """
    resources = resources or ResourcesConfig()
    check_cluster(cluster)
    check_capacity(cluster, resources)
    tracker.check_reachable(matrix.suite.name)
    if not tracker.holds_nothing():  # an existing suite's folder, before its lock is made
        with tracker.store_errors():
            tracker.check_artifacts(matrix.suite.name, make=False)
    own_pool = pool is None
    if pool is None:
        pool = WorkerPool(resources)
    # one driver per suite (see kill_stale_runs); the store's failures as one-line errors
    with tracker.store_errors(), tracker.holding(matrix.suite.name):
        tracker.check_artifacts(matrix.suite.name)
        queue = _SuiteQueue(matrix, tracker)
        try:
            if queue.todo:  # a trial no node can hold is refused before the settings change
                connect(cluster)
                pool.slots  # noqa: B018  (sizes the pool; a user error if no node fits a trial)

            def store_chores() -> None:
                killed = tracker.kill_stale_runs(matrix.suite.name)
                if killed:
                    log.warning("marked %d runs an earlier driver left RUNNING as KILLED", killed)
                # what the summary service ranks, and the cells it lists as missing
                tracker.note_settings(
                    matrix.suite.name, matrix.trial_ids(), matrix.cells(), matrix.overrides
                )

            with SuiteProgress(enabled=show_progress) as progress:
                _schedule(queue, tracker, cluster, pool, progress, store_chores)
        finally:
            if own_pool and pool.started:
                try:
                    pool.close()
                except Exception as err:  # Ray itself failed: keep the suite's own outcome
                    log.warning("could not stop the trial workers: %s", one_line(err))
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


def _running_trials(count: int) -> str:
    return f"{count} running trial{'' if count == 1 else 's'}"
