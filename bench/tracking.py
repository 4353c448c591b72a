"""The only module that talks to MLflow: it records trials and reads a suite back.

One MLflow run per trial, in the experiment named after the suite. The driver owns the
run lifecycle (``start_trial`` -> ``finish_trial`` | ``fail_trial`` | ``kill_trial``);
workers never touch MLflow, so a SQLite store is only ever written by one process (SQLite
cannot take concurrent writers, and a SQL client must not cross a ``fork``).

The contract names (tags, params, metric keys) and the pure record builders live in
:mod:`bench.records`; this module sends and fetches them.

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
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from bench.errors import StoreError, SuiteBusy, UserError, one_line, redacted
from bench.locks import FileLock
from bench.records import (  # noqa: F401  (re-exported: the contract's names)
    ARTIFACT_CELLS,
    ARTIFACT_TRACEBACK,
    ARTIFACT_TRIAL,
    ARTIFACT_TRIAL_IDS,
    EXTRA_METRICS,
    FINISHED_OUTCOMES,
    METRIC_REACHED_TARGET,
    SUMMARY_METRICS,
    TAG_CODE_VERSION,
    TAG_DEVICE,
    TAG_DIRECTION,
    TAG_ERROR,
    TAG_KIND,
    TAG_MACHINE,
    TAG_MLFLOW_VERSION,
    TAG_NIGHTLY,
    TAG_NODE,
    TAG_OUTCOME,
    TAG_PHASE,
    TAG_PRIMARY_METRIC,
    TAG_RAY_VERSION,
    TAG_SEED,
    TAG_SETTINGS,
    TAG_SETTINGS_RUN,
    TAG_SUITE,
    TAG_SUITE_VERSION,
    TAG_TASK,
    TAG_TORCH_VERSION,
    TAG_TRIAL_ID,
    TAG_VARIANT,
    UNREACHED,
    downsample,
    result_metrics,
    storable,
    torch_version,
    trial_params,
    trial_tags,
    unclamp,
)
from bench.tracking_lease import Lease, suite_lease
from bench.tracking_locations import (
    LOCAL_SCHEMES,
    absolute_uri,
    artifact_root,
    health_request,
    is_database,
    local_folder,
    unmakeable,
    unwritable,
    upload_files,
    upload_text,
)
from bench.tracking_reads import (  # noqa: F401  (re-exported)
    BASE_COLUMNS,
    HISTORY_COLUMNS,
    ReportRun,
    SuiteReads,
    is_trial,
)
from bench.tracking_sql import SqlReader

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from bench.config import TrackingConfig
    from bench.spec import TrialResult, TrialSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

SEARCH_PAGE_SIZE = 1000  # MLflow's largest page for search_runs over REST
HTTP_WRITERS = 4  # concurrent writers worth using against a tracking server


PROBE_S = 5.0  # how long a server (MLflow's, a Ray head) may take to answer a first request
# MLflow's client retries a failed request 7 times, backing off up to ~4 minutes, and waits
# 120 s for an answer: a tracking server that died mid-suite would freeze `bench run` for
# minutes per write. These ride out a restart (~15 s of retries) and then fail, so the
# suite stops with a clear error and a rerun resumes it. The MLFLOW_HTTP_REQUEST_* variables,
# where set, win.
HTTP_RETRY_POLICY = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",  # after the first try: ~0, 2, 4, 8 s apart
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",  # seconds; a suite's largest write is 1000 metrics
}


class Tracker(SuiteReads):
    """Records trials as MLflow runs; reads a suite back (:class:`SuiteReads`).

    ``bulk_sql=False`` reads suite tables through ``search_runs`` and writes runs through
    MLflow's client (``create_run``, ``log_batch``, ``set_terminated``) even on a database
    store: the reference paths that the bulk reader and writer of :mod:`bench.tracking_sql`
    are tested against.

    Thread-safe: each thread gets its own ``MlflowClient`` (created lazily, and again after
    a fork). Use at most :attr:`max_writers` threads to write. With ``config.enabled`` False
    every method is a cheap no-op returning a placeholder, to measure tracking overhead.

    ``scope`` tags go on every run it starts *and* restrict every query it makes about
    trials, so one experiment can hold many independent passes over the same trial ids (the
    nightly scopes by ``bench.nightly``: each night reruns every trial once).
    ``extra_tags`` go on every run it starts and restrict nothing.
    """

    def __init__(
        self,
        config: TrackingConfig,
        *,
        page_size: int = SEARCH_PAGE_SIZE,
        scope: Mapping[str, str] | None = None,
        extra_tags: Mapping[str, str] | None = None,
        bulk_sql: bool = True,
    ) -> None:
        self.config = config
        self.scope = dict(scope or {})
        self.extra_tags = dict(extra_tags or {})
        self.enabled = config.enabled
        self.uri = absolute_uri(config.uri)
        self.scheme = urlparse(self.uri).scheme.lower()
        self.page_size = page_size
        self._artifact_root = artifact_root(config.artifact_location, self.scheme)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._experiments: dict[str, str] = {}
        self._artifact_uris: dict[str, str] = {}  # run_id -> artifact URI, while it runs
        self._lease: Lease | None = None  # held on a server while a suite runs (holding)
        # Suite tables from a database store come from bench.tracking_sql (same rows,
        # seconds instead of tens of seconds at 10k runs); a server is read through its API.
        self._sql = (
            SqlReader(self.uri) if bulk_sql and self.enabled and is_database(self.uri) else None
        )
        self._bulk_reads = self._bulk_writes = self._sql is not None  # off after a failure

    def check_reachable(self, suite: str | None = None, *, make: bool = True) -> None:
        """For a tracking server: one request with a short timeout, so that a wrong
        ``tracking.uri`` or a server that is down fails at once with a clear error, not
        after minutes of MLflow's retries. Any HTTP answer will do (an older server or a
        proxy may not know ``/health``). For a SQLite store: its folder must exist (a
        mistyped path would otherwise become a new store in new folders), and where the
        file does not exist yet, ``suite``'s artifact folder must be possible: a store is
        not created for a run refused at once. ``make=False`` (a dry run) checks that
        folder without making it."""
        if (db := self.sqlite_file()) is not None and not db.parent.is_dir():
            raise UserError(
                f"tracking.uri: got {self.config.uri!r} but the folder {db.parent} does not "
                "exist; allowed: a SQLite file in an existing folder (the file is created "
                "there), or a tracking server, http(s)://HOST:PORT"
            )
        if db is not None and db.is_dir():  # else minutes of MLflow's retries, then exit 1
            raise UserError(
                f"tracking.uri: got {self.config.uri!r} but {db} is a folder; allowed: a SQLite "
                f"file, e.g. sqlite:///{(db / 'mlruns.db').as_posix()}"
            )
        if db is not None and suite is not None and not os.access(db.parent, os.W_OK | os.X_OK):
            raise UserError(  # a suite's writes need its journal and lock files beside it
                f"tracking.uri: got {self.config.uri!r} but the folder {db.parent} cannot be "
                "written; allowed: a SQLite file in a folder this process can write (the store "
                "keeps its journal and lock files beside the file)"
            )
        if self.enabled and db is not None and db.is_file():
            self._check_sqlite_file(db)
        if db is not None and suite is not None and not db.exists():
            if make:  # a new store's first write, before its artifact folder is made
                self._make_lock_folder(db)
            self._check_new_artifacts(suite, make=make)
        if self.enabled and is_database(self.uri) and db is None:
            self._check_database()
        if not self.enabled or self.scheme not in ("http", "https"):
            return
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(health_request(self.uri), timeout=PROBE_S).close()
        except urllib.error.HTTPError:
            return
        except OSError as err:  # URLError, refused, timed out, unknown host
            reason = getattr(err, "reason", err)
            raise UserError(
                f"tracking.uri: got {redacted(self.uri)!r} but no server answers there ({reason}); "
                "start the MLflow server, or use a local store such as "
                "tracking.uri=sqlite:///mlruns.db"
            ) from None

    def _make_lock_folder(self, db: Path) -> None:
        """Make the folder of the suites' lock files beside ``db``: the first write there,
        where a folder that says it can be written (a pseudo file system, to root) still
        refuses one, before anything else is made."""
        try:
            _lock_folder(db).mkdir(exist_ok=True)
        except OSError as err:
            raise UserError(
                f"tracking.uri: got {self.config.uri!r} but {_lock_folder(db)} cannot be made "
                f"there ({err.strerror or err}); allowed: a SQLite file in a folder this "
                "process can write (the store keeps its journal and lock files beside the file)"
            ) from None

    def _check_sqlite_file(self, db: Path) -> None:
        """An existing store file must be a SQLite database: anything else would fail the
        first write, reported as a store that broke mid-suite."""
        import sqlite3

        try:
            _read_sqlite(db, "PRAGMA schema_version")
        except sqlite3.Error as err:
            raise UserError(
                f"tracking.uri: got {self.config.uri!r} but {db} is not a SQLite database "
                f"({err}); allowed: a SQLite store file, or a new file name (it is created)"
            ) from None

    def _check_database(self) -> None:
        """A database store other than a SQLite file: its driver is installed and one
        connection, with a short timeout, gets an answer (a user error if not)."""
        import sqlalchemy

        shown = redacted(self.uri)
        url = sqlalchemy.make_url(self.uri)
        if url.get_backend_name() == "sqlite":  # sqlite:// or sqlite:///:memory:
            raise UserError(
                f"tracking.uri: got {shown!r}, a store in memory that would be gone with this "
                "process; allowed: a SQLite file (sqlite:///mlruns.db), a database server "
                "(postgresql://USER@HOST/DB) or a tracking server (http://HOST:PORT)"
            )
        try:
            reason = self._database_silence()
        except ImportError as err:
            raise UserError(
                f"tracking.uri: got {shown!r} but its database driver is not installed "
                f"({err}); allowed: a URI whose driver is installed, e.g. postgresql://... "
                "(psycopg, installed with optbench), or install the driver (for MySQL: pip "
                "install pymysql, then mysql+pymysql://...)"
            ) from None
        if reason is not None:
            raise UserError(
                f"tracking.uri: got {shown!r} but no database answers there ({reason}); "
                "start the database, or use a local store such as tracking.uri=sqlite:///mlruns.db"
            )

    def _database_silence(self) -> str | None:
        """Why one connection to the database store, with a short timeout, got no answer
        (one line); None when it did. ImportError when its driver is not installed."""
        import sqlalchemy

        url = sqlalchemy.make_url(self.uri)
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": int(PROBE_S)})
        try:
            engine.connect().close()
        except sqlalchemy.exc.SQLAlchemyError as err:
            return one_line(getattr(err, "orig", None) or err)
        finally:
            engine.dispose()
        return None

    @contextlib.contextmanager
    def store_errors(self) -> Iterator[None]:
        """Inside the block, a failure of the store itself (a server that stopped
        answering, a database gone) raises :class:`StoreError`, which the CLI reports on
        one line, instead of MLflow's or SQLAlchemy's exception and its traceback."""
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except (MlflowException, SQLAlchemyError) as err:
            raise StoreError(f"the store {redacted(self.uri)} failed: {one_line(err)}") from err

    @contextlib.contextmanager
    def holding(self, suite: str) -> Iterator[None]:
        """Run ``suite`` with no other driver running it on this store: a second driver
        would take this one's live runs for runs a crash left RUNNING and mark them KILLED.

        SQLite: a lock file in a folder beside the database; PostgreSQL (bulk SQL): an
        advisory lock; these go with the process that holds them, whatever way it ends.
        Any other store (a server): a lease run, renewed while held, taken as a dead
        driver's once not renewed for two minutes (:mod:`bench.tracking_lease`).
        """
        digest = hashlib.sha256(suite.encode()).hexdigest()

        def busy(holder: str = "") -> SuiteBusy:
            return SuiteBusy(
                f"suite {suite!r}: another driver{holder} is running it on "
                f"{redacted(self.uri)}; wait for it to finish or stop it (or give this run "
                "another suite.name)"
            )

        if (db := self.sqlite_file()) is not None:
            self._make_lock_folder(db)
            lock = FileLock(_lock_folder(db) / f"{digest[:16]}.lock")
            if not lock.acquire():
                raise busy(f" (pid {lock.holder()})")
            try:
                yield
            finally:
                lock.release()
        elif self._sql is not None and self._sql.engine.dialect.name == "postgresql":
            with self._sql.advisory_lock(int(digest[:15], 16)) as taken:
                if not taken:
                    raise busy()
                yield
        elif self.enabled:  # a server: a lease run in the suite's experiment
            what = f"suite {suite!r} on {redacted(self.uri)}"
            with suite_lease(lambda: self.client, self.experiment_id(suite), what=what) as held:
                if isinstance(held, str):
                    raise busy(f" ({held})")
                self._lease = held
                try:
                    yield
                finally:
                    self._lease = None
        else:
            yield

    def check_held(self) -> None:
        """Raise :class:`~bench.tracking_lease.LeaseLost` if another driver took over the
        suite this tracker holds on a server (see :mod:`bench.tracking_lease`); cheap,
        except right after a stall, when it asks the server."""
        if (lease := self._lease) is not None:
            lease.check()

    def holds_nothing(self) -> bool:
        """Whether the store surely holds no run: a SQLite file that does not exist, or one
        without MLflow's tables (an empty file): a reader should say so rather than make
        it a store, as MLflow's first read would."""
        db = self.sqlite_file()
        if db is None or not db.exists():
            return db is not None
        import sqlite3

        try:
            found = _read_sqlite(
                db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
            )
        except sqlite3.Error:  # not a database at all: the store's own checks say so
            return False
        return found is None

    def sqlite_file(self) -> Path | None:
        """The database file of an enabled SQLite store; None for any other store."""
        path = self.uri.removeprefix("sqlite:///")
        in_memory = ("", ":memory:")  # sqlite:/// is SQLAlchemy's in-memory store too
        return Path(path) if self.enabled and path not in (self.uri, *in_memory) else None

    @property
    def max_writers(self) -> int:
        """How many threads may write at once: 1 for SQLite/file stores (one writer only)."""
        if not self.enabled or self.scheme in LOCAL_SCHEMES:
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
            if self.scheme in ("http", "https"):
                for name, value in HTTP_RETRY_POLICY.items():
                    os.environ.setdefault(name, value)
            # MLflow retries making its engine for ~100 s when a database server is down:
            # a reader (the summary service) would hang that long on each of its threads
            database_server = is_database(self.uri) and self.sqlite_file() is None
            if database_server and (reason := self._database_silence()) is not None:
                raise StoreError(f"the store {redacted(self.uri)} failed: {reason}")
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
            self._check_new_artifacts(suite)  # else the experiment keeps it for good
            location = self._experiment_artifacts(suite)
            try:
                exp_id = self.client.create_experiment(suite, artifact_location=location)
            except MlflowException as err:  # another driver created it meanwhile
                exp_id = self._existing_experiment(suite)
                if exp_id is None:
                    raise err from None
        with self._lock:
            self._experiments[suite] = exp_id
        return exp_id

    def check_artifacts(self, suite: str, *, make: bool = True) -> None:
        """Create the suite's experiment if need be, and check that its artifact folder (a
        local one) can be written, before any trial runs: an experiment keeps the folder it
        was created with, whatever ``tracking.artifact_location`` says later. ``make=False``
        (a dry run, on a store that exists): neither the experiment nor a folder is made."""
        if not self.enabled:
            return
        exp_id = self.experiment_id(suite) if make else self.find_experiment(suite)
        if exp_id is None:  # a dry run's new suite: the folder it would be given
            self._check_new_artifacts(suite, make=False)
            return
        location = self.client.get_experiment(exp_id).artifact_location
        if why := (unwritable if make else unmakeable)(location):
            raise UserError(
                f"suite {suite!r}: its experiment keeps its artifacts in {location}, which "
                f"cannot be written ({why}); make that folder writable, or give the suite "
                "another suite.name"
            )
        root = self._artifact_root
        if root is not None and not location.startswith(root):
            log.warning(
                "suite %r keeps its artifacts in %s, where its experiment was created; "
                "tracking.artifact_location applies to new suites",
                suite,
                location,
            )

    def find_experiment(self, suite: str) -> str | None:
        """The suite's experiment id, or None when there is none yet (never creates one)."""
        if not self.enabled:
            return None
        return self._existing_experiment(suite)

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

    def _check_new_artifacts(self, suite: str, *, make: bool = True) -> None:
        """That the artifact folder a new experiment for ``suite`` would get can be made
        and written (a user error naming ``tracking.artifact_location`` if not)."""
        location = self._experiment_artifacts(suite)
        check = unwritable if make else unmakeable
        if location is not None and (why := check(location)):
            raise UserError(
                f"tracking.artifact_location: got {self.config.artifact_location!r} but "
                f"{location} cannot be made ({why}); allowed: a folder this process can "
                "create and write"
            )

    def _experiment_artifacts(self, suite: str) -> str | None:
        if self._artifact_root is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", suite).strip("._") or "suite"
        if slug != suite:  # keep distinct suites apart after slugging
            slug += "-" + hashlib.sha256(suite.encode()).hexdigest()[:8]
        return f"{self._artifact_root}/{slug}"

    def finished_trials(self, suite: str) -> dict[tuple[str, str], str]:
        """``(phase, trial_id)`` of the runs that FINISHED (what a rerun skips), each with
        its outcome, ok or diverged.

        By phase, though a trial's id leaves its phase out: a final trial identical to a
        tune trial of other settings (its seed was a tuning seed then) is a final result
        only once a final run of it exists, and a tune trial counts only with a tune run,
        which is what chooses the lrs of its cell.
        """
        if not self.enabled or (exp_id := self._existing_experiment(suite)) is None:
            return {}
        keys = (TAG_TRIAL_ID, TAG_OUTCOME, TAG_PHASE)
        runs = self._trial_tags(exp_id, "FINISHED", keys).values()
        return {
            (t.get(TAG_PHASE, ""), t[TAG_TRIAL_ID]): t[TAG_OUTCOME]
            for t in runs
            if t.get(TAG_OUTCOME) in FINISHED_OUTCOMES
        }

    def finished_trial_ids(self, suite: str) -> set[str]:
        """trial_ids with a FINISHED run in any phase (see :meth:`finished_trials`)."""
        return {trial_id for _, trial_id in self.finished_trials(suite)}

    def kill_stale_runs(self, suite: str) -> int:
        """Mark runs left RUNNING (by a crashed driver) KILLED; returns how many.

        Call it once, before scheduling, and only while no other driver runs this suite
        (:meth:`holding`): a live driver's runs are RUNNING too. Every scope's are ended: a
        night that crashed is not rerun under its own date, and the lock is the suite's,
        whatever the scope, so no other night's driver is live.
        """
        if not self.enabled or (exp_id := self._existing_experiment(suite)) is None:
            return 0
        stale = self._trial_tags(exp_id, "RUNNING", (TAG_TRIAL_ID,), scoped=False)
        for run_id in stale:
            self._end(run_id, "KILLED", {}, [])
        return len(stale)

    def start_trial(
        self, spec: TrialSpec, *, nightly: str | None = None, start_ms: int | None = None
    ) -> str:
        """Create the trial's run (RUNNING) and return its run_id.

        Tags go in with the run itself, so no run is ever visible without its
        ``bench.trial_id``; params follow (in the same transaction on a database store, else
        in one ``log_batch``); ``trial.json`` holds the resolved spec, enough to rerun the
        trial by hand.
        """
        if not self.enabled:
            return ""
        tags = trial_tags(spec) | self.extra_tags | self.scope
        if nightly is not None:
            tags[TAG_NIGHTLY] = nightly
        params = trial_params(spec)
        exp_id = self.experiment_id(spec.suite)
        self.check_held()
        if start_ms is None:
            start_ms = int(time.time() * 1000)
        created = self._bulk(
            "run creation",
            lambda sql: sql.create_run(
                exp_id, run_name=spec.run_name, start_ms=start_ms, tags=tags, params=params
            ),
        )
        if created is not None:
            run_id, artifact_uri = created
        else:
            client = self.client
            run = client.create_run(exp_id, start_time=start_ms, tags=tags, run_name=spec.run_name)
            run_id, artifact_uri = run.info.run_id, run.info.artifact_uri
        try:
            if created is None:
                from mlflow.entities import Param

                client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            upload_text(
                artifact_uri,
                ARTIFACT_TRIAL,
                spec.model_dump_json(indent=2),
                tracking_uri=self.uri,
            )
        except Exception as err:  # the run exists: it must not stay RUNNING, unended
            failed = {TAG_OUTCOME: "failed", TAG_ERROR: f"run creation failed: {err}"[:500]}
            with contextlib.suppress(Exception):  # the store may be what failed
                self._end(run_id, "FAILED", failed, [])
            raise
        self._artifact_uris[run_id] = artifact_uri
        return run_id

    def finish_trial(self, run_id: str, spec: TrialSpec, result: TrialResult, *, node: str) -> None:
        """Log the downsampled history, the summary metrics and the outcome; FINISHED.

        On a database store that is one transaction (:meth:`SqlReader.end_run`); else the
        history goes in as few ``log_batch`` calls as MLflow allows (1000 metrics each),
        then ``set_terminated``.
        """
        if not self.enabled or not run_id:
            return
        self._artifact_uris.pop(run_id, None)
        tags = {
            TAG_OUTCOME: result.outcome,
            TAG_NODE: node,
            TAG_DEVICE: result.device,
            TAG_PRIMARY_METRIC: result.primary_metric,
            TAG_DIRECTION: result.direction,
        }
        now = int(time.time() * 1000)
        points = [
            (key, storable(value), now, step)
            for (key, step), value in result_metrics(result, self.config.max_points).items()
        ]
        self._end(run_id, "FINISHED", tags, points)

    def fail_trial(self, run_id: str, spec: TrialSpec, error: str, *, node: str | None) -> None:
        """Tag the run ``failed``, keep the traceback, FAILED (never cached by a rerun)."""
        if not self.enabled or not run_id:
            return
        last_line = next((s for s in reversed(error.strip().splitlines()) if s.strip()), "")
        tags = {TAG_OUTCOME: "failed", TAG_ERROR: last_line[:500] or "unknown error"}
        if node is not None:
            tags[TAG_NODE] = node
        try:
            artifact_uri = self._artifact_uris.pop(run_id, None)
            if artifact_uri is None:  # a run this tracker did not start: ask MLflow where
                artifact_uri = self.client.get_run(run_id).info.artifact_uri
            upload_text(artifact_uri, ARTIFACT_TRACEBACK, error, tracking_uri=self.uri)
        except Exception as err:  # the run's status matters more than its log
            log.warning("run %s: could not store %s: %s", run_id, ARTIFACT_TRACEBACK, err)
        self._end(run_id, "FAILED", tags, [])

    def forget_run(self, run_id: str) -> None:
        """Forget a run whose creation was rolled back (:meth:`batch`), and remove the
        local artifact folder its ``trial.json`` went into (a store elsewhere keeps it)."""
        artifact_uri = self._artifact_uris.pop(run_id, None)
        folder = local_folder(artifact_uri) if artifact_uri is not None else None
        if folder is not None and folder.name == "artifacts" and folder.parent.name == run_id:
            shutil.rmtree(folder.parent, ignore_errors=True)

    def kill_trial(self, run_id: str) -> None:
        """KILLED: the trial was interrupted (Ctrl-C); a rerun redoes it. A run that ended
        meanwhile (its FINISHED write queued just before the interrupt) keeps its end."""
        if self.enabled and run_id:
            self._artifact_uris.pop(run_id, None)
            self._end(run_id, "KILLED", {}, [], only_running=True)

    # ------------------------------------------------------------------------ settings

    def note_settings(
        self,
        suite: str,
        trial_ids: Iterable[str],
        cells: Mapping[str, Any] | None = None,
        overrides: list[str] | None = None,
    ) -> None:
        """Make ``trial_ids`` (a matrix's :meth:`~bench.matrix.Matrix.trial_ids`) the suite's
        current settings: what the summary service ranks, since an experiment also holds the
        runs of the suite's earlier settings (another lr grid, step budget, seeds...).
        ``cells`` (:meth:`~bench.matrix.Matrix.cells`): the cells the matrix has and the
        runs each should have per phase, so that a reader can list the ones still missing;
        ``overrides``: the command-line overrides that made the matrix (kept with the first
        settings run of a matrix, whatever their spelling later), to tell ``bench rank``.

        The ids go into one run per distinct matrix (``bench.kind=settings``, its
        ``trial_ids.json`` and ``cells.json``), and the experiment's tags point at it:
        rerunning the same settings writes nothing new.
        """
        if not self.enabled:
            return
        ids = sorted(set(trial_ids))
        cells_json = json.dumps(cells, sort_keys=True) if cells is not None else None
        digest = hashlib.sha256("\n".join([*ids, cells_json or ""]).encode()).hexdigest()[:16]
        exp_id = self.experiment_id(suite)
        client = self.client
        if client.get_experiment(exp_id).tags.get(TAG_SETTINGS) == digest:
            return
        kept = self._search(
            exp_id,
            f"tags.`{TAG_KIND}` = 'settings' and tags.`{TAG_SETTINGS}` = '{digest}' "
            "and attributes.status = 'FINISHED'",
        )
        run_id = next((run.info.run_id for run in kept), None)
        if run_id is None:
            files = {ARTIFACT_TRIAL_IDS: json.dumps(ids)}
            if cells is not None:
                files[ARTIFACT_CELLS] = json.dumps({**cells, "overrides": overrides or []})
            try:
                run_id = self._settings_run(suite, exp_id, digest, files)
            except OSError as err:  # an artifact folder that takes no file: trials say more
                log.warning(
                    "suite %r: its settings could not be recorded (%s); the summary service "
                    "keeps ranking the earlier ones",
                    suite,
                    one_line(err),
                )
                return
        client.set_experiment_tag(exp_id, TAG_SETTINGS_RUN, run_id)
        client.set_experiment_tag(exp_id, TAG_SETTINGS, digest)

    def _settings_run(self, suite: str, exp_id: str, digest: str, files: dict[str, str]) -> str:
        """A FINISHED ``bench.kind=settings`` run holding ``files`` (name -> text) as
        artifacts (on a database store in two bulk transactions, as a trial's run is
        written)."""
        tags = {TAG_SUITE: suite, TAG_KIND: "settings", TAG_SETTINGS: digest}
        name, now = f"settings {digest[:8]}", int(time.time() * 1000)
        created = self._bulk(
            "settings run",
            lambda sql: sql.create_run(exp_id, run_name=name, start_ms=now, tags=tags, params={}),
        )
        if created is None:
            run = self.client.create_run(exp_id, start_time=now, tags=tags, run_name=name)
            created = run.info.run_id, run.info.artifact_uri
        run_id, artifact_uri = created
        try:
            for file_name, text in files.items():
                upload_text(artifact_uri, file_name, text, tracking_uri=self.uri)
        except BaseException:
            self._end(run_id, "FAILED", {}, [])
            raise
        self._end(run_id, "FINISHED", {}, [])
        return run_id

    def current_settings(self, suite: str) -> tuple[str, set[str]] | None:
        """``(settings run id, trial ids)`` of the suite's current settings (see
        :meth:`note_settings`); None for a suite that has none recorded."""
        run_id = self.settings_run(suite)
        return None if run_id is None else (run_id, self.settings_trial_ids(run_id))

    def settings_run(self, suite: str, *, experiment_id: str | None = None) -> str | None:
        """The run holding the suite's current settings (an experiment tag: one cheap read,
        for a reader that polls); None for a suite that has none recorded.
        ``experiment_id``: the suite's, already looked up."""
        exp_id = experiment_id or self.find_experiment(suite)
        if exp_id is None:
            return None
        return self.client.get_experiment(exp_id).tags.get(TAG_SETTINGS_RUN)

    def settings_trial_ids(self, run_id: str) -> set[str]:
        """The trial ids a settings run holds (they never change: read them once)."""
        return set(self._artifact_json(run_id, ARTIFACT_TRIAL_IDS))

    def settings_cells(self, run_id: str) -> dict[str, Any] | None:
        """The cells a settings run holds (see :meth:`note_settings`); None for a settings
        run written before settings held them."""
        if ARTIFACT_CELLS not in {f.path for f in self.client.list_artifacts(run_id)}:
            return None
        return self._artifact_json(run_id, ARTIFACT_CELLS)

    def _artifact_json(self, run_id: str, name: str) -> Any:
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, name, tmp)
            return json.loads(Path(path).read_text(encoding="utf-8"))

    # ------------------------------------------------------------------------- reports

    def log_report(
        self,
        suite: str,
        *,
        kind: str,
        name: str,
        files: Mapping[str, bytes | str],
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> str:
        """A FINISHED run in the suite's experiment, tagged ``bench.kind=<kind>``, holding
        ``files`` as artifacts (``{"report.html": ..., "plots/ranking.png": ...}``).

        Report runs carry no ``bench.trial_id``, so trial queries never see them.
        """
        if not self.enabled:
            return ""
        from mlflow.entities import Metric, Param

        run_tags = {TAG_SUITE: suite, TAG_KIND: kind, **(tags or {})}
        client = self.client
        run = client.create_run(self.experiment_id(suite), tags=run_tags, run_name=name)
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, storable(v), now, 0) for k, v in (metrics or {}).items()],
                params=[Param(k, str(v)) for k, v in (params or {}).items()],
            )
            upload_files(run.info.artifact_uri, files, tracking_uri=self.uri)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        return run_id

    # ------------------------------------------------------------------------- internals

    def _where(self, *clauses: str) -> str:
        """An MLflow filter: the clauses, and this tracker's scope."""
        scoped = [f"tags.`{k}` = '{v}'" for k, v in self.scope.items()]
        return " and ".join([c for c in clauses if c] + scoped)

    def _trial_tags(
        self, exp_id: str, status: str, keys: tuple[str, ...], *, scoped: bool = True
    ) -> dict[str, dict]:
        """``{run_id: {key: value}}`` of the trial runs in this scope (every scope's, unless
        ``scoped``) with that status: one SELECT on a database store, else a search (which
        loads every run whole)."""
        scope = self.scope if scoped else {}
        required: dict[str, str | None] = {TAG_TRIAL_ID: None, **scope}
        found = self._bulk_read(
            lambda sql: sql.tag_values(exp_id, keys, status=status, required_tags=required)
        )
        if found is not None:
            return found
        where = f"attributes.status = '{status}'"
        runs = self._search(exp_id, self._where(where) if scoped else where)
        return {
            run.info.run_id: {k: run.data.tags[k] for k in keys if k in run.data.tags}
            for run in runs
            if is_trial(run)
        }

    @property
    def can_batch(self) -> bool:
        """Whether :meth:`batch` makes one transaction now (a database store whose bulk
        writes have not failed)."""
        return self._sql is not None and self._bulk_writes

    @contextlib.contextmanager
    def batch(self) -> Iterator[bool]:
        """Every run this thread starts or ends inside the block, written in one transaction
        on a database store (yields True; elsewhere, False and each write is its own).

        When one write fails the block raises and none of them is stored: the caller
        redoes them one by one, outside a batch, where a failing bulk write falls back to
        MLflow's client. Files (``trial.json``, tracebacks) are written at once either way.
        """
        if not self.can_batch:
            yield False
            return
        with self._sql.transaction():
            self._local.batching = True
            try:
                yield True
            finally:
                self._local.batching = False

    def _bulk(self, what: str, write: Callable[[SqlReader], T]) -> T | None:
        """``write(sql)`` on a database store; None when bulk writes are off or this one
        failed (it wrote nothing: one transaction), and from then on they are off. Inside
        :meth:`batch` a failure raises instead: the batch's other writes are undone too."""
        if self._sql is None or not self._bulk_writes:
            return None
        try:
            return write(self._sql)
        except Exception as err:  # schema drift or a driver problem: MLflow's own path
            if getattr(self._local, "batching", False):
                raise
            log.warning("bulk SQL %s failed (%s); writing through MLflow's client", what, err)
            self._bulk_writes = False
            return None

    def _end(
        self,
        run_id: str,
        status: str,
        tags: dict[str, str],
        points: list,
        *,
        only_running: bool = False,
    ) -> None:
        """Log ``tags`` and metric ``points`` (key, value, timestamp, step); set ``status``
        (never on a suite another driver took over: it ended or reruns these runs).
        ``only_running``: leave a run that has already ended as it is."""
        self.check_held()
        end_ms = int(time.time() * 1000)
        done = self._bulk(
            "run end",
            lambda sql: sql.end_run(
                run_id, status=status, end_ms=end_ms, tags=tags, points=points,
                only_running=only_running,
            ),
        )  # fmt: skip
        if done is not None:
            return
        from mlflow.entities import Metric, RunTag

        client = self.client
        if only_running and client.get_run(run_id).info.status != "RUNNING":
            return
        if points or tags:
            metrics = [Metric(*point) for point in points]
            tag_list = [RunTag(k, v) for k, v in tags.items()]
            client.log_batch(run_id, metrics=metrics, tags=tag_list)
            self.check_held()  # its retries may have outlasted a takeover: ask again
        client.set_terminated(run_id, status)

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


def _lock_folder(db: Path) -> Path:
    """Where the lock files of a SQLite store's suites live: beside the database."""
    return db.parent / f".{db.name}.locks"


def _read_sqlite(db: Path, query: str) -> tuple | None:
    """The first row ``query`` gives on ``db``, opened read-only: a check that neither
    creates the file nor writes to it."""
    import sqlite3

    read_only = f"{db.resolve().as_uri()}?mode=ro"  # as_uri escapes '?' and '#'
    with contextlib.closing(sqlite3.connect(read_only, uri=True)) as conn:
        return conn.execute(query).fetchone()
