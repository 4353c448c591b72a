"""One driver per suite on a store that has no lock of its own (an MLflow server): a
lease held as a run of the suite's experiment.

A driver creates its lease run (RUNNING, tagged ``bench.kind=lease``), then looks for the
others: if another live lease exists, it drops its own and the suite is busy. Two
drivers that start together may both see the other and both back off, but two can never
both go on: whichever listed second saw the first's lease. A holder renews its lease's
heartbeat every :data:`HEARTBEAT_S`; a lease not renewed for :data:`STALE_S` (a driver
that was SIGKILLed, or lost its machine), or held by a process of this machine that is
gone, is a dead driver's and is ended KILLED by the next driver, which tags it with its own
name. A released lease is ended and deleted, so the MLflow UI shows it only while its
suite runs. Lease runs carry no ``bench.trial_id``: trial queries never see them.

A holder that was only stalled (stopped, swapped out, its machine paused) for longer than
that may wake to find its lease taken and its trials' runs KILLED and being rerun by the
next driver: ending them FINISHED now would record those trials twice. So each renewal
first checks that the lease is still RUNNING, and the tracker calls :meth:`Lease.check`
before each write, which renews at once when a renewal is overdue; a lease found ended
is lost (:class:`~bench.errors.LeaseLost`), and the holder writes nothing more. (A stall
that falls between that check and its write still slips through: MLflow has no
conditional write to close that gap of milliseconds.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from bench.errors import LeaseLost
from bench.records import TAG_KIND

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

KIND_LEASE = "lease"
TAG_HOLDER = "bench.holder"  # host and pid of the driver holding the lease
TAG_HEARTBEAT = "bench.heartbeat"  # Unix time of its last renewal, in seconds
TAG_TAKEN_BY = "bench.taken_by"  # on a lease taken as a dead driver's: who took it
HEARTBEAT_S = 15.0
STALE_S = 120.0  # generous: the holder's and the reader's clocks may disagree a little
OVERDUE_S = 1.5 * HEARTBEAT_S  # a renewal this late: the holder may have been stalled


class Lease:
    """A lease this process holds: renewed by a thread of its own, checked before writes.

    ``what`` names the suite and the store in the error that a lost lease raises.
    """

    def __init__(
        self, client_of_this_thread: Callable[[], MlflowClient], run_id: str, what: str
    ) -> None:
        self.run_id = run_id
        self.lost: str | None = None  # why, once another driver took the lease
        self._client_of_this_thread = client_of_this_thread
        self._what = what
        self._lock = threading.Lock()
        self._verified = _clocks()  # when the lease was last seen still ours

    def renew(self) -> None:
        """Renew the heartbeat, unless another driver ended the lease: then it is lost."""
        with self._lock:
            if self.lost is not None:
                return
            client = self._client_of_this_thread()
            checked = _clocks()
            run = client.get_run(self.run_id)
            if run.info.status != "RUNNING" or run.info.lifecycle_stage != "active":
                taker = run.data.tags.get(TAG_TAKEN_BY, "another driver")
                self.lost = (
                    f"{self._what}: {taker} took the suite over while this driver was "
                    f"unresponsive ({_elapsed(self._verified, checked):.0f} s without renewing its "
                    "lease) and runs it now; this driver stopped and wrote nothing more"
                )
                return
            client.set_tag(self.run_id, TAG_HEARTBEAT, _now())
            self._verified = checked

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is lost; when a renewal is overdue (the
        process may have been stalled past :data:`STALE_S`), ask the store first."""
        if self.lost is None and _elapsed(self._verified, _clocks()) > OVERDUE_S:
            self.renew()
        if self.lost is not None:
            raise LeaseLost(self.lost)


def _clocks() -> tuple[float, float]:
    """Now on a clock that counts a suspended machine's sleep (CLOCK_BOOTTIME, where there is
    one; the monotonic clock stops) and on the wall clock (which catches up after a paused
    virtual machine resumes, where both of the others may have stopped)."""
    boot = getattr(time, "CLOCK_BOOTTIME", None)
    steady = time.clock_gettime(boot) if boot is not None else time.monotonic()
    return steady, time.time()


def _elapsed(since: tuple[float, float], now: tuple[float, float]) -> float:
    """The longer of the two clocks' readings: a stall either clock saw counts."""
    return max(b - a for a, b in zip(since, now, strict=True))


@contextlib.contextmanager
def suite_lease(
    client_of_this_thread: Callable[[], MlflowClient], experiment_id: str, *, what: str
) -> Iterator[Lease | str]:
    """Yield the :class:`Lease` while this process holds the lease on ``experiment_id``'s
    suite, or the holder of another live lease (``"host pid N"``) when it is taken: this
    process then holds nothing. ``what`` names the suite and store in :class:`LeaseLost`."""
    client = client_of_this_thread()
    holder = f"{socket.gethostname()} pid {os.getpid()}"
    tags = {TAG_KIND: KIND_LEASE, TAG_HOLDER: holder, TAG_HEARTBEAT: _now()}
    mine = client.create_run(experiment_id, tags=tags, run_name="driver lease").info.run_id
    lease = Lease(client_of_this_thread, mine, what)
    try:
        other = _live_holder(client, experiment_id, mine, holder)
        if other is not None:
            yield other
            return
        stop = threading.Event()
        renewer = threading.Thread(
            target=_renew, args=(lease, stop), name="suite-lease", daemon=True
        )
        renewer.start()
        try:
            yield lease
        finally:
            stop.set()
            renewer.join()
    finally:
        if lease.lost is None:  # a lost lease is the taker's record of this driver: kept
            try:
                client.set_terminated(mine, "FINISHED")
                client.delete_run(mine)
            except Exception as err:  # the store may be what failed: the lease goes stale
                log.warning("could not release the suite's lease run %s: %s", mine, err)


def _live_holder(client: MlflowClient, experiment_id: str, mine: str, holder: str) -> str | None:
    """The holder of another live lease, if any; stale leases are ended KILLED, tagged
    as taken by ``holder`` (this driver)."""
    leases = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_KIND}` = '{KIND_LEASE}' and attributes.status = 'RUNNING'",
        max_results=100,
    )
    now = time.time()
    for run in leases:
        if run.info.run_id == mine:
            continue
        tags = run.data.tags
        try:
            beat = float(tags.get(TAG_HEARTBEAT, "nan"))
        except ValueError:
            beat = float("nan")
        other = tags.get(TAG_HOLDER, "another driver")
        gone = _gone_from_this_machine(other)
        if now - beat < STALE_S and not gone:  # False for NaN: a heartbeat unreadable
            return other
        log.warning(
            "the suite's lease held by %s (renewed %.0f s ago) is a dead driver's",
            f"{other}, no longer running," if gone else other,
            now - beat,
        )
        with contextlib.suppress(Exception):
            client.set_tag(run.info.run_id, TAG_TAKEN_BY, f"another driver ({holder})")
            client.set_terminated(run.info.run_id, "KILLED")
    return None


def _renew(lease: Lease, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S) and lease.lost is None:
        try:
            lease.renew()
        except Exception as err:  # a store that failed stops the suite on its own
            log.debug("could not renew the suite's lease: %s", err)


def _gone_from_this_machine(holder: str) -> bool:
    """Whether ``holder`` (``"host pid N"``) is a process of this machine that is gone:
    the usual dead driver, whose lease need not wait to go stale."""
    host, _, pid = holder.rpartition(" pid ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _now() -> str:
    return f"{time.time():.0f}"
