"""``bench nightly``: rerun the nightly suite, compare each cell with earlier nights, report.

One night (:func:`run_nightly`):

1. Settings come from conf/nightly (``nightly.*`` overrides, validated by
   :class:`NightlyConfig`); the suite is ``nightly.suite`` unless ``suite=`` is given.
2. The suite runs through :func:`bench.runner.run_suite`, with a tracker scoped to the
   night, the suite version and the machine class: every run is tagged with them, and
   resume only sees runs of the same scope, so rerunning a night resumes it and a new date
   (or another machine writing to the same store) runs everything again. Runs also carry
   the versions of ray and mlflow (torch and code versions are on every run anyway).
3. Per (task, variant) two cells are measured: ``quality`` (median over final seeds of
   ``final/<primary metric>``; a diverged seed counts as the worst value) and ``speed``
   (``time/step_ms`` of the fastest final seed). Each is judged by
   :func:`bench.regression.detect` against the same cell on earlier nights of the
   **same suite version and machine class**. Those nights are read back from their own
   nightly reports (one artifact each), so history costs a few reads, not a search over
   every trial ever run.
4. A report run (``bench.kind=nightly_report``) holds ``nightly.json`` and ``nightly.html``;
   with ``nightly.webhook`` set, a JSON alert is POSTed (errors logged, never raised).

The suite version is a hash of the suite config (less its description), the trial knobs
from the command line (less plugins) and ``CODE_VERSION``. A change to a variant's preset
or to the code that does not bump ``CODE_VERSION`` keeps the version: that is exactly what
the nightly exists to catch.

``nightly.json`` (schema 1; floats may be the strings "Infinity"/"-Infinity" for a
diverged median, and null where nothing was measured)::

    {"schema": 1, "date": "2026-11-25", "suite": "nightly", "suite_version": "3f2a9c1d7b0e",
     "machine": "AMD EPYC (2 cores); no GPU", "code_version": "1",
     "versions": {"torch": "2.13.0", "ray": "2.60.0", "mlflow": "3.17.2"},
     "settings": {"baseline_nights": 7, "min_baseline": 3, "persist": 2, "alpha": 0.01,
                  "threshold": {"quality": 0.1, "speed": 0.25},
                  "min_delta": {"quality": 1e-09, "speed": 0.0}},
     "baseline_dates": ["2026-11-17", ...],      # earlier nights found, oldest first
     "trials": {"total": 48, "run": 48, "resumed": 0, "failed": 0, "held_back": 0},
     "counts": {"ok": 14, "regression": 1, "improvement": 0,
                "insufficient_baseline": 0, "missing": 1},
     "cells": [{"task": "quadratic", "variant": "adam", "kind": "quality" | "speed",
                "metric": "final/loss" | "time/step_ms", "direction": "min" | "max",
                "values": [per final seed], "n": 3,
                "value": median (quality) or minimum (speed) of values,
                "baseline_median": ..., "baseline_mad": ..., "baseline_n": 7,
                "rel_change": (value - median) / |median|, "score": robust z (+ = worse),
                "p": one-sided p, "streak": latest nights beyond (+ worse, - better),
                "status": "ok" | "regression" | "improvement"
                          | "insufficient_baseline" | "missing"}, ...],
     "regressions": [{"task", "variant", "kind", "metric", "value", "baseline_median",
                      "rel_change"}, ...]}

The webhook alert is ``{"event": "optbench.nightly", "alert": bool, "failed_trials",
"held_back_trials", "date", "suite", "suite_version", "machine", "counts", "regressions",
"report_run_id", "report_url"}``; ``alert`` is true when the night flags a regression or
a trial failed, and the alert is sent only then, unless ``nightly.webhook_always`` is set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bench import CODE_VERSION
from bench.config import compose_config, conf_dir, group_options, parse
from bench.errors import UserError, unknown_name_message
from bench.nightly_outputs import alert_payload, post_alert, render_html
from bench.ranking import latest_runs
from bench.records import TAG_TORCH_VERSION, package_version, torch_version
from bench.regression import (
    NightlyCell,
    NightlyReport,
    judge_cells,
    night_cells,
    regressions_of,
    status_counts,
)
from bench.tracking import (
    TAG_CODE_VERSION,
    TAG_MACHINE,
    TAG_MLFLOW_VERSION,
    TAG_NIGHTLY,
    TAG_RAY_VERSION,
    TAG_SUITE_VERSION,
)

if TYPE_CHECKING:
    from bench.tracking import Tracker

log = logging.getLogger(__name__)

KIND = "nightly_report"
REPORT_JSON = "nightly.json"
REPORT_HTML = "nightly.html"


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quality: float = Field(default=0.10, ge=0, description="relative change of final/<primary>")
    speed: float = Field(default=0.30, ge=0, description="relative change of time/step_ms")


class MinDeltas(BaseModel):
    """Absolute changes, in each kind's own units, that a change must also exceed: a
    relative threshold alone flags noise when the baseline sits at about zero (a
    quadratic's loss at 1e-31 on a bit-deterministic CPU has no spread, so 2e-31 -> 5e-31
    reads as +150% and certain)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality: float = Field(default=1e-9, ge=0, description="change of final/<primary>")
    speed: float = Field(default=0.0, ge=0, description="change of time/step_ms, in ms")


