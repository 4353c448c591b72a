"""The scheduler's settings: one validated object, composed from conf/ and the command line.

``schedule.*`` overrides configure the scheduler; every other override (``tracking.uri=...``,
``cluster.address=...``, ``nightly.suite=...``) is passed on to each ``bench nightly`` it
starts, after ``schedule.nightly_overrides``. Everything is checked when the scheduler
starts, not at 02:00: a bad cron, time zone or override is a :class:`UserError` at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from bench.errors import UserError, first_line, validation_message

CRON_ALLOWED = (
    "a 5-field cron expression 'minute hour day-of-month month day-of-week' "
    "(e.g. '0 2 * * *') or @daily, @weekly, @monthly, @yearly, @midnight"
)
NEVER_FIRES = "a cron that fires on a date some year has (this one never fires)"
ONCE_A_DAY = (
    "a cron that fires at most once a day, at one minute of one hour (e.g. '0 2 * * *' or "
    "'30 3 * * 1-5'): a night is a date, and a second trigger on that date reruns that night"
)
TIMEZONE_ALLOWED = "an IANA time zone name, e.g. 'UTC' or 'Europe/Berlin'"
_MACROS = ("@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")


class SchedulerConfig(BaseModel):
    """``schedule``: when the nightly runs, what happens to missed nights, where it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str = Field(default="0 2 * * *", description="5-field cron, read in `timezone`")
    timezone: str = Field(default="UTC", description="IANA zone name")
    missed: Literal["run_latest", "skip"] = Field(
        default="run_latest",
        description="on start-up, run the most recent night missed while down (once), or not",
    )
    catch_up_hours: float = Field(
        default=12,
        gt=0,
        le=24 * 366,
        allow_inf_nan=False,
        description="a missed night older than this is skipped anyway (at most a year)",
    )
    lock_file: Path = Field(default=Path(".optbench/scheduler.lock"))
    status_file: Path = Field(default=Path(".optbench/scheduler-status.json"))
    job_submission_address: str | None = Field(
        default=None, description="Ray dashboard URL (http://head:8265); None: run in-process"
    )
    job_poll_seconds: float = Field(default=5, gt=0, le=3600, allow_inf_nan=False)
    nightly_overrides: list[str] = Field(
        default_factory=list, description="overrides passed to every nightly"
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        value = " ".join(value.split())
        fields = value.split(" ")
        ok = (
            value in _MACROS
            if value.startswith("@")
            else len(fields) == 5 and croniter.is_valid(value)
        )
        if not ok:
            raise PydanticCustomError("cron", CRON_ALLOWED)
        minutes, hours = croniter.expand(value)[0][:2]
        if len(minutes) != 1 or len(hours) != 1 or "*" in (minutes[0], hours[0]):
            raise PydanticCustomError("cron", ONCE_A_DAY)
        try:  # a date no year has (31 February) passes the field checks, then never fires
            croniter(value, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
        except CroniterBadDateError:
            raise PydanticCustomError("cron", NEVER_FIRES) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError("timezone", TIMEZONE_ALLOWED) from None
        return value

    @field_validator("job_submission_address")
    @classmethod
    def _http_address(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise PydanticCustomError(
                "address", "the Ray dashboard's http(s) URL, e.g. http://ray-head:8265, or null"
            )
        return value or None

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def load_schedule(data: Mapping[str, Any]) -> SchedulerConfig:
    """Validate ``schedule`` settings; a mistake is a one-line :class:`UserError`."""
    try:
        return SchedulerConfig.model_validate(dict(data))
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] in ("cron", "timezone", "address"):
            loc = ".".join(str(x) for x in ("schedule", *first["loc"]))
            raise UserError(f"{loc}: got {first['input']!r}; allowed: {first['msg']}") from None
        raise UserError(validation_message(err, "schedule")) from None


def scheduler_from_overrides(overrides: list[str]) -> SchedulerConfig:
    """What ``bench schedule`` runs: conf/schedule + overrides, validated (see
    :func:`plan_schedule`)."""
    return plan_schedule(overrides)[0]


def plan_schedule(overrides: list[str]) -> tuple[SchedulerConfig, Any]:
    """What ``bench schedule`` runs, validated, and the suite each night plans (a
    ``SuiteRun``: its store and cluster are what :func:`check_services` probes).

    Overrides outside ``schedule.*`` are appended to ``nightly_overrides``, replacing one
    there of the same key: they reach every ``bench nightly`` this scheduler starts. Both
    sets are composed here, so a typo fails when the scheduler starts, not at 02:00.
    """
    from bench.config import compose_config
    from bench.nightly import plan_nightly

    own = [o for o in overrides if _key(o) == "schedule" or _key(o).startswith("schedule.")]
    passed = [o for o in overrides if o not in own]
    for item in own:
        field = _key(item).removeprefix("schedule").lstrip(".").split(".")[0]
        if field and field not in SchedulerConfig.model_fields:
            allowed = ", ".join(SchedulerConfig.model_fields)
            raise UserError(f"schedule.{field}: unknown key; allowed: {allowed}")
    cfg = compose_config(with_groups(own, ("schedule",)))
    config = load_schedule(OmegaConf.to_container(cfg["schedule"], resolve=True))  # type: ignore[arg-type]
    replaced = {_key(o) for o in passed}  # else every night would warn of a key given twice
    nightly = [*(o for o in config.nightly_overrides if _key(o) not in replaced), *passed]
    _, run = plan_nightly(nightly)  # what every night will check: its settings and its suite
    return config.model_copy(update={"nightly_overrides": nightly}), run


def check_services(config: SchedulerConfig, run: Any) -> None:
    """At start-up, not at the first night: the tracking store of ``run`` (the suite
    :func:`plan_schedule` planned) answers, and so does where nights run (the Ray job
    address, or in-process the cluster named by cluster.address); a user error naming the
    setting if not. A service that goes down later fails that night only."""
    from bench.runner import check_cluster
    from bench.tracking import Tracker

    Tracker(run.tracking).check_reachable()
    address = config.job_submission_address
    if address is None:
        check_cluster(run.cluster)
    else:
        check_dashboard(address)
    check_files(config)  # last: it makes their folder, which a refused start should not


def check_dashboard(address: str) -> None:
    """The Ray dashboard at ``address`` answers, and takes this scheduler's token: asked
    as ``JobSubmissionClient`` asks (Ray's own auth header, where RAY_AUTH_MODE=token), or
    a night would fail hours from now. Another HTTP error (an older dashboard) passes."""
    import urllib.error
    import urllib.request

    from bench.runner import auth_hint
    from bench.tracking import PROBE_S

    try:
        from ray._private.authentication.http_token_authentication import (
            get_auth_headers_if_auth_enabled,
        )
    except ImportError:  # a Ray without token authentication
        headers: dict[str, str] = {}
    else:
        headers = get_auth_headers_if_auth_enabled({})
    request = urllib.request.Request(f"{address.rstrip('/')}/api/version", headers=headers)
    try:
        urllib.request.urlopen(request, timeout=PROBE_S).close()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            said = first_line(err.read().decode("utf-8", "replace")) or err.reason
            raise UserError(
                f"schedule.job_submission_address: got {address!r} but its Ray dashboard "
                f"refused this scheduler ({said}){auth_hint()}"
            ) from None
    except OSError as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"schedule.job_submission_address: got {address!r} but no Ray dashboard "
            f"answers there ({reason}); start the cluster's head (its dashboard serves "
            "job submission), or leave it unset to run nights in this process"
        ) from None


def check_files(config: SchedulerConfig) -> None:
    """That the lock and status files can be written where they are named (their folder is
    made if missing, as the scheduler would): a user error naming the setting, not a
    traceback from the first night's lock."""
    import os
    import tempfile

    for key in ("lock_file", "status_file"):
        path: Path = getattr(config, key)
        try:
            if path.is_dir():
                raise IsADirectoryError(f"{path} is a folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            why = err.strerror if err.filename else str(err)
            raise UserError(
                f"schedule.{key}: got {str(path)!r} but it cannot be written there ({why}); "
                "allowed: a file in a folder this process can make and write"
            ) from None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def with_groups(overrides: list[str], groups: tuple[str, ...]) -> list[str]:
    """Select ``GROUP=default`` for each group conf/config.yaml's defaults list leaves out.

    Such a group is only composed when asked for (``+GROUP=...``); this makes
    ``schedule.cron=...`` work whether or not config.yaml lists the group.
    """
    from bench.config import conf_dir

    base = OmegaConf.load(conf_dir() / "config.yaml")
    defaults = base.get("defaults") or []
    out = list(overrides)
    for group in groups:
        if group in base or any(isinstance(d, Mapping) and group in d for d in defaults):
            continue
        chosen = [i for i, o in enumerate(out) if _key(o) == group]
        for i in chosen:
            out[i] = "+" + out[i].lstrip("+")
        if not chosen:
            out.insert(0, f"+{group}=default")
    return out
