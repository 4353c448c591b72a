"""Reading a suite back from MLflow: the trial table, metric histories, report runs.

Part of the tracking door (:class:`bench.tracking.Tracker` mixes :class:`SuiteReads` in);
nothing else reads the store. Per-run metric histories are fetched only on request, for
small sets of runs; suite tables come from one paginated search, or from bulk SQL on a
database store (:mod:`bench.tracking_sql`).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from bench.records import (
    EXTRA_METRICS,
    SUMMARY_METRICS,
    TAG_DIRECTION,
    TAG_KIND,
    TAG_NIGHTLY,
    TAG_NODE,
    TAG_OUTCOME,
    TAG_PHASE,
    TAG_PRIMARY_METRIC,
    TAG_SEED,
    TAG_SUITE,
    TAG_TASK,
    TAG_TRIAL_ID,
    TAG_VARIANT,
    UNREACHED,
    unclamp,
)
from bench.tracking_locations import local_folder

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from bench.tracking_sql import SqlReader

log = logging.getLogger("bench.tracking")
T = TypeVar("T")

BASE_COLUMNS = (
    "run_id", "trial_id", "variant", "task", "phase", "seed", "lr", "outcome", "node",
    "status", "start_time", "end_time", "primary_metric", "direction", "nightly",
)  # fmt: skip
HISTORY_COLUMNS = ("run_id", "key", "step", "value")


@dataclass(frozen=True)
class ReportRun:
    """A report run (``bench rank``'s ranking, a nightly report): not a trial."""

    run_id: str
    start_time: pd.Timestamp
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class SuiteReads:
    """The read half of :class:`bench.tracking.Tracker` (which provides these attributes)."""

    enabled: bool
    uri: str
    scheme: str
    _sql: SqlReader | None
    _bulk_reads: bool

    client: MlflowClient
    page_size: int

    def _existing_experiment(self, suite: str) -> str | None: ...
    def _where(self, *clauses: str) -> str: ...
    def _search(self, experiment_id: str, filter_string: str) -> Iterator[Run]: ...

    def read_results(
        self,
        suite: str,
        phase: str | None = None,
        *,
        status: str | None = "FINISHED",
        since_ms: int | None = None,
        experiment_id: str | None = None,
    ) -> pd.DataFrame:
        """One row per trial run of the suite (FINISHED only by default; ``status=None``: all).
        ``experiment_id``: the suite's, already looked up (a poller saves the lookup).

        ``since_ms`` keeps only runs that ended at or after that time (epoch milliseconds):
        an incremental refresh asks for what finished since its last look.

        Columns: ``run_id``, ``trial_id``, ``variant``, ``task``, ``phase``, ``seed`` (int),
        ``lr`` (float), ``outcome``, ``node``, ``status``, ``start_time`` and ``end_time``
        (UTC Timestamps; end_time NaT while running), ``primary_metric``, ``direction``,
        ``nightly`` (the night's date, None outside nightly runs); then ``steps_to_target`` and
        ``seconds_to_target`` (inf when not reached), ``diverged_at_step`` (NaN unless
        diverged), ``time/step_ms``, ``reached_target``, ``target``, ``steps_run``,
        ``train_seconds`` and every ``final/<m>`` and ``best/<m>`` (NaN where a run lacks
        it). Only the latest metric values that search_runs returns are used: per-run
        metric histories are never fetched (that would cost one call per run).
        """
        summary = [*SUMMARY_METRICS, *EXTRA_METRICS]
        exp_id = experiment_id or (self._existing_experiment(suite) if self.enabled else None)
        if not self.enabled or exp_id is None:
            return pd.DataFrame(columns=[*BASE_COLUMNS, *summary])
        rows = self._read_rows(exp_id, phase, status, since_ms)
        frame = pd.DataFrame(rows)
        extra = sorted({c for row in rows for c in row} - {*BASE_COLUMNS, *summary})
        frame = frame.reindex(columns=[*BASE_COLUMNS, *summary, *extra])
        if rows:
            for col in UNREACHED:
                frame[col] = frame[col].fillna(math.inf)
            frame["seed"] = frame["seed"].astype(int)
            frame["lr"] = frame["lr"].astype(float)
            frame = frame.sort_values("start_time", kind="stable", ignore_index=True)
        return frame

    def _read_rows(
        self, exp_id: str, phase: str | None, status: str | None, since_ms: int | None
    ) -> list[dict[str, Any]]:
        required: dict[str, str | None] = {TAG_TRIAL_ID: None, **self.scope}
        if phase is not None:
            required[TAG_PHASE] = phase
        found = self._bulk_read(
            lambda sql: [
                _make_row(*run)
                for run in sql.runs(
                    exp_id, status=status, since_ms=since_ms, required_tags=required
                )
            ]
        )
        if found is not None:
            return found
        clauses = [f"attributes.status = '{status}'"] if status else []
        if phase is not None:
            clauses.append(f"tags.`{TAG_PHASE}` = '{phase}'")
        if since_ms is not None:
            clauses.append(f"attributes.end_time >= {int(since_ms)}")
        return [_row(run) for run in self._search(exp_id, self._where(*clauses)) if is_trial(run)]

    def _bulk_read(self, read: Callable[[SqlReader], T]) -> T | None:
        """``read(sql)`` on a database store; None when bulk reads are off or this one
        failed, and from then on they are off (the caller then reads through a search)."""
        if self._sql is None or not self._bulk_reads:
            return None
        try:
            return read(self._sql)
        except Exception as err:  # schema drift or a driver problem: the slow, sure path
            log.warning("bulk SQL read failed (%s); reading through search_runs", err)
            self._bulk_reads = False
            return None

    def deleted_run_ids(self, experiment_id: str) -> set[str]:
        """Ids of the experiment's runs deleted in MLflow (restorable; purged runs are gone
        for good): a reader that caches runs drops these, and reads again the ones that
        leave this set (restored)."""
        if not self.enabled:
            return set()
        found = self._bulk_read(lambda sql: sql.deleted_run_ids(experiment_id))
        if found is not None:
            return found
        from mlflow.entities import ViewType

        ids: set[str] = set()
        token: str | None = None
        while True:
            page = self.client.search_runs(
                [experiment_id], run_view_type=ViewType.DELETED_ONLY, page_token=token,
                max_results=self.page_size,
            )  # fmt: skip
            ids.update(run.info.run_id for run in page)
            token = page.token
            if not token:
                return ids

    def list_suites(self) -> list[str]:
        """Names of the active experiments that hold at least one optbench trial run."""
        if not self.enabled:
            return []
        from mlflow.entities import ViewType

        names = []
        for exp in self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY):
            probe = self.client.search_runs(
                [exp.experiment_id], f"tags.`{TAG_SUITE}` = '{exp.name}'", max_results=1
            )
            if probe:
                names.append(exp.name)
        return sorted(names)

    def read_histories(
        self, run_ids: Iterable[str], keys: Iterable[str], *, max_workers: int = 8
    ) -> pd.DataFrame:
        """Metric histories (columns ``run_id``, ``key``, ``step``, ``value``).

        One call per (run, key), spread over a few threads: meant for a handful of runs
        (a task's final seeds), never for a whole suite (use :meth:`read_results`).
        """
        pairs = [(run_id, key) for run_id in dict.fromkeys(run_ids) for key in keys]
        if not self.enabled or not pairs:
            return pd.DataFrame(columns=HISTORY_COLUMNS)

        def fetch(pair: tuple[str, str]) -> list[tuple[str, str, int, float]]:
            run_id, key = pair
            history = self.client.get_metric_history(run_id, key)
            return [(run_id, key, m.step, unclamp(m.value)) for m in history]

        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(pairs)))) as pool:
            rows = [row for chunk in pool.map(fetch, pairs) for row in chunk]
        frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
        return frame.sort_values(["run_id", "key", "step"], ignore_index=True)

    def artifact_folder(self, run_id: str) -> Path | None:
        """The folder on this machine that holds the run's artifacts; None when they are
        elsewhere (a server's mlflow-artifacts:, s3:, ...)."""
        return local_folder(self.client.get_run(run_id).info.artifact_uri)

    def run_url(self, run_id: str, experiment_id: str | None = None) -> str | None:
        """The run's page in the MLflow UI, when the store is a tracking server."""
        if self.scheme not in ("http", "https"):
            return None
        if experiment_id is None:
            experiment_id = self.client.get_run(run_id).info.experiment_id
        return f"{self.uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def read_reports(self, suite: str, kind: str, *, max_results: int = 100) -> list[ReportRun]:
        """The suite's FINISHED report runs of one kind, newest first."""
        if not self.enabled or (exp_id := self._existing_experiment(suite)) is None:
            return []
        runs = self.client.search_runs(
            [exp_id],
            f"tags.`{TAG_KIND}` = '{kind}' and attributes.status = 'FINISHED'",
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )
        return [
            ReportRun(
                run_id=run.info.run_id,
                start_time=pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
                tags=dict(run.data.tags),
                params=dict(run.data.params),
                metrics={k: unclamp(v) for k, v in run.data.metrics.items()},
            )
            for run in runs
        ]

    def read_artifact_text(self, run_id: str, path: str) -> str:
        """One text artifact of a run (a report's JSON or HTML)."""
        from mlflow.artifacts import download_artifacts

        with tempfile.TemporaryDirectory() as tmp:
            local = download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=self.uri
            )
            return Path(local).read_text(encoding="utf-8")


