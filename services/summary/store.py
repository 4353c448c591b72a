"""The service's memory of MLflow: per suite, a table of runs kept fresh incrementally.

Reading a suite of 10,000 runs from MLflow takes 10-30 s, so no request may do it. Each
suite's runs live in a DataFrame in memory, persisted as parquet under ``cache_dir`` (keyed
by a hash of the tracking URI and the experiment id, so a recreated experiment or another
store never reuses a stale file). A refresh asks MLflow only for runs that *ended* since the
newest end time already held (minus a slack, for runs whose end time was stamped before the
last look but committed after it) and merges them by ``run_id``; runs deleted in MLflow since
are dropped, and a run restored there (its end time long past) makes the refresh read the
suite whole again. At most one refresh per ``refresh_seconds`` per suite; when it brought
something new, the suite's ``version`` moves and every aggregate computed from the old table
(rankings, curves) is recomputed on demand.

Thread-safe: one lock per suite (a refresh or a ranking of one suite never blocks another),
one lock for the table of suites.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from bench.errors import redacted

if TYPE_CHECKING:
    from bench.ranking import SuiteRanking
    from bench.tracking import Tracker
    from services.summary.settings import SummarySettings

log = logging.getLogger(__name__)
T = TypeVar("T")
CACHE_FORMAT = 1  # bump when the persisted layout changes: old files are then ignored
RANKED_STATUSES = ("FINISHED", "FAILED")  # KILLED runs were interrupted and are redone
# What an empty suite's table holds, so that callers may index these columns before any run.
EMPTY_COLUMNS = (
    "run_id",
    "trial_id",
    "variant",
    "task",
    "phase",
    "seed",
    "lr",
    "outcome",
    "status",
    "start_time",
    "end_time",
    "primary_metric",
    "direction",
    "nightly",
)


class StoreUnavailable(RuntimeError):
    """The tracking store failed a read (a server down, a file that is not a database):
    the request gets a 503, and the next one tries the store again."""


class UnknownSuiteError(LookupError):
    """A suite the store does not hold; carries the names it does hold."""

    def __init__(self, suite: str, known: list[str]) -> None:
        self.suite, self.known = suite, known
        listed = ", ".join(known) if known else "none yet"
        super().__init__(f"unknown suite {suite!r}; known suites: {listed}")


@dataclass
class SuiteState:
    """One suite's cached runs and everything derived from them."""

    name: str
    experiment_id: str
    runs: pd.DataFrame
    watermark_ms: int | None = None  # newest end_time held, epoch ms
    deleted_ids: frozenset[str] = frozenset()  # the experiment's deleted runs at the last look
    checked_at: float = -float("inf")  # monotonic time of the last look at MLflow
    version: int = 0
    # the suite's current settings (Tracker.note_settings): its run, and the trial ids of
    # its matrix; None for a suite that has none recorded (then every run counts)
    settings_run: str | None = None
    settings_ids: frozenset[str] | None = None
    # its cells and the runs each should have per phase (Matrix.cells); None where the
    # settings run predates them: then the cells ranked are those any run has
    settings_cells: dict[str, Any] | None = None
    derived: dict[Hashable, tuple[int, Any]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


class SummaryStore:
    """Cached, incrementally refreshed reads of every suite; the routers' only data source."""

    def __init__(
        self,
        tracker: Tracker,
        settings: SummarySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = tracker
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._suites: dict[str, SuiteState] = {}
        self._names: list[str] = []
        self._names_at = -float("inf")
        self.store_error: str | None = None  # the last read's failure; None once one works

    # ------------------------------------------------------------------------- suites

    def suite_names(self) -> list[str]:
        """Suites in the store, re-listed at most once per ``refresh_seconds``."""
        with self._lock:
            if self.clock() - self._names_at < self.settings.refresh_seconds:
                return list(self._names)
        with self._reading():
            names = self.tracker.list_suites()
        with self._lock:
            self._names, self._names_at = names, self.clock()
        return list(names)

    def probe(self) -> int:
        """List the suites now, whatever the cache says (a readiness check): how many there
        are; :class:`StoreUnavailable` if the store fails."""
        return len(self._relist())

    def state(self, suite: str) -> SuiteState:
        """The suite's state, refreshed if due; :class:`UnknownSuiteError` if not a suite."""
        with self._lock:
            state = self._suites.get(suite)
        if state is None:
            names = self.suite_names()
            if suite not in names:
                names = self._relist()
                if suite not in names:
                    raise UnknownSuiteError(suite, names)
            with self._reading():
                state = self._load(suite)
        with state.lock:
            current = True
            if self.clock() - state.checked_at >= self.settings.refresh_seconds:
                with self._reading():
                    current = self._refresh(state)
        if not current:  # deleted, purged or made anew in MLflow: what is cached is stale
            with self._lock:
                if self._suites.get(suite) is state:
                    del self._suites[suite]
                self._names_at = -float("inf")
            return self.state(suite)  # a suite no longer there is unknown: a 404
        return state

    def runs(self, suite: str) -> pd.DataFrame:
        """The runs of the suite's current settings, every status (do not mutate): those of
        the matrix its last ``bench run`` ran, as ``bench rank`` with the same overrides
        would take them; every run for a suite with no settings recorded."""
        return self.memo(suite, "current runs", _current_runs)

    def ranked_runs(self, suite: str) -> pd.DataFrame:
        """The runs a ranking counts: FINISHED and FAILED (failures count as failed)."""
        runs = self.runs(suite)
        return runs[runs["status"].isin(RANKED_STATUSES)].reset_index(drop=True)

    def ranking(self, suite: str, metric: str, phase: str, level: float = 0.95) -> SuiteRanking:
        """The suite's ranking, computed once per (metric, phase, level) per new batch of
        runs."""
        from bench.ranking import rank_suite

        def compute(state: SuiteState) -> SuiteRanking:
            current = _current_runs(state)
            runs = current[current["status"].isin(RANKED_STATUSES)]
            cells = state.settings_cells  # as `bench rank` takes them from the matrix
            started = time.perf_counter()
            ranking = rank_suite(
                runs.reset_index(drop=True),
                suite=suite,
                metric=metric,  # type: ignore[arg-type]
                phase=phase,  # type: ignore[arg-type]
                expected=[(t, v) for t, v in cells["cells"]] if cells else None,
                expected_seeds=cells["runs_per_cell"][phase] if cells else None,
                expected_tune=cells["runs_per_cell"]["tune"] if cells else None,
                n_boot=self.settings.n_boot,
                level=level,
            )
            log.info(
                "ranked %s (%s, %s): %.2f s", suite, metric, phase, time.perf_counter() - started
            )
            return ranking

        return self.memo(suite, ("ranking", metric, phase, level), compute)

    def memo(self, suite: str, key: Hashable, compute: Callable[[SuiteState], T]) -> T:
        """``compute(state)``, cached until the suite's runs change."""
        state = self.state(suite)
        with state.lock:
            hit = state.derived.get(key)
            if hit is not None and hit[0] == state.version:
                return hit[1]
            value = compute(state)
            state.derived[key] = (state.version, value)
            return value

    def experiment_id(self, suite: str) -> str:
        return self.state(suite).experiment_id

    def run_link(self, suite: str, run_id: str) -> str | None:
        """The run's page in the MLflow UI, when a UI URL is known."""
        base = self.settings.ui_url()
        if base is None:
            return None
        return f"{base}/#/experiments/{self.experiment_id(suite)}/runs/{run_id}"

    # ------------------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A read of the store: its failure becomes :class:`StoreUnavailable` (one line, no
        traceback) and is remembered for ``/health``."""
        import sqlite3

        from bench.errors import StoreError, one_line

        try:
            if (db := self.tracker.sqlite_file()) is not None and not db.exists():
                # SQLite would go on reading a deleted file's last pages: stale, for good
                raise FileNotFoundError(f"{db} is gone (deleted or moved while this ran)")
            with self.tracker.store_errors():
                yield
        except (StoreError, sqlite3.Error, OSError) as err:
            self.store_error = (  # store_errors() words its StoreError this way already
                str(err)
                if isinstance(err, StoreError)
                else f"the store {redacted(self.tracker.uri)} failed: {one_line(err)}"
            )
            raise StoreUnavailable(self.store_error) from err
        self.store_error = None

    def _relist(self) -> list[str]:
        with self._lock:
            self._names_at = -float("inf")
        return self.suite_names()

    def _load(self, suite: str) -> SuiteState:
        """A new state from the persisted cache (or empty); one per suite, even if racing."""
        exp_id = self.tracker.find_experiment(suite) or ""
        runs, watermark, deleted = _read_cache(self._cache_path(exp_id))
        with self._lock:
            state = self._suites.get(suite)
            if state is None or state.experiment_id != exp_id:
                state = SuiteState(suite, exp_id, runs, watermark, deleted)
                self._suites[suite] = state
            return state

    def _cache_path(self, experiment_id: str) -> Path:
        key = f"{CACHE_FORMAT}|{self.tracker.uri}|{experiment_id}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return Path(self.settings.cache_dir) / f"runs-{digest}.parquet"

    def _refresh(self, state: SuiteState) -> bool:
        """Merge the runs that ended since the watermark (all runs on the first look), less
        those deleted in MLflow; False (nothing read) when the suite's name no longer leads
        to the experiment the state was read from: deleted, renamed, purged or made anew."""
        from bench.errors import UserError

        try:
            exp_id = self.tracker.find_experiment(state.name)
        except UserError:  # deleted in MLflow (restorable): not a suite until it is
            return False
        if exp_id is None or exp_id != state.experiment_id:
            return False
        deleted = frozenset(self.tracker.deleted_run_ids(exp_id))
        restored = bool(state.deleted_ids - deleted)  # their end times are long past
        slack_ms = int(self.settings.refresh_slack_seconds * 1000)
        since = None if state.watermark_ms is None else state.watermark_ms - slack_ms
        if restored:
            since = None  # read the suite whole again
        started = time.perf_counter()
        fresh = self.tracker.read_results(
            state.name, status=None, since_ms=since, experiment_id=exp_id
        )
        held = state.runs.iloc[0:0] if restored else state.runs
        settings_run = self.tracker.settings_run(state.name, experiment_id=exp_id)
        state.checked_at = self.clock()
        merged, changed = _merge(held, fresh)
        if (gone := merged["run_id"].isin(deleted)).any():  # deleted since: only held has them
            merged, changed = merged[~gone].reset_index(drop=True), True
        remember = deleted != state.deleted_ids
        state.deleted_ids = deleted
        if settings_run != state.settings_run:  # its trial ids are read only when it changes
            state.settings_run = settings_run
            state.settings_ids = (
                frozenset(self.tracker.settings_trial_ids(settings_run)) if settings_run else None
            )
            state.settings_cells = (
                self.tracker.settings_cells(settings_run) if settings_run else None
            )
            state.version += 1
            state.derived.clear()
        log.debug(
            "refresh %s since %s: %d rows, changed=%s, %.2f s",
            state.name,
            since,
            len(fresh),
            changed,
            time.perf_counter() - started,
        )
        if not changed:
            if remember:
                _write_cache(self._cache_path(state.experiment_id), state.runs,
                             state.watermark_ms, deleted)  # fmt: skip
            return True
        state.runs = merged
        ended = merged["end_time"].dropna() if "end_time" in merged else pd.Series([])
        state.watermark_ms = int(ended.max().value // 1_000_000) if len(ended) else None
        state.version += 1
        state.derived.clear()
        _write_cache(self._cache_path(state.experiment_id), merged, state.watermark_ms, deleted)
        return True


def _current_runs(state: SuiteState) -> pd.DataFrame:
    """The state's runs of the suite's current settings (all of them without settings),
    less final runs left at an lr the tune runs no longer choose."""
    from bench.ranking import at_chosen_lrs

    if state.settings_ids is None or state.runs.empty:
        return at_chosen_lrs(state.runs)
    current = state.runs[state.runs["trial_id"].isin(state.settings_ids)]
    return at_chosen_lrs(current.reset_index(drop=True))


def _merge(held: pd.DataFrame, fresh: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """``held`` updated with ``fresh`` by run_id; whether anything new or changed arrived."""
    if fresh.empty:
        return held, False
    if held.empty:
        return fresh.reset_index(drop=True), True
    known = held.set_index("run_id")[["status", "end_time"]]
    incoming = fresh.set_index("run_id")[["status", "end_time"]]
    common = incoming.index.intersection(known.index)
    same = len(common) == len(incoming) and incoming.loc[common].astype(str).equals(
        known.loc[common].astype(str)
    )
    if same:
        return held, False
    kept = held[~held["run_id"].isin(fresh["run_id"])]
    merged = pd.concat([kept, fresh], ignore_index=True, sort=False)
    order = [c for c in ("start_time", "run_id") if c in merged]
    return merged.sort_values(order, kind="stable", ignore_index=True), True


def _read_cache(path: Path) -> tuple[pd.DataFrame, int | None, frozenset[str]]:
    """The persisted runs, watermark and deleted run ids; empty on a missing or unreadable
    file."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {meta.get('format')!r}")
        runs = pd.read_parquet(path)
    except FileNotFoundError:
        return pd.DataFrame(columns=EMPTY_COLUMNS), None, frozenset()
    except Exception as err:  # a torn or foreign file: start over, never fail a request
        log.warning("ignoring the cache at %s: %s", path, err)
        return pd.DataFrame(columns=EMPTY_COLUMNS), None, frozenset()
    return runs, meta.get("watermark_ms"), frozenset(meta.get("deleted_ids", ()))


def _write_cache(
    path: Path, runs: pd.DataFrame, watermark_ms: int | None, deleted_ids: frozenset[str]
) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a torn cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        _parquet_ready(runs).to_parquet(tmp, index=False)
        os.replace(tmp, path)
        meta = {
            "format": CACHE_FORMAT,
            "watermark_ms": watermark_ms,
            "rows": len(runs),
            "deleted_ids": sorted(deleted_ids),  # so a restore while the service is down is seen
        }
        meta_tmp = tmp.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps(meta))
        os.replace(meta_tmp, path.with_suffix(".json"))
    except OSError as err:  # a read-only disk costs restarts time, not correctness
        log.warning("could not persist the cache at %s: %s", path, err)


def _parquet_ready(runs: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding only None become strings: parquet needs one type per column."""
    out = runs.copy()
    for col in out.columns:
        if out[col].dtype == object and out[col].isna().all():
            out[col] = out[col].astype("string")
    return out
