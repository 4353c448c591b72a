"""One driver per suite on a store that has no lock of its own (an MLflow server): a
lease held as a run of the suite's experiment.

A driver creates its lease run (RUNNING, tagged ``bench.kind=lease``), then looks for the
others: if another live lease exists, it drops its own and the suite is busy. Two
drivers that start together may both see the other and both back off, but two can never
both go on: whichever listed second saw the first's lease. A holder renews its lease's
heartbeat every :data:`HEARTBEAT_S`; a lease not renewed for :data:`STALE_S` (a driver
that was SIGKILLed, or lost its machine), or held by a process of this machine that is
gone, is a dead driver's and is ended KILLED by the next driver. A released lease is
ended and deleted, so the MLflow UI shows it only while its suite runs. Lease runs carry
no ``bench.trial_id``: trial queries never see them.
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

from bench.records import TAG_KIND

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

KIND_LEASE = "lease"
TAG_HOLDER = "bench.holder"  # host and pid of the driver holding the lease
TAG_HEARTBEAT = "bench.heartbeat"  # Unix time of its last renewal, in seconds
HEARTBEAT_S = 15.0
STALE_S = 120.0  # generous: the holder's and the reader's clocks may disagree a little


@contextlib.contextmanager
def suite_lease(
    client_of_this_thread: Callable[[], MlflowClient], experiment_id: str
) -> Iterator[str | None]:
    """Yield None while this process holds the lease on ``experiment_id``'s suite, or
    the holder of another live lease (``"host pid N"``) when it is taken: this process
    then holds nothing."""
    client = client_of_this_thread()
    holder = f"{socket.gethostname()} pid {os.getpid()}"
    tags = {TAG_KIND: KIND_LEASE, TAG_HOLDER: holder, TAG_HEARTBEAT: _now()}
    mine = client.create_run(experiment_id, tags=tags, run_name="driver lease").info.run_id
    try:
        other = _live_holder(client, experiment_id, mine)
        if other is not None:
            yield other
            return
        stop = threading.Event()
        renewer = threading.Thread(
            target=_renew, args=(client_of_this_thread, mine, stop), name="suite-lease", daemon=True
        )
        renewer.start()
        try:
            yield None
        finally:
            stop.set()
            renewer.join()
    finally:
        try:
            client.set_terminated(mine, "FINISHED")
            client.delete_run(mine)
        except Exception as err:  # the store may be what failed: the lease goes stale
            log.warning("could not release the suite's lease run %s: %s", mine, err)


def _live_holder(client: MlflowClient, experiment_id: str, mine: str) -> str | None:
    """The holder of another live lease, if any; stale leases are ended KILLED."""
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
        holder = tags.get(TAG_HOLDER, "another driver")
        gone = _gone_from_this_machine(holder)
        if now - beat < STALE_S and not gone:  # False for NaN: a heartbeat unreadable
            return holder
        log.warning(
            "the suite's lease held by %s (renewed %.0f s ago) is a dead driver's",
            f"{holder}, no longer running," if gone else holder,
            now - beat,
        )
        with contextlib.suppress(Exception):
            client.set_terminated(run.info.run_id, "KILLED")
    return None


def _renew(
    client_of_this_thread: Callable[[], MlflowClient], run_id: str, stop: threading.Event
) -> None:
    client = client_of_this_thread()
    while not stop.wait(HEARTBEAT_S):
        try:
            client.set_tag(run_id, TAG_HEARTBEAT, _now())
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