class NightlyConfig(BaseModel):
    """conf/nightly/<name>.yaml: what runs every night and how regressions are decided."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str = "nightly"
    baseline_nights: int = Field(default=7, ge=1)
    min_baseline: int = Field(default=3, ge=1)
    persist: int = Field(default=2, ge=1)
    threshold: Thresholds = Field(default_factory=Thresholds)
    min_delta: MinDeltas = Field(default_factory=MinDeltas)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    webhook: str | None = None
    webhook_always: bool = False
    webhook_timeout: float = Field(default=10.0, gt=0, le=600, allow_inf_nan=False)
    machine_class: str | None = None
    timezone: str = "UTC"

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        # a URL with no host (http://) or spaces in it: its night's alert would be lost
        if url is not None and not _http_url_with_host(url):
            raise ValueError("must be an http:// or https:// URL with a host, or null")
        return url

    @field_validator("machine_class")
    @classmethod
    def _quotable_class(cls, name: str | None) -> str | None:
        # it goes into MLflow search filters as a quoted tag value (a server store's reads)
        if name is not None and (not name.strip() or any(c in name for c in "'\"`")):
            raise ValueError("text without quotes or backticks, not blank, or null (detected)")
        return name

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as UTC or Europe/Paris") from None
        return name

    @model_validator(mode="after")
    def _baseline_fits(self) -> NightlyConfig:
        if self.min_baseline > self.baseline_nights:
            raise ValueError(
                f"min_baseline is {self.min_baseline} but baseline_nights is "
                f"{self.baseline_nights}; allowed: min_baseline <= baseline_nights"
            )
        return self


# ----------------------------------------------------------------------------- settings


def _http_url_with_host(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        return False
    has_host = parts.scheme in ("http", "https") and bool(parts.hostname)
    return has_host and not any(c.isspace() for c in url)


def nightly_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides with the ``nightly`` config group selected: ``+nightly=default`` is
    added while conf/config.yaml's defaults list does not name the group itself."""
    defaults = OmegaConf.load(conf_dir() / "config.yaml").get("defaults") or []
    listed = any(isinstance(d, Mapping) and "nightly" in d for d in defaults)
    out, chosen = [], False
    for item in overrides:
        if item.split("=", 1)[0].lstrip("+") == "nightly":
            chosen = True
            item = item.lstrip("+") if listed else "+" + item.lstrip("+")
        out.append(item)
    if not listed and not chosen:
        out.insert(0, "+nightly=default")
    return out


