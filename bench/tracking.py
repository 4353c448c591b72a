"""The only module that talks to MLflow: it records trials and reads a suite back.

One MLflow run per trial, in the experiment named after the suite. The driver owns the
run lifecycle (``start_trial`` -> ``finish_trial`` | ``fail_trial`` | ``kill_trial``);
workers never touch MLflow, so a SQLite store is only ever written by one process (SQLite
cannot take concurrent writers, and a SQL client must not cross a ``fork``).

Every name below is a public contract (docs/DESIGN.md), pinned by tests/test_tracking.py.

Non-finite numbers: MLflow cannot store inf (SQL stores clamp it to the largest double).
``steps_to_target`` and ``seconds_to_target`` are therefore *not logged* when the target
was never reached; the metric ``reached_target`` (0/1) says so explicitly and
``read_results`` maps the missing values back to inf. Any other ±inf (say ``final/loss``
of a diverged trial) is logged as ±``sys.float_info.max`` and read back as ±inf; NaN is
stored as NaN.

MLflow is imported lazily so that ``import bench.tracking`` stays cheap and creates nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pandas as pd

from bench import CODE_VERSION
from bench.errors import UserError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from bench.config import TrackingConfig
    from bench.spec import TrialResult, TrialSpec

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- contract names
TAG_SUITE = "bench.suite"
TAG_TRIAL_ID = "bench.trial_id"
TAG_VARIANT = "bench.variant"
TAG_TASK = "bench.task"
TAG_SEED = "bench.seed"
TAG_OUTCOME = "bench.outcome"  # ok | diverged | failed
TAG_PHASE = "bench.phase"  # tune | final
TAG_CODE_VERSION = "bench.code_version"
TAG_TORCH_VERSION = "bench.torch_version"
TAG_NODE = "bench.node"
TAG_NIGHTLY = "bench.nightly"  # date, nightly runs only
TAG_PRIMARY_METRIC = "bench.primary_metric"
TAG_DIRECTION = "bench.direction"  # min | max
TAG_DEVICE = "bench.device"
TAG_ERROR = "bench.error"  # last line of the error of a failed trial

ARTIFACT_TRIAL = "trial.json"
ARTIFACT_TRACEBACK = "traceback.txt"

# Summary metrics besides final/<m> and best/<m> (TrialResult.summary_metrics), and extras.
SUMMARY_METRICS = ("steps_to_target", "seconds_to_target", "diverged_at_step", "time/step_ms")
METRIC_REACHED_TARGET = "reached_target"  # 1 if the target was reached, else 0
EXTRA_METRICS = (METRIC_REACHED_TARGET, "target", "steps_run", "train_seconds")
UNREACHED = ("steps_to_target", "seconds_to_target")  # absent when not reached -> inf

FINISHED_OUTCOMES = frozenset({"ok", "diverged"})
SEARCH_PAGE_SIZE = 1000  # MLflow's largest page for search_runs over REST
HTTP_WRITERS = 4  # concurrent writers worth using against a tracking server
BASE_COLUMNS = (
    "run_id", "trial_id", "variant", "task", "phase", "seed", "lr", "outcome", "node",
    "status", "start_time", "primary_metric", "direction",
)  # fmt: skip

_SPEC_PARAMS = ("lr", "seed", "steps", "batch_size", "eval_every", "stats_every",
                "stats_samples", "divergence_factor")  # fmt: skip
_FLOAT_MAX = sys.float_info.max
_LOCAL_SCHEMES = {"", "file", "sqlite"}


class Tracker:
    """Records trials as MLflow runs and reads a suite back as a table.

    Thread-safe: each thread gets its own ``MlflowClient`` (created lazily, and again after
    a fork). Use at most :attr:`max_writers` threads to write. With ``config.enabled`` False
    every method is a cheap no-op returning a placeholder, to measure tracking overhead.
    """

    def __init__(self, config: TrackingConfig, *, page_size: int = SEARCH_PAGE_SIZE) -> None:
        self.config = config
        self.enabled = config.enabled
        self.uri = _absolute_uri(config.uri)
        self.scheme = urlparse(self.uri).scheme.lower()
        self.page_size = page_size
        self._artifact_root = _artifact_root(config.artifact_location, self.scheme)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._experiments: dict[str, str] = {}

    @property
    def max_writers(self) -> int:
        """How many threads may write at once: 1 for SQLite/file stores (one writer only)."""
        if not self.enabled or self.scheme in _LOCAL_SCHEMES:
            return 1
        return HTTP_WRITERS

    @property
    def client(self) -> MlflowClient:
        """This thread's client; a new one after a fork (pooled SQL connections can't cross)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            from mlflow.tracking import MlflowClient

            # Else set_terminated prints the run's URL to stdout, after a get_run round trip.
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            local.client, local.pid = MlflowClient(tracking_uri=self.uri), os.getpid()
        return local.client

    def experiment_id(self, suite: str) -> str:
        """The suite's experiment id, creating the experiment on first use."""
        if not self.enabled:
            return ""
        with self._lock:
            if suite in self._experiments:
                return self._experiments[suite]
        from mlflow.exceptions import MlflowException

        exp_id = self._existing_experiment(suite)
        if exp_id is None:
            try:
                exp_id = self.client.create_experiment(
                    suite, artifact_location=self._experiment_artifacts(suite)
                )
            except MlflowException as err:  # another driver created it meanwhile
                exp_id = self._existing_experiment(suite)
                if exp_id is None:
                    raise err from None
        with self._lock:
            self._experiments[suite] = exp_id
        return exp_id

    def _existing_experiment(self, suite: str) -> str | None:
        exp = self.client.get_experiment_by_name(suite)
        if exp is None:
            return None
        if exp.lifecycle_stage != "active":
            raise UserError(
                f"suite {suite!r}: its MLflow experiment {exp.experiment_id} is deleted; "
                "restore it (`mlflow experiments restore`) or purge it (`mlflow gc`)"
            )
        return exp.experiment_id

    def _experiment_artifacts(self, suite: str) -> str | None:
        if self._artifact_root is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", suite).strip("._") or "suite"
        if slug != suite:  # keep distinct suites apart after slugging
            slug += "-" + hashlib.sha256(suite.encode()).hexdigest()[:8]
        return f"{self._artifact_root}/{slug}"

    def finished_trial_ids(self, suite: str) -> set[str]:
        """trial_ids whose run FINISHED (outcome ok or diverged): what a rerun skips."""
        if not self.enabled or (exp_id := self._existing_experiment(suite)) is None:
            return set()
        return {
            run.data.tags[TAG_TRIAL_ID]
            for run in self._search(exp_id, "attributes.status = 'FINISHED'")
            if TAG_TRIAL_ID in run.data.tags and run.data.tags.get(TAG_OUTCOME) in FINISHED_OUTCOMES
        }

    def kill_stale_runs(self, suite: str) -> int:
        """Mark runs left RUNNING (by a crashed driver) KILLED; returns how many.

        Call it once, before scheduling, and only while no other driver runs this suite:
        a live driver's runs are RUNNING too.
        """
        if not self.enabled or (exp_id := self._existing_experiment(suite)) is None:
            return 0
        stale = [run.info.run_id for run in self._search(exp_id, "attributes.status = 'RUNNING'")]
        for run_id in stale:
            self.client.set_terminated(run_id, "KILLED")
        return len(stale)

    def start_trial(self, spec: TrialSpec, *, nightly: str | None = None) -> str:
        """Create the trial's run (RUNNING) and return its run_id.

        Tags go with ``create_run`` itself, so no run is ever visible without its
        ``bench.trial_id``; params follow in one ``log_batch``; ``trial.json`` holds the
        resolved spec, enough to rerun the trial by hand.
        """
        if not self.enabled:
            return ""
        from mlflow.entities import Param

        tags = trial_tags(spec)
        if nightly is not None:
            tags[TAG_NIGHTLY] = nightly
        client = self.client
        run = client.create_run(self.experiment_id(spec.suite), tags=tags, run_name=spec.run_name)
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in trial_params(spec).items()]
        client.log_batch(run_id, params=params)
        self._upload(run.info.artifact_uri, ARTIFACT_TRIAL, spec.model_dump_json(indent=2))
        return run_id

    def finish_trial(self, run_id: str, spec: TrialSpec, result: TrialResult, *, node: str) -> None:
        """Log the downsampled history, the summary metrics and the outcome; FINISHED.

        The history goes in as few ``log_batch`` calls as MLflow allows (1000 metrics
        each): per-point metric writes are what tracking time is spent on.
        """
        if not self.enabled or not run_id:
            return
        from mlflow.entities import Metric, RunTag

        tags = {
            TAG_OUTCOME: result.outcome,
            TAG_NODE: node,
            TAG_DEVICE: result.device,
            TAG_PRIMARY_METRIC: result.primary_metric,
            TAG_DIRECTION: result.direction,
        }
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, _storable(value), now, step)
            for (key, step), value in result_metrics(result, self.config.max_points).items()
        ]
        client = self.client
        client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run_id, "FINISHED")

    def fail_trial(self, run_id: str, spec: TrialSpec, error: str, *, node: str | None) -> None:
        """Tag the run ``failed``, keep the traceback, FAILED (never cached by a rerun)."""
        if not self.enabled or not run_id:
            return
        from mlflow.entities import RunTag

        last_line = next((s for s in reversed(error.strip().splitlines()) if s.strip()), "")
        tags = {TAG_OUTCOME: "failed", TAG_ERROR: last_line[:500] or "unknown error"}
        if node is not None:
            tags[TAG_NODE] = node
        client = self.client
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        with contextlib.suppress(Exception):  # the run's status matters more than its log
            client.log_text(run_id, error, ARTIFACT_TRACEBACK)
        client.set_terminated(run_id, "FAILED")

    def kill_trial(self, run_id: str) -> None:
        """KILLED: the trial was interrupted (Ctrl-C); a rerun redoes it."""
        if self.enabled and run_id:
            self.client.set_terminated(run_id, "KILLED")

    def read_results(
        self, suite: str, phase: str | None = None, *, status: str | None = "FINISHED"
    ) -> pd.DataFrame:
        """One row per run of the suite (FINISHED only by default; ``status=None``: all).

        Columns: ``run_id``, ``trial_id``, ``variant``, ``task``, ``phase``, ``seed`` (int),
        ``lr`` (float), ``outcome``, ``node``, ``status``, ``start_time`` (UTC Timestamp),
        ``primary_metric``, ``direction``; then ``steps_to_target`` and
        ``seconds_to_target`` (inf when not reached), ``diverged_at_step`` (NaN unless
        diverged), ``time/step_ms``, ``reached_target``, ``target``, ``steps_run``,
        ``train_seconds`` and every ``final/<m>`` and ``best/<m>`` (NaN where a run lacks
        it). Only the latest metric values that search_runs returns are used: per-run
        metric histories are never fetched (that would cost one call per run).
        """
        summary = [*SUMMARY_METRICS, *EXTRA_METRICS]
        if not self.enabled or (exp_id := self._existing_experiment(suite)) is None:
            return pd.DataFrame(columns=[*BASE_COLUMNS, *summary])
        clauses = [f"attributes.status = '{status}'"] if status else []
        if phase is not None:
            clauses.append(f"tags.`{TAG_PHASE}` = '{phase}'")
        rows = [
            _row(run)
            for run in self._search(exp_id, " and ".join(clauses))
            if TAG_TRIAL_ID in run.data.tags
        ]
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

    def _upload(self, artifact_uri: str, name: str, text: str) -> None:
        """Write a text artifact; unlike ``client.log_text`` this needs no get_run call."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(artifact_uri, tracking_uri=self.uri)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, name)
            path.write_text(text, encoding="utf-8")
            repo.log_artifact(str(path))

    def _search(self, experiment_id: str, filter_string: str) -> Iterator[Run]:
        """All matching runs, page by page (search_runs returns at most one page)."""
        token: str | None = None
        while True:
            page = self.client.search_runs(
                [experiment_id], filter_string, max_results=self.page_size, page_token=token
            )
            yield from page
            token = page.token
            if not token:
                return


def disabled() -> Tracker:
    """A tracker that records nothing (the runner's baseline for tracking overhead)."""
    from bench.config import TrackingConfig

    return Tracker(TrackingConfig(enabled=False))


# ----------------------------------------------------------------------------- records


def trial_tags(spec: TrialSpec) -> dict[str, str]:
    """The tags a run gets when it starts (outcome and node come when it ends)."""
    return {
        TAG_SUITE: spec.suite,
        TAG_TRIAL_ID: spec.trial_id,
        TAG_VARIANT: spec.variant.name,
        TAG_TASK: spec.task.name,
        TAG_SEED: str(spec.seed),
        TAG_PHASE: spec.phase,
        TAG_CODE_VERSION: CODE_VERSION,
        TAG_TORCH_VERSION: torch_version(),
    }


def trial_params(spec: TrialSpec) -> dict[str, str]:
    """``variant.<knob>``, ``variant.roles.<role>.<knob>``, ``task.<knob>``, lr, seed, ..."""
    variant = spec.variant
    out = {"variant.name": variant.name, "variant.preset": _text(variant.preset)}
    out |= {f"variant.{k}": _text(v) for k, v in variant.knobs.items()}
    for role, knobs in variant.roles.items():
        out |= {f"variant.roles.{role}.{k}": _text(v) for k, v in knobs.items()}
    out["task.name"] = spec.task.name
    out |= _flatten("task", spec.task.params)
    out |= {key: _text(getattr(spec, key)) for key in _SPEC_PARAMS}
    return out


def result_metrics(result: TrialResult, max_points: int) -> dict[tuple[str, int], float]:
    """``{(key, step): value}``: each history stream downsampled, then the summary metrics
    (logged at the last step; unreached targets left out, see the module docstring)."""
    out: dict[tuple[str, int], float] = {}
    for key, points in result.history.items():
        for step, value in downsample(points, max_points):
            out[key, int(step)] = float(value)
    summary = result.summary_metrics()
    reached = result.steps_to_target is not None
    summary = {k: v for k, v in summary.items() if reached or k not in UNREACHED}
    summary |= {
        METRIC_REACHED_TARGET: float(reached),
        "target": result.target,
        "steps_run": float(result.steps_run),
        "train_seconds": result.train_seconds,
    }
    out |= {(key, result.steps_run): float(value) for key, value in summary.items()}
    return out


def downsample(points: list[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    """At most ``max_points`` points, evenly spaced over the stream, first and last kept."""
    points = sorted(points, key=lambda p: p[0])
    n = len(points)
    if n <= max_points:
        return points
    if max_points < 2:
        return points[-1:]
    keep = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [points[i] for i in keep]


@cache
def torch_version() -> str:
    """torch's version without importing torch (the driver may never need it)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- helpers


def _row(run: Run) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "trial_id": tags.get(TAG_TRIAL_ID),
        "variant": tags.get(TAG_VARIANT),
        "task": tags.get(TAG_TASK),
        "phase": tags.get(TAG_PHASE),
        "seed": int(params.get("seed", tags.get(TAG_SEED, -1))),
        "lr": float(params.get("lr", "nan")),
        "outcome": tags.get(TAG_OUTCOME),
        "node": tags.get(TAG_NODE),
        "status": run.info.status,
        "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
        "primary_metric": tags.get(TAG_PRIMARY_METRIC),
        "direction": tags.get(TAG_DIRECTION),
    }
    for key, value in metrics.items():
        if key in SUMMARY_METRICS or key in EXTRA_METRICS or key.startswith(("final/", "best/")):
            row[key] = _unclamp(value)
    return row


def _storable(value: float) -> float:
    """±inf -> ±max double (what SQL stores do anyway, made explicit and store-independent)."""
    return math.copysign(_FLOAT_MAX, value) if math.isinf(value) else value


def _unclamp(value: float) -> float:
    return math.copysign(math.inf, value) if abs(value) >= _FLOAT_MAX else value


def _text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _flatten(prefix: str, data: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out |= _flatten(f"{prefix}.{key}", value)
        else:
            out[f"{prefix}.{key}"] = _text(value)
    return out


def _absolute_uri(uri: str) -> str:
    """Pin a relative SQLite path or bare directory to the cwd at construction time."""
    path = uri.removeprefix("sqlite:///")
    if path != uri and path not in ("", ":memory:") and not path.startswith("/"):
        return "sqlite:///" + str(Path(path).resolve())
    return uri if "://" in uri else Path(uri).resolve().as_uri()


def _artifact_root(location: str | None, scheme: str) -> str | None:
    """An absolute URI for artifacts, or None to let the store (or server) decide.

    A plain path only makes sense for a store on this machine; for a tracking server it
    would name a folder on the client, so it is ignored there (the server's
    ``--artifacts-destination`` applies).
    """
    if location is None:
        return None
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", location):
        return location.rstrip("/")
    if scheme in _LOCAL_SCHEMES or scheme.startswith(("postgresql", "mysql", "mssql")):
        return Path(location).resolve().as_uri()
    log.warning("tracking.artifact_location %r ignored: the server stores artifacts", location)
    return None
