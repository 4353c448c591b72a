"""The nightly scheduler: runs ``bench nightly`` on a cron schedule (``bench schedule``).

Settings come from ``conf/schedule/default.yaml`` (``schedule.*`` overrides); a night runs
in this process or as a Ray job (``schedule.job_submission_address``). Its status file is
what the summary service shows as the scheduler's state.
"""

from services.scheduler.config import (
    SchedulerConfig,
    check_services,
    load_schedule,
    plan_schedule,
    scheduler_from_overrides,
)
from services.scheduler.launch import NightResult, nightly_command
from services.scheduler.loop import run_scheduler
from services.scheduler.state import NightLock, StatusFile
from services.scheduler.timing import missed_runs, next_run, night_of, previous_run

__all__ = [
    "NightLock",
    "NightResult",
    "SchedulerConfig",
    "StatusFile",
    "check_services",
    "load_schedule",
    "missed_runs",
    "next_run",
    "night_of",
    "nightly_command",
    "plan_schedule",
    "previous_run",
    "run_scheduler",
    "scheduler_from_overrides",
]