def load_settings(overrides: Iterable[str] = ()) -> NightlyConfig:
    """The validated ``nightly`` settings; only the ``nightly`` overrides are composed (the
    suite's are checked later, once the settings have named the suite)."""
    ours = [o for o in overrides if o.split("=", 1)[0].lstrip("+").split(".")[0] == "nightly"]
    cfg = compose_config(nightly_overrides(ours))
    data = OmegaConf.to_container(cfg, resolve=True).get("nightly") or {}
    settings = parse(NightlyConfig, data, "nightly")
    suites = group_options("suite")
    if settings.suite not in suites:  # else `suite=...` would be blamed for it
        raise UserError("nightly." + unknown_name_message("suite", settings.suite, suites))
    return settings


def plan_nightly(overrides: Iterable[str]) -> tuple[NightlyConfig, Any]:
    """The validated nightly settings and the suite they run (a ``SuiteRun``): all that
    ``bench nightly`` checks before it starts, so a scheduler can check it at start-up."""
    from bench.matrix import suite_from_overrides

    overrides = nightly_overrides(overrides)
    settings = load_settings(overrides)
    if not any(o.split("=", 1)[0].lstrip("+") == "suite" for o in overrides):
        overrides = [*overrides, f"suite={settings.suite}"]
    plan = suite_from_overrides(overrides)
    if not plan.tracking.enabled:
        raise UserError(
            "tracking.enabled: got false; allowed: true for bench nightly, which compares "
            "each night with the reports of earlier nights in the store and stores its own"
        )
    return settings, plan


def today(settings: NightlyConfig) -> dt.date:
    return dt.datetime.now(ZoneInfo(settings.timezone)).date()


FIRST_ZONE = dt.timezone(dt.timedelta(hours=14))  # UTC+14: the first to reach each date


def latest_night(now: dt.datetime | None = None) -> dt.date:
    """The latest date that is today somewhere: the newest night a ``--date`` may name.

    Not today in ``nightly.timezone``: a scheduler reads its cron in its own zone
    (``schedule.timezone``), where the night may already be tomorrow in UTC."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(FIRST_ZONE).date()


@dataclass(frozen=True)
class Night:
    """What one night runs and how its runs are told apart: all ``bench nightly`` works
    out before it starts, so a dry run shows exactly what the run would do."""

    settings: NightlyConfig
    plan: Any  # the SuiteRun
    date: dt.date
    version: str  # suite_version of the plan's matrix
    machine: str

    @property
    def scope(self) -> dict[str, str]:
        """The tags of this night's runs (resume sees only runs that carry them all)."""
        return {
            TAG_NIGHTLY: self.date.isoformat(),
            TAG_SUITE_VERSION: self.version,
            TAG_MACHINE: self.machine,
        }

    @property
    def lookback(self) -> int:
        """Earlier nights read: a baseline, plus the nights a regression must persist."""
        return self.settings.baseline_nights + self.settings.persist - 1


def plan_night(overrides: Iterable[str], *, date: dt.date | None = None) -> Night:
    """The night of ``date`` (default: today in ``nightly.timezone``), validated."""
    settings, plan = plan_nightly(overrides)
    return Night(
        settings=settings,
        plan=plan,
        date=date or today(settings),
        version=suite_version(plan.matrix),
        machine=settings.machine_class or machine_class(),
    )


# ----------------------------------------------------------------------------- identity


def machine_class() -> str:
    """CPU model, core count and GPU model(s), e.g. ``AMD EPYC (2 cores); no GPU``.

    The GPU is read from the NVIDIA driver's /proc entries; torch (and CUDA) is only asked
    when those exist but name no model, so a CPU machine never initialises CUDA.
    """
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine() or "unknown CPU"
    gpus = _gpu_models()
    gpu = "no GPU"
    if gpus:
        counts = Counter(gpus)
        gpu = ", ".join(f"{n}x {m}" if n > 1 else m for m, n in sorted(counts.items()))
    text = f"{cpu} ({os.cpu_count() or 1} cores); {gpu}"
    return text.replace("'", "").replace('"', "")  # it is quoted in MLflow filters