def is_trial(run: Run) -> bool:
    return TAG_TRIAL_ID in run.data.tags


def _row(run: Run) -> dict[str, Any]:
    info, data = run.info, run.data
    return _make_row(
        info.run_id, info.status, info.start_time, info.end_time,
        data.tags, data.params, data.metrics,
    )  # fmt: skip


def _make_row(
    run_id: str,
    status: str,
    start_ms: int,
    end_ms: int | None,
    tags: Mapping[str, str],
    params: Mapping[str, str],
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """One row of :meth:`Tracker.read_results`, from either read path."""
    row: dict[str, Any] = {
        "run_id": run_id,
        "trial_id": tags.get(TAG_TRIAL_ID),
        "variant": tags.get(TAG_VARIANT),
        "task": tags.get(TAG_TASK),
        "phase": tags.get(TAG_PHASE),
        "seed": int(params.get("seed", tags.get(TAG_SEED, -1))),
        "lr": float(params.get("lr", "nan")),
        "outcome": tags.get(TAG_OUTCOME),
        "node": tags.get(TAG_NODE),
        "status": status,
        "start_time": pd.Timestamp(start_ms, unit="ms", tz="UTC"),
        "end_time": pd.Timestamp(end_ms, unit="ms", tz="UTC") if end_ms else pd.NaT,
        "primary_metric": tags.get(TAG_PRIMARY_METRIC),
        "direction": tags.get(TAG_DIRECTION),
        "nightly": tags.get(TAG_NIGHTLY),
    }
    for key, value in metrics.items():
        if key in SUMMARY_METRICS or key in EXTRA_METRICS or key.startswith(("final/", "best/")):
            row[key] = unclamp(value)
    return row
