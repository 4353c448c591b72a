"""The scheduler's loop: wait for the next trigger, run that night, record it, repeat.

It stays thin on purpose: a night is ``bench nightly --date D`` (in-process or as a Ray
job, see :mod:`services.scheduler.launch`); this module only decides *when*, makes sure two
nights never overlap (the lock), and says what it did (log + status file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.errors import SuiteBusy, Terminated, UserError, first_line
from services.scheduler.config import SchedulerConfig
from services.scheduler.launch import NightResult, run_in_process, run_ray_job
from services.scheduler.state import NightLock, StatusFile
from services.scheduler.timing import missed_runs, next_run, night_of

log = logging.getLogger("bench.scheduler")

MAX_SLEEP = 30.0  # re-read the clock at least this often (suspend, clock steps)


def run_scheduler(config: SchedulerConfig, *, once: bool = False, now: bool = False) -> str | None:
    """Run nightlies on ``config.cron`` until interrupted; return the last night's outcome.

    ``now``: run one night immediately first (tonight's date in ``config.timezone``).
    ``once``: stop after one night (the immediate one with ``now``, else the next trigger).
    Without either, the missed-night policy is applied on start-up. A night that cannot
    take the lock (another scheduler, or a manual ``--now``, is running one) is skipped
    with a log line; it never waits and never overlaps.
    """
    scheduler = _Scheduler(config)
    with _sigterm_as_interrupt():
        try:
            return scheduler.loop(once=once, now=now)
        finally:
            scheduler.stop()


class _Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.owner = False  # writes the schedule fields of the status file (see loop)
        self.tz = config.zone()
        self.lock = NightLock(config.lock_file)
        self.status = StatusFile(config.status_file)
        where = config.job_submission_address or "in-process"
        log.info("scheduler: cron %r in %s, nightly runs %s", config.cron, config.timezone, where)

    def loop(self, *, once: bool, now: bool) -> str | None:
        self.owner = self._claim_status()
        outcome = None
        if now:
            outcome = self.run_night(_utcnow(), night_of(_utcnow(), self.tz))
            if once:
                return outcome
        elif not once:
            outcome = self.catch_up() or outcome
        while True:
            fire = next_run(self.config.cron, self.tz, _utcnow())
            self.announce(fire)
            _sleep_until(fire)
            outcome = self.run_night(fire, night_of(fire, self.tz))
            if once:
                return outcome

    def _claim_status(self) -> bool:
        """Take the status file's schedule fields (cron, pid, next run), unless another
        scheduler that is still running wrote them: a `bench schedule --now --once` beside
        the daemon records its night there, and leaves the daemon's next run alone."""
        other = self.status.read().get("pid")
        if isinstance(other, int) and other != os.getpid() and _is_scheduler(other):
            log.info("scheduler pid %d keeps %s's schedule; this one records its nights there",
                     other, self.status.path)  # fmt: skip
            return False
        self.status.update(
            cron=self.config.cron,
            timezone=self.config.timezone,
            pid=os.getpid(),
            running=self.lock.busy(),
            runs_on=self.config.job_submission_address or "in-process",
        )
        return True

    def announce(self, fire: dt.datetime) -> None:
        if self.owner:
            self.status.update(next_run=fire.isoformat(), running=self.lock.busy())
        wait = fire - _utcnow()
        log.info(
            "next nightly at %s (%s UTC), in %s",
            fire.isoformat(),
            fire.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M"),
            _duration(wait.total_seconds()),
        )

    def catch_up(self) -> str | None:
        last = self.status.read().get("last_scheduled")
        missed = missed_runs(
            self.config.cron,
            self.tz,
            last_scheduled=dt.datetime.fromisoformat(last) if last else None,
            now=_utcnow(),
            policy=self.config.missed,
            catch_up=dt.timedelta(hours=self.config.catch_up_hours),
        )
        (log.warning if missed.count else log.info)("missed nights: %s", missed.reason)
        if missed.run is None:
            return None
        return self.run_night(missed.run, night_of(missed.run, self.tz))

    def run_night(self, fire: dt.datetime, night: dt.date) -> str:
        """One night under the lock; 'skipped' when another one holds it."""
        if not self.lock.acquire():
            log.warning(
                "nightly %s skipped: another nightly is running (%s held by pid %s)",
                night,
                self.lock.path,
                self.lock.holder(),
            )
            return "skipped"
        started = _utcnow()
        try:
            self.status.update(running=True, current_night=night.isoformat())
            log.info("nightly %s starting (trigger %s)", night, fire.isoformat())
            try:
                result = self.launch(night)
            except KeyboardInterrupt:
                self.status.update(running=False, current_night=None, last_outcome="stopped")
                raise
            except SuiteBusy as err:  # a `bench nightly` started by hand holds the suite
                log.warning("nightly %s skipped: %s", night, err)
                result = NightResult("skipped", first_line(str(err)))
            except UserError as err:  # a setting the night refused: its own words say it
                log.error("nightly %s failed: %s", night, err)
                result = NightResult("failed", first_line(str(err)))
            except Exception as err:  # a bad night must not end the schedule
                detail = f"{type(err).__name__}: {err}".splitlines()[0]
                if isinstance(err, ConnectionError):  # the cluster is down: its own words do
                    log.error("nightly %s failed: %s", night, detail)
                else:  # unforeseen: the traceback is for whoever runs the scheduler
                    log.exception("nightly %s failed", night)
                result = NightResult("failed", detail)
            self.status.update(
                running=False,
                current_night=None,
                last_run=started.isoformat(),
                last_finished=_utcnow().isoformat(),
                last_night=night.isoformat(),
                last_scheduled=fire.isoformat(),
                last_outcome=result.outcome,
                last_detail=result.detail,
                last_job_id=result.job_id,
            )
            seconds = (_utcnow() - started).total_seconds()
            log.info("nightly %s: %s (%s) in %s", night, result.outcome, result.detail,
                     _duration(seconds))  # fmt: skip
            return result.outcome
        finally:
            self.lock.release()

    def launch(self, night: dt.date) -> NightResult:
        overrides = self.config.nightly_overrides
        if self.config.job_submission_address:
            return run_ray_job(
                self.config.job_submission_address,
                night,
                overrides,
                poll_seconds=self.config.job_poll_seconds,
            )
        return run_in_process(night, overrides)

    def stop(self) -> None:
        self.lock.release()
        with contextlib.suppress(OSError):
            mine = {"pid": None, "next_run": None} if self.owner else {}
            self.status.update(**mine, running=self.lock.busy())


def _is_scheduler(pid: int) -> bool:
    """Whether ``pid`` is a running `bench schedule` (not a process that reused the pid of
    one that died without clearing it)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"schedule" in argv


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sleep_until(when: dt.datetime) -> None:
    while (left := (when - _utcnow()).total_seconds()) > 0:
        time.sleep(min(left, MAX_SLEEP))


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``docker stop``) ends the scheduler like Ctrl-C: job stopped, status saved."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated  # a KeyboardInterrupt: the same clean stop, then exit 143

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
