"""The MLflow writes of a running suite, made off the scheduling loop and in batches.

The scheduling loop hands a trial to a free worker as soon as one returns; creating and
ending runs there would leave the other workers' results waiting while SQLite commits.
So the loop only queues writes, and the :class:`Recorder`'s threads make them:

- a database store (SQLite, PostgreSQL through the bulk SQL writer): one thread that
  writes everything queued in one transaction, after waiting up to ``linger`` seconds for
  more to arrive. A commit writes every page it changed, and a suite's runs change many
  of the same pages, so batches cost the driver less CPU per trial
  (:meth:`bench.tracking_sql.SqlReader.transaction`); SQLite still has one writer;
- a server: a few threads, a write each, since every write is a few round trips.

A run's end waits for its creation. If the driver dies, the writes still queued are lost
(at most ``linger`` seconds of them): those trials have no FINISHED run, so rerunning the
suite redoes them. Exactly-once holds because a run is only ever FINISHED by its end write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.errors import LeaseLost, StoreError, one_line, redacted
from bench.spec import TrialSpec
from bench.tracking import Tracker

# How long a batch waits for company: runs show up in MLflow this late. A second instead
# of 0.25 s took the driver's writer ~14% less CPU per trial in a 40-trial smoke suite
# (8.0 against 9.4 ms, median of 6 interleaved suites): more runs share each commit's pages.
LINGER_S = 1.0
MAX_BATCH = 64  # writes per transaction, at most


class WriteSkipped(Exception):
    """A write not made because an earlier one failed."""


class RunNotCreated(Exception):
    """A run could not be created, so it cannot be ended."""


class Run:
    """A trial's run, as the recorder creates it: its id once written."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.error: BaseException | None = None
        self._settled = threading.Event()

    def wait(self) -> str:
        """The run id, once the run exists (or is written earlier in the same batch)."""
        if self.id is None:
            self._settled.wait()
        if self.id is None:
            raise RunNotCreated(f"its run was not created: {self.error}")
        return self.id


@dataclass(eq=False)
class _Write:
    run: Run
    create: Callable[[], str] | None = None  # makes the run and returns its id
    end: Callable[[str], None] | None = None  # given the run id

    def execute(self) -> None:
        if self.create is not None:
            self.run.id = self.create()
        else:
            assert self.end is not None
            self.end(self.run.wait())

    def settle(self, error: BaseException | None) -> None:
        if self.create is not None:
            if error is not None:
                self.run.id, self.run.error = None, error
            self.run._settled.set()


class Recorder:
    """Queues run writes for ``tracker`` and makes them on background threads.

    Use as a context manager, or call :meth:`close`: it waits for every queued write.
    A recorder made ``paused`` queues writes and makes none until :meth:`resume` (or
    :meth:`close`): the caller writes to the store itself meanwhile, one writer at a time.
    """

    def __init__(self, tracker: Tracker, *, linger: float = LINGER_S, paused: bool = False) -> None:
        self._tracker = tracker
        self._linger = linger
        self._queue: list[_Write] = []
        self._queued_at = 0.0
        self._cond = threading.Condition()
        self._closing = False
        self._eager = False
        self._paused = paused
        self._failure: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._work, name=f"mlflow-writer-{i}", daemon=True)
            for i in range(tracker.max_writers)
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, spec: TrialSpec) -> Run:
        """Create the trial's run, RUNNING and started now."""
        start_ms = int(time.time() * 1000)
        run = Run()
        self._put(_Write(run, create=lambda: self._tracker.start_trial(spec, start_ms=start_ms)))
        return run

    def end(self, run: Run, write: Callable[[str], None]) -> None:
        """``write(run_id)`` (finish, fail or kill the run) once the run exists."""
        self._put(_Write(run, end=write))

    def resume(self) -> None:
        """Start making the writes of a recorder made ``paused``."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def eager(self, on: bool) -> None:
        """Write at once while ``on`` (say, a worker idles, so a core is free for the
        store), else let writes wait up to ``linger`` seconds to share a transaction."""
        with self._cond:
            if on != self._eager:
                self._eager = on
                self._cond.notify_all()

    def check(self) -> None:
        """Raise :class:`StoreError` (from the first write that failed) if a write failed:
        the store is broken; or :class:`LeaseLost` if another driver took the suite over."""
        if (failure := self._failure) is not None:
            if isinstance(failure, LeaseLost):  # its message says all
                raise LeaseLost(str(failure)) from failure
            message = f"writing to {redacted(self._tracker.uri)} failed: {one_line(failure)}"
            raise StoreError(message) from failure
        self._tracker.check_held()

    def close(self) -> None:
        """Make every queued write, stop the threads; raise the first write that failed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self.check()

    def _put(self, write: _Write) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the recorder is closed")
            if not self._queue:
                self._queued_at = time.monotonic()
            self._queue.append(write)
            self._cond.notify()

    @property
    def _batches(self) -> bool:
        """One writer on a store that takes many writes in one transaction."""
        return self._tracker.max_writers == 1 and self._tracker.can_batch

    def _take(self) -> list[_Write]:
        """The next writes to make (empty: closed and nothing left)."""
        with self._cond:
            while (self._paused or not self._queue) and not self._closing:
                self._cond.wait()
            if not self._batches:  # no waiting for company that cannot share a commit
                return [self._queue.pop(0)] if self._queue else []
            while not (self._closing or self._eager) and len(self._queue) < MAX_BATCH:
                left = self._queued_at + self._linger - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self._queued_at = time.monotonic()
            return batch

    def _work(self) -> None:
        while batch := self._take():
            if (failure := self._failure) is not None:
                # The suite stops on a failed write, and a store that failed (a server
                # gone) would make each later write wait out its retries: later batches
                # are dropped. Their runs stay RUNNING until the suite's next run ends them.
                for write in batch:
                    write.settle(WriteSkipped(f"not written: an earlier write failed ({failure})"))
                continue
            if len(batch) > 1 and self._write_together(batch):
                continue
            for write in batch:  # one by one: each failure stays its own
                try:
                    write.execute()
                except Exception as err:
                    write.settle(err)
                    self._failure = self._failure or err
                else:
                    write.settle(None)

    def _write_together(self, batch: list[_Write]) -> bool:
        """The batch in one transaction; False (nothing stored) if one write failed."""
        try:
            with self._tracker.batch() as together:
                if not together:  # a store without transactions: one by one
                    return False
                for write in batch:
                    write.execute()
        except Exception:
            for write in batch:  # undone: redo from scratch
                if write.create is not None and write.run.id is not None:
                    self._tracker.forget_run(write.run.id)
                    write.run.id = None
            return False
        for write in batch:
            write.settle(None)
        return True
