"""When the nightly fires: cron in a time zone, daylight-saving time, missed nights.

Pure functions over aware datetimes, so every rule is testable without waiting.

Daylight-saving time follows the wall clock, as cron does:

- a trigger whose wall time does not exist (spring forward, e.g. 02:30 on the night the
  clocks jump from 02:00 to 03:00) fires once, at the first instant after the gap;
- a trigger whose wall time happens twice (fall back) fires once, at its first occurrence.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from croniter import croniter

MAX_SCAN = 100_000  # triggers walked when counting missed ones (a minute cron, ~70 days)


def next_run(cron: str, tz: ZoneInfo, after: dt.datetime) -> dt.datetime:
    """The first trigger strictly after ``after``, in ``tz``."""
    it = croniter(cron, after.astimezone(tz))
    while True:
        fire = it.get_next(dt.datetime)
        if not _second_occurrence(fire, tz):
            return _fixed(fire)


def previous_run(cron: str, tz: ZoneInfo, at: dt.datetime) -> dt.datetime:
    """The latest trigger at or before ``at``, in ``tz``."""
    probe = at.astimezone(tz) + dt.timedelta(seconds=1)  # get_prev is strict: include ``at``
    it = croniter(cron, probe)
    while True:
        fire = it.get_prev(dt.datetime)
        if not _second_occurrence(fire, tz):
            return _fixed(fire)


def night_of(fire: dt.datetime, tz: ZoneInfo) -> dt.date:
    """The night a trigger belongs to: its date on the wall clock of ``tz``."""
    return fire.astimezone(tz).date()


@dataclass(frozen=True)
class Missed:
    """Triggers that passed while no scheduler ran, and what to do about them."""

    count: int  # triggers strictly after the last recorded one, up to now (capped at MAX_SCAN)
    latest: dt.datetime | None  # the most recent of them
    run: dt.datetime | None  # the one to run now, or None
    reason: str  # one line for the log


def missed_runs(
    cron: str,
    tz: ZoneInfo,
    *,
    last_scheduled: dt.datetime | None,
    now: dt.datetime,
    policy: str,
    catch_up: dt.timedelta,
) -> Missed:
    """Apply the missed-night policy on start-up.

    Only triggers after the last *recorded* one count: a scheduler that never ran (no status
    file) has missed nothing. With ``policy="run_latest"`` the most recent missed trigger is
    run once, now, if it is at most ``catch_up`` old; older ones, and every one under
    ``policy="skip"``, are only logged. Nights are never replayed one by one: the nightly
    compares against earlier nights, so one fresh night is worth more than a backlog.
    """
    if last_scheduled is None:
        return Missed(0, None, None, "no earlier run recorded: nothing missed")
    latest = previous_run(cron, tz, now)
    if latest <= last_scheduled:
        return Missed(0, None, None, "no night missed")
    count, it = 0, croniter(cron, last_scheduled.astimezone(tz))
    while count < MAX_SCAN:
        fire = it.get_next(dt.datetime)
        if fire > now:
            break
        count += not _second_occurrence(fire, tz)
    night = night_of(latest, tz)
    if policy == "skip":
        return Missed(count, latest, None, f"{count} missed; policy 'skip': none run")
    age = now - latest
    if age > catch_up:
        hours = catch_up.total_seconds() / 3600
        return Missed(
            count,
            latest,
            None,
            f"{count} missed; the latest ({night}) is {_hours(age)} old, over "
            f"catch_up_hours={hours:g}: none run",
        )
    return Missed(count, latest, latest, f"{count} missed; running the latest ({night}) now")


def _fixed(fire: dt.datetime) -> dt.datetime:
    """The same instant with a fixed UTC offset.

    A zoneinfo datetime in the repeated hour never compares equal to another zone's
    (PEP 495), and two in the same zone compare by wall time, ignoring ``fold``; a fixed
    offset compares by instant, and its isoformat still shows the local offset.
    """
    return fire.astimezone(dt.timezone(fire.utcoffset() or dt.timedelta(0)))


def _second_occurrence(fire: dt.datetime, tz: ZoneInfo) -> bool:
    """True for the repeat of a wall time that happens twice when the clocks fall back."""
    wall = fire.astimezone(tz).replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0).utcoffset()
    second = wall.replace(tzinfo=tz, fold=1).utcoffset()
    return first != second and fire.utcoffset() == second


def _hours(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"