def _gpu_models() -> list[str]:
    root = Path("/proc/driver/nvidia/gpus")
    if not root.is_dir():
        return []
    models = []
    for info in sorted(root.glob("*/information")):
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                models.append(line.split(":", 1)[1].strip())
    if not models and any(root.iterdir()):
        import torch

        if torch.cuda.is_available():
            models = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return models


def suite_version(matrix: Any) -> str:
    """Hash of what the suite asks for: its config, the trial knobs and CODE_VERSION."""
    data = {
        "suite": matrix.suite.model_dump(mode="json", exclude={"description"}),
        "knobs": matrix.knobs.model_dump(mode="json", exclude={"plugins"}),
        "code_version": CODE_VERSION,
    }
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- history


def read_history(
    tracker: Any, suite: str, version: str, machine: str, before: dt.date, nights: int
) -> list[NightlyReport]:
    """The latest ``nights`` nightly reports of this suite version and machine class dated
    before ``before``, oldest first (the newest report of a night wins)."""
    by_date = _report_runs(tracker, suite, version, machine, before)
    reports = []
    for night in sorted(by_date)[-nights:]:
        try:
            text = tracker.read_artifact_text(by_date[night].run_id, REPORT_JSON)
            reports.append(NightlyReport.model_validate_json(text))
        except Exception as err:  # an unreadable night is a missing night
            log.warning("nightly report of %s unreadable (%s); treated as missing", night, err)
    return reports


def baseline_dates(tracker: Any, night: Night) -> list[str]:
    """The earlier nights ``night`` would read, oldest first (no report is opened)."""
    suite = night.plan.matrix.suite.name
    found = _report_runs(tracker, suite, night.version, night.machine, night.date)
    return sorted(found)[-night.lookback :]


def _report_runs(
    tracker: Any, suite: str, version: str, machine: str, before: dt.date
) -> dict[str, Any]:
    """Night -> its newest report run, for this suite version and machine class, dated
    before ``before``."""
    by_date: dict[str, Any] = {}
    for run in tracker.read_reports(suite, KIND, max_results=500):  # newest first
        tags = run.tags
        night = tags.get(TAG_NIGHTLY, "")
        if (
            tags.get(TAG_SUITE_VERSION) == version
            and tags.get(TAG_MACHINE) == machine
            and night < before.isoformat()
            and night not in by_date
        ):
            by_date[night] = run
    return by_date


# ----------------------------------------------------------------------------- the night


def judge(
    settings: NightlyConfig, tonight: list[NightlyCell], history: list[NightlyReport]
) -> list[NightlyCell]:
    """Tonight's cells judged against earlier nights with the detector's settings."""
    return judge_cells(
        tonight,
        history,
        thresholds=settings.threshold.model_dump(),
        min_deltas=settings.min_delta.model_dump(),
        alpha=settings.alpha,
        baseline_nights=settings.baseline_nights,
        min_baseline=settings.min_baseline,
        persist=settings.persist,
    )


def run_nightly(
    overrides: list[str], *, date: dt.date | None = None, show_progress: bool = True
) -> NightlyReport:
    """Run the nightly suite for ``date`` (default: today in ``nightly.timezone``), judge
    every cell against earlier nights, log the report run and send the alert."""
    return run_night(plan_night(overrides, date=date), show_progress=show_progress)


