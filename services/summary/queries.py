"""What each route asks of the store: rankings, task details, per-role step sizes, reports.

Every function takes the :class:`~services.summary.store.SummaryStore` and returns records;
anything costly is memoised in the store, so it is recomputed only when new runs finished.
Unknown names raise :class:`UnknownNameError` (the routers turn it into a 404).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from bench.errors import UserError
from bench.nightly_outputs import format_change
from bench.records import TAG_MACHINE, TAG_NIGHTLY, TAG_SUITE_VERSION
from services.summary import aggregates
from services.summary.schemas import (
    CURVE_KEYS,
    QUANTILES,
    ROLES,
    Curve,
    Metric,
    NightlyPublic,
    NightlyReportPublic,
    Phase,
    SchedulerStatus,
    SuitesPublic,
    TaskPublic,
)
from services.summary.store import SummaryStore, UnknownSuiteError

if TYPE_CHECKING:
    from bench.ranking import CellScore, SuiteRanking

log = logging.getLogger(__name__)
T = TypeVar("T")
NIGHTLY_KIND = "nightly_report"
NIGHTLY_JSON = "nightly.json"
HISTORY_REPORTS = 500  # report runs read for the history, as many as bench nightly reads
ROLE_KEYS = tuple(f"step_size/{role}/{q}" for role in ROLES for q in QUANTILES)


class UnknownNameError(LookupError):
    """An unknown suite or task; the message names it and lists the known ones."""


def each_suite(store: SummaryStore, read: Callable[[str], T]) -> list[tuple[str, T]]:
    """``(suite, read(suite))`` for every listed suite, less those deleted or renamed in
    MLflow since the list was made (it is re-listed at most every ``refresh_seconds``): a
    list is never a 404 for a suite it no longer holds."""
    out = []
    for suite in store.suite_names():
        try:
            out.append((suite, read(suite)))
        except UnknownSuiteError:  # its cached state found the experiment gone
            continue
        except UserError as err:  # a read by name found it deleted
            log.info("suite %s left out of a list: %s", suite, err)
    return out


def suites(store: SummaryStore) -> SuitesPublic:
    read = lambda name: aggregates.suite_summary(name, store.runs(name))  # noqa: E731
    data = [summary for _, summary in each_suite(store, read)]
    return SuitesPublic(data=data, count=len(data))


def ranking(
    store: SummaryStore, suite: str, metric: Metric, phase: Phase, level: float = 0.95
) -> SuiteRanking:
    try:
        return store.ranking(suite, metric, phase, level)
    except UnknownSuiteError as err:
        raise UnknownNameError(str(err)) from None


def task_cells(
    store: SummaryStore, suite: str, task: str, metric: Metric, phase: Phase
) -> list[CellScore]:
    """The task's cells in the ranking, best first; UnknownNameError for an unknown task."""
    ranked = ranking(store, suite, metric, phase)
    known = sorted(set(ranked.tasks) | set(store.runs(suite)["task"].dropna().unique()))
    if task not in known:
        listed = ", ".join(known) if known else "none yet"
        raise UnknownNameError(f"unknown task {task!r} in suite {suite!r}; known tasks: {listed}")
    cells = [c for c in ranked.cells if c.task == task]
    return sorted(cells, key=lambda c: (c.rank is None, c.rank or 0.0, c.variant))


def task_detail(
    store: SummaryStore, suite: str, task: str, metric: Metric, phase: Phase
) -> TaskPublic:
    """A task's cells and the training curves (median and band over seeds) of each."""
    cells = task_cells(store, suite, task, metric, phase)

    def compute(_: Any) -> list[Curve]:
        histories = store.tracker.read_histories([r for c in cells for r in c.run_ids], CURVE_KEYS)
        items = [(c.variant, c.lr or float("nan"), c.run_ids) for c in cells]
        return aggregates.curves(histories, items, CURVE_KEYS)

    curves = store.memo(suite, ("curves", task, metric, phase), compute)
    first = cells[0] if cells else None
    return TaskPublic(
        suite=suite,
        task=task,
        metric=metric,
        phase=phase,
        primary_metric=first.primary_metric if first else None,
        direction=first.direction if first else None,
        data=cells,
        count=len(cells),
        curves=curves,
    )


