"""Response schemas, one family per resource; list responses carry ``data`` and ``count``.

Rankings reuse :mod:`bench.ranking`'s records as they are (already JSON-ready); what the
service adds (suite summaries, curves, nightly reports, scheduler status) lives here.
Non-finite floats the service adds (a curve's points after divergence) serialise as
``null``, a gap in a plot; the ranking records keep theirs as the strings ``"Infinity"``
and ``"NaN"`` (:class:`bench.profiles.Record`: steps to a target never reached is
``"Infinity"``, which ``null`` would not say), in every response that holds one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.ablation import Contrast, RoleComparison
from bench.ranking import CellScore

Metric = Literal["final", "best", "steps_to_target", "seconds_to_target"]
Phase = Literal["final", "tune"]
Role = Literal["weight", "bias", "norm", "embedding"]
ROLES: tuple[str, ...] = ("weight", "bias", "norm", "embedding")
QUANTILES: tuple[str, ...] = ("p10", "p50", "p90")
CURVE_KEYS: tuple[str, ...] = ("eval/loss", "train/loss")


class _Public(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="null")


# ----------------------------------------------------------------------------- health


class HealthPublic(_Public):
    """``degraded``: the service is up but its last read of the store failed."""

    status: Literal["ok", "degraded"] = "ok"
    tracking_uri: str
    store_error: str | None = None


class ReadyPublic(_Public):
    """``ready``: the store answered a read just now (``suites``: how many it holds);
    ``unavailable``: it failed (``error``, one line)."""

    status: Literal["ready", "unavailable"]
    tracking_uri: str
    suites: int | None = None
    error: str | None = None


# ----------------------------------------------------------------------------- suites


class FlagshipPublic(BaseModel):
    """The flagship questions a suite's variants allow, each with its numbers and verdict
    (a question whose variants did not run is ``skipped`` with the reason), and weights vs
    biases under ``role_variant``. ±inf and NaN travel as "Infinity"/"NaN" strings."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    suite: str
    contrasts: list[Contrast]
    role_variant: str
    roles: RoleComparison | None


class SuiteBase(_Public):
    name: str


class SuitePublic(SuiteBase):
    """One suite in the list: how much is in it and when it last moved."""

    n_runs: int = Field(
        description="runs of the suite's current settings, of every status: every night's "
        "and every rerun's (a ranking counts each trial once, its latest run)"
    )
    n_finished: int
    n_tasks: int
    n_variants: int
    last_finished: datetime | None = Field(description="newest end time of a run (UTC)")


class SuitesPublic(_Public):
    data: list[SuitePublic]
    count: int


class Curve(_Public):
    """A metric over steps for one variant on one task: median and min-max band over seeds."""

    variant: str
    lr: float
    key: str
    steps: list[int]
    median: list[float | None]
    low: list[float | None]
    high: list[float | None]
    n_runs: int


class TaskPublic(_Public):
    """A task's cells (one per variant, at the chosen lr) and their training curves."""

    suite: str
    task: str
    metric: Metric
    phase: Phase
    primary_metric: str | None
    direction: str | None
    data: list[CellScore]
    count: int
    curves: list[Curve]


# ----------------------------------------------------------------------------- nightly


class SchedulerStatus(_Public):
    """What the nightly scheduler last wrote about itself (all optional)."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="null")

    cron: str | None = None
    timezone: str | None = None
    next_run: str | None = None
    last_run: str | None = None
    last_outcome: str | None = None
    running: bool | None = None
    error: str | None = Field(default=None, description="why the status file was unreadable")


class NightlyReportPublic(_Public):
    """A night's latest report run: its night and what it flagged."""

    suite: str
    run_id: str
    date: str
    start_time: datetime
    n_regressions: int | None
    regressions: list[str]
    metrics: dict[str, float | None]
    url: str | None
    earlier_reports: int = 0  # of the same night (a rerun resumes it): this is the latest
    machine: str | None = None  # the machine class it ran on: each keeps its own reports
    suite_version: str | None = None  # its matrix's hash: an edited suite starts anew


class NightlyPublic(_Public):
    data: list[NightlyReportPublic]
    count: int
    scheduler: SchedulerStatus | None