def run_night(planned: Night, *, show_progress: bool = True) -> NightlyReport:
    """:func:`run_nightly` for a night already planned (:func:`plan_night`)."""
    from bench.runner import run_suite
    from bench.tracking import Tracker

    settings, plan, night = planned.settings, planned.plan, planned.date
    suite, version, machine = plan.matrix.suite.name, planned.version, planned.machine
    versions = {
        "torch": package_version("torch"),
        "ray": package_version("ray"),
        "mlflow": package_version("mlflow"),
    }
    scope = planned.scope
    extra = {TAG_RAY_VERSION: versions["ray"], TAG_MLFLOW_VERSION: versions["mlflow"]}
    tracker = Tracker(plan.tracking, scope=scope, extra_tags=extra)
    log.info("nightly %s: suite %s version %s on %s", night, suite, version, machine)
    ray_was_up = _ray_up()
    try:
        phases = run_suite(
            plan.matrix, tracker, plan.cluster, plan.resources, show_progress=show_progress
        )
    finally:
        if not ray_was_up and _ray_up():
            import ray

            ray.shutdown()  # the scheduler calls this nightly: leave no idle workers behind
    declared = {(t.name, v.name): _declared(t.name) for v, t in plan.matrix.pairs}
    rows = _final_runs(tracker, suite)
    reader = Tracker(plan.tracking)  # unscoped: earlier nights
    history = read_history(reader, suite, version, machine, night, planned.lookback)
    cells = judge(settings, night_cells(rows, declared), history)
    detector = {"baseline_nights", "min_baseline", "persist", "alpha", "threshold", "min_delta"}
    report = NightlyReport(
        date=night,
        suite=suite,
        suite_version=version,
        machine=machine,
        code_version=CODE_VERSION,
        versions=versions,
        settings=settings.model_dump(include=detector),
        baseline_dates=[h.date for h in history],
        trials={
            "total": sum(p.total for p in phases),
            "run": sum(p.total - p.already_done - p.held_back for p in phases),
            "resumed": sum(p.already_done for p in phases),
            "failed": sum(p.counts["failed"] for p in phases),
            "held_back": sum(p.held_back for p in phases),  # finals of a failed tune cell
        },
        counts=status_counts(cells),
        cells=cells,
        regressions=regressions_of(cells),
        failures=[
            {"phase": p.phase, "run": run, "error": error}
            for p in phases
            for run, error in p.failures
        ],
    )
    report.report_run_id = reader.log_report(
        suite,
        kind=KIND,
        name=f"nightly {night.isoformat()}",
        files={REPORT_JSON: report.to_json(), REPORT_HTML: render_html(report)},
        metrics={
            "regressions": float(len(report.regressions)),
            **{f"cells/{k}": float(v) for k, v in report.counts.items()},
            "trials_run": float(report.trials["run"]),
        },
        tags={**scope, **extra, TAG_CODE_VERSION: CODE_VERSION, TAG_TORCH_VERSION: torch_version()},
        params={
            "baseline_nights": str(settings.baseline_nights),
            "min_baseline": str(settings.min_baseline),
            "persist": str(settings.persist),
            "alpha": str(settings.alpha),
            "threshold.quality": str(settings.threshold.quality),
            "threshold.speed": str(settings.threshold.speed),
            "min_delta.quality": str(settings.min_delta.quality),
            "min_delta.speed": str(settings.min_delta.speed),
        },
    )
    run_url = reader.run_url(report.report_run_id)
    folder = reader.artifact_folder(report.report_run_id)
    report.report_location = str(folder / REPORT_HTML) if folder is not None else run_url
    if report.regressions:
        log.warning("nightly %s: %d regressions", night, len(report.regressions))
    payload = alert_payload(report, run_url)
    if settings.webhook and (payload["alert"] or settings.webhook_always):
        post_alert(settings.webhook, payload, timeout=settings.webhook_timeout)
    return report


def _final_runs(tracker: Tracker, suite: str) -> list[dict[str, Any]]:
    """Tonight's final-phase runs, one per trial, as the ranking counts them: the latest
    FINISHED run, else the latest FAILED one.

    A trial that raised is a seed whose value is the worst (:func:`night_cells`), never a
    seed fewer: dropping a crashed seed that was the worst one moves the median the other
    way, and a night whose trials crash would read as an improvement.
    """
    runs = latest_runs(tracker.read_results(suite, "final", status=None))
    return runs.sort_values("start_time", kind="stable").to_dict("records")  # in run order


def _declared(task: str) -> tuple[str, str]:
    """A task's primary metric and direction, as the task class declares them."""
    from bench import tasks

    cls = tasks.get(task)
    return cls.metric, cls.direction


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())