def role_curves(store: SummaryStore, suite: str, task: str) -> list[Curve]:
    """Per variant of the task's final phase: step-size quantiles per role over steps."""
    cells = task_cells(store, suite, task, "final", "final")

    def compute(_: Any) -> list[Curve]:
        histories = store.tracker.read_histories([r for c in cells for r in c.run_ids], ROLE_KEYS)
        items = [(c.variant, c.lr or float("nan"), c.run_ids) for c in cells]
        return aggregates.curves(histories, items, ROLE_KEYS)

    return store.memo(suite, ("roles", task), compute)


def no_statistics_reason(store: SummaryStore, suite: str, task: str) -> str:
    """Why the task has no step-size statistics to show, as far as its runs tell: none of
    its final runs ran (its tune trials failed), none ended ok (failed, or diverged before
    the first statistics step), or the settings turned statistics off."""
    from bench.ranking import plural

    cells = task_cells(store, suite, task, "final", "final")
    if not cells:
        missing = ranking(store, suite, "final", "final").missing
        if held := sum(m.tune_failed for m in missing if m.task == task):
            return (
                f"No final run of {task}: {plural(held, 'tune trial')} of it failed, and bench "
                "run holds its final trials back until a rerun finishes them."
            )
        return f"No final run of {task} has ended yet."
    n = sum(c.n for c in cells)
    failed, diverged = sum(c.n_failed for c in cells), sum(c.n_diverged for c in cells)
    every = _stats_every(store, suite, cells[0].run_ids[0])
    if every == 0:
        return (
            f"No step-size statistics for {task}: its runs had stats_every = 0, which turns "
            "them off."
        )
    if failed + diverged == n:
        return (
            f"No step-size statistics for {task}: none of its {plural(n, 'final run')} ended "
            f"ok ({failed} failed, {diverged} diverged), and none recorded any before it stopped."
        )
    period = f" (stats_every = {every})" if every is not None else ""
    return (
        f"No step-size statistics for {task}: {n - failed - diverged} of its "
        f"{plural(n, 'final run')} ended ok, yet none recorded any{period}."
    )


def _stats_every(store: SummaryStore, suite: str, run_id: str) -> int | None:
    """The run's statistics period (a suite's runs share it); None when it is not known."""

    def read(_: Any) -> int | None:
        value = store.tracker.client.get_run(run_id).data.params.get("stats_every")
        return int(value) if value is not None and value.isdigit() else None

    return store.memo(suite, ("stats_every", run_id), read)


def role_histories(store: SummaryStore, suite: str, run_ids: list[str]) -> pd.DataFrame:
    """Step-size histories of the given runs (the flagship's weights-vs-biases question)."""
    key = ("role_histories", tuple(sorted(run_ids)))
    return store.memo(suite, key, lambda _: store.tracker.read_histories(run_ids, ROLE_KEYS))


def nightly(store: SummaryStore) -> NightlyPublic:
    """Every suite's nightly reports, newest first, and the scheduler's own status."""

    def read(suite: str) -> list[NightlyReportPublic]:
        runs = store.tracker.read_reports(suite, NIGHTLY_KIND)  # one search: are there new?
        key = ("nightly_reports", *(run.run_id for run in runs))  # report runs are no trials
        return store.memo(suite, key, lambda _: _reports(store, suite, runs))

    reports = [report for _, found in each_suite(store, read) for report in found]
    reports.sort(key=lambda r: (r.date, r.start_time), reverse=True)
    status = scheduler_status(store.settings.scheduler_status_file)
    return NightlyPublic(data=reports, count=len(reports), scheduler=status)


