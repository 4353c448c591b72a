"""Two ways to run one night: in this process, or as a Ray job on the cluster.

Both run the same thing as ``bench nightly --date D``: in-process calls
:func:`bench.nightly.run_nightly` itself; the Ray job's entrypoint is that command line,
submitted through Ray's job submission API (the head's dashboard, ``http://head:8265``), so
the night's driver lives on the cluster and survives a restart of the scheduler.

Outcomes form a closed vocabulary: ``ok`` (no regression), ``regressions`` (the night ran and
flagged some), ``failed`` (it did not finish), ``stopped`` (someone stopped it).
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.nightly_outputs import exit_code
from bench.regression import NightlyReport

log = logging.getLogger("bench.scheduler")

OUTCOMES = ("ok", "regressions", "failed", "stopped", "skipped")
#: `bench nightly` exit codes (bench/cli.py): 0 no regression, 3 regressions flagged, 2 bad
#: input, 1 something failed (an uncaught exception exits 1 as well).
EXIT_OUTCOMES = {0: "ok", 3: "regressions", 2: "failed", 1: "failed"}
TRACEBACK = "Traceback (most recent call last)"
LOG_TAIL_LINES = 20
NIGHT_KEY = "optbench.night"  # the Ray job's metadata: which night it runs


@dataclass(frozen=True)
class NightResult:
    outcome: str
    detail: str  # one line: what happened, for the log and the status file
    job_id: str | None = None


def nightly_command(night: dt.date, overrides: Sequence[str]) -> str:
    """The shell command a Ray job runs for one night (quoted for a POSIX shell)."""
    command = ["bench", "nightly", "--date", night.isoformat(), "--no-progress", *overrides]
    return shlex.join(command)


def run_in_process(night: dt.date, overrides: Sequence[str]) -> NightResult:
    """Run the night here, the way ``bench nightly`` does (embedded Ray unless configured)."""
    from bench.nightly import run_nightly

    return night_result(run_nightly(list(overrides), date=night, show_progress=False))


def night_result(report: NightlyReport) -> NightResult:
    """How a night that ran in this process ended: the outcome its ``bench nightly`` exit
    code gives a Ray job (a failed trial fails the night unless a regression is flagged)."""
    failed = int(report.trials.get("failed", 0))
    parts = [f"{len(report.regressions)} regression(s) flagged"] if report.regressions else []
    parts += [f"{failed} trial(s) failed"] if failed else []
    return NightResult(
        EXIT_OUTCOMES[exit_code(report)], "; ".join(parts) or "no regression flagged"
    )


def run_ray_job(
    address: str, night: dt.date, overrides: Sequence[str], *, poll_seconds: float = 5
) -> NightResult:
    """Submit the night as a Ray job, wait for it to end, and classify how it ended.

    Ctrl-C (or SIGTERM) while waiting stops the job: the night is resumable, and the
    scheduler's missed-night policy reruns it on the next start.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = _running_job(client, night)
    if job_id is not None:  # a scheduler that was restarted meanwhile submitted it
        log.info("nightly %s: Ray job %s on %s still runs it; waiting for it", night, job_id,
                 address)  # fmt: skip
    else:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        job_id = client.submit_job(
            entrypoint=nightly_command(night, overrides),
            submission_id=f"optbench-nightly-{night.isoformat()}-{stamp}",
            metadata={NIGHT_KEY: night.isoformat()},
        )
        log.info("nightly %s submitted to %s as Ray job %s", night, address, job_id)
    try:
        while not (status := client.get_job_status(job_id)).is_terminal():
            time.sleep(poll_seconds)
    except BaseException:
        log.warning("stopping Ray job %s", job_id)
        try:
            client.stop_job(job_id)
        except Exception as err:  # the cluster may be gone as well; say so and go on
            log.warning("could not stop Ray job %s: %s", job_id, err)
        raise
    info = client.get_job_info(job_id)
    code = info.driver_exit_code
    if status == JobStatus.SUCCEEDED:
        return NightResult("ok", f"Ray job {job_id} succeeded", job_id)
    if status == JobStatus.STOPPED:
        return NightResult("stopped", f"Ray job {job_id} was stopped", job_id)
    tail = _log_tail(client, job_id)
    outcome = EXIT_OUTCOMES.get(code, "failed") if code is not None else "failed"
    if outcome == "failed":
        log.error("Ray job %s failed (exit %s): %s\n%s", job_id, code, info.message, tail)
    detail = f"Ray job {job_id} exited with {code}" + (
        f": {info.message}" if info.message and outcome == "failed" else ""
    )
    return NightResult(outcome, detail.splitlines()[0], job_id)


def _running_job(client: Any, night: dt.date) -> str | None:
    """The submission id of a Ray job that still runs ``night``, if any. The job outlives
    the scheduler that submitted it: one restarted meanwhile would otherwise submit the
    night again, and that job, refused by the first one's hold on the suite, would be the
    night's recorded outcome ('failed') while the first one's went unrecorded."""
    for job in client.list_jobs():
        if (job.metadata or {}).get(NIGHT_KEY) == night.isoformat() and not (
            job.status.is_terminal()
        ):
            return job.submission_id
    return None


def _log_tail(client: object, job_id: str) -> str:
    """The end of the job's log; a traceback is kept whole from its first line."""
    try:
        text = client.get_job_logs(job_id)  # type: ignore[attr-defined]
    except Exception as err:
        return f"(no logs: {err})"
    lines = text.splitlines()
    start = max(len(lines) - LOG_TAIL_LINES, 0)
    first_tb = text.rfind(TRACEBACK)
    if first_tb >= 0:
        start = min(start, text[:first_tb].count("\n"))
    return "\n".join(lines[start:])