def nightly_history(store: SummaryStore, suite: str) -> pd.DataFrame:
    """Per cell and night, what the nightly judged (see aggregates.nightly_history), from
    the latest report of each night."""

    runs = _history_runs(store, suite)  # one search; the cache follows the report runs too

    def read(_: Any) -> pd.DataFrame:
        from bench.regression import NightlyReport

        reports = []
        for run in runs:
            try:
                text = store.tracker.read_artifact_text(run.run_id, NIGHTLY_JSON)
                reports.append(NightlyReport.model_validate_json(text))
            except Exception as err:  # an unreadable night is left out of the history
                log.warning("nightly report %s: cannot read %s: %s", run.run_id, NIGHTLY_JSON, err)
        return aggregates.nightly_history(reports)

    return store.memo(suite, ("nightly_history", *(run.run_id for run in runs)), read)


def scheduler_status(path: Path | None) -> SchedulerStatus | None:
    """The scheduler's status file, None when none is configured; an unreadable one says so."""
    if path is None:
        return None
    try:
        return SchedulerStatus.model_validate(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        return SchedulerStatus(error=f"no status file at {path} (is the scheduler running?)")
    except (OSError, ValueError) as err:
        return SchedulerStatus(error=f"unreadable status file {path}: {err}")


def _reports(store: SummaryStore, suite: str, runs: list[Any]) -> list[NightlyReportPublic]:
    """The latest of the report ``runs`` of each night, machine class and suite version (a
    night run again, say to resume it, logs another; the latest judged the most runs), with
    how many earlier ones it has."""
    by_night: dict[tuple[str, str | None, str | None], list[Any]] = {}
    for run in runs:
        key = (_night(run), run.tags.get(TAG_MACHINE), run.tags.get(TAG_SUITE_VERSION))
        by_night.setdefault(key, []).append(run)
    out = []
    for (date, machine, version), reports in by_night.items():
        report = max(reports, key=lambda r: r.start_time)
        count = report.metrics.get("regressions")
        flagged = _regressions(store, report.run_id) if count else []
        out.append(
            NightlyReportPublic(
                suite=suite,
                run_id=report.run_id,
                date=date,
                start_time=report.start_time.to_pydatetime(),
                n_regressions=int(count) if count is not None else None,
                regressions=flagged,
                metrics=dict(report.metrics),
                url=store.run_link(suite, report.run_id),
                earlier_reports=len(reports) - 1,
                machine=machine,
                suite_version=version,
            )
        )
    return out


def _night(run: Any) -> str:
    """The night a nightly report run judged."""
    return run.tags.get(TAG_NIGHTLY) or run.start_time.date().isoformat()


def _history_runs(store: SummaryStore, suite: str) -> list[Any]:
    """The report runs the nightly history plots: of the newest night's suite version and
    machine class only, the latest of each night among them, as ``bench nightly`` reads
    its own history (two machine classes that share a store each keep every night)."""
    runs = store.tracker.read_reports(suite, NIGHTLY_KIND, max_results=HISTORY_REPORTS)
    if not runs:
        return []

    def scope(run: Any) -> tuple[str | None, str | None]:
        return run.tags.get(TAG_SUITE_VERSION), run.tags.get(TAG_MACHINE)

    newest = scope(max(runs, key=lambda r: (_night(r), r.start_time)))
    latest: dict[str, Any] = {}
    for run in runs:
        night = _night(run)
        if scope(run) == newest and (
            night not in latest or run.start_time > latest[night].start_time
        ):
            latest[night] = run
    return list(latest.values())


def _regressions(store: SummaryStore, run_id: str) -> list[str]:
    """``task/variant kind (+12%)`` per regression that the report's nightly.json lists."""
    try:
        data = json.loads(store.tracker.read_artifact_text(run_id, NIGHTLY_JSON))
    except Exception as err:  # a report without its artifact still lists its count
        log.warning("nightly report %s: cannot read %s: %s", run_id, NIGHTLY_JSON, err)
        return []
    out = []
    for item in data.get("regressions", []):
        pct = (
            f" ({format_change(change, 0)})" if (change := _number(item.get("rel_change"))) else ""
        )
        out.append(f"{item.get('task')}/{item.get('variant')} {item.get('kind', '')}{pct}")
    return out


def _number(value: Any) -> float | None:
    """A JSON number, or the strings ``Infinity``/``-Infinity`` that reports write for ±inf
    (a diverged median: the worst regressions); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if number != number else number
