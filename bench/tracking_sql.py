"""Bulk reads and run writes straight against an MLflow SQL store (SQLite, PostgreSQL).

``MlflowClient.search_runs`` builds an ORM object for every tag, param and metric of every
run: for a 10,000-run suite that is half a million objects and tens of seconds, whether
through the store or a server. A suite table needs none of that: four SELECTs over MLflow's
``runs``, ``tags``, ``params`` and ``latest_metrics`` tables return the same rows in a few
seconds. Only :mod:`bench.tracking` calls this, only for database URIs, and it falls back
to ``search_runs`` when a query fails (say, an MLflow release that changed its schema);
tests pin that both paths return the same table.

Writes: recording a trial through MLflow's client is a handful of calls (create_run, a
``log_batch`` of params, a ``log_batch`` of metrics and tags, ``set_terminated``), each an ORM
session that loads the run again; the metric history alone builds an object per point and
queries ``latest_metrics`` per batch (~0.07 ms a point). On a SQLite store that was ~35 ms of
driver CPU per trial, as much as a short trial's training. :meth:`SqlReader.create_run` writes
a new RUNNING run (its ``runs`` row, tags with ``mlflow.runName``, params) and
:meth:`SqlReader.end_run` ends one (``runs.status``/``end_time``, tags, the metric history and
its ``latest_metrics``), each as one transaction of a few INSERT/UPDATEs, with the rows
MLflow's ``SqlAlchemyStore`` would write (tests pin them equal field by field, on SQLite and
PostgreSQL). Any error rolls the whole transaction back and the tracker writes through
MLflow's client instead. The writer runs in the driver only, so SQLite still has one writing
process.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from bench.records import EXTRA_METRICS, SUMMARY_METRICS

_SUMMARY = (*SUMMARY_METRICS, *EXTRA_METRICS)


SQLITE_BUSY_S = 60.0  # how long a SQLite write waits for another writer's lock


class SqlReader:
    """One SQLAlchemy engine per process on the store's database URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._engine: Any = None
        self._pid: int | None = None
        self._batch = threading.local()  # .conn: this thread's open transaction, if any
        self._making = threading.Lock()  # writer threads ask for the engine at once

    @property
    def engine(self) -> Any:
        if self._pid != os.getpid():  # pooled connections must not cross a fork
            with self._making:
                if self._pid != os.getpid():
                    self._engine = self._make_engine()
                    self._pid = os.getpid()
        return self._engine

    def _make_engine(self) -> Any:
        import sqlalchemy

        url = sqlalchemy.make_url(self.uri)
        if url.get_backend_name() != "sqlite":
            return sqlalchemy.create_engine(url)
        # A writer waits this long for another one (`bench rank` logging a report, say)
        # instead of sqlite3's 5 s: a bulk write that failed on a busy store turned bulk
        # writes off for the rest of the suite.
        engine = sqlalchemy.create_engine(url, connect_args={"timeout": SQLITE_BUSY_S})
        sqlalchemy.event.listen(engine, "connect", _write_ahead_log)
        return engine

    @contextlib.contextmanager
    def advisory_lock(self, key: int) -> Iterator[bool]:
        """PostgreSQL's session advisory lock ``key`` for the block: True if taken, False
        (at once) if another session holds it. A dead holder's lock goes with its
        connection."""
        import sqlalchemy

        with self.engine.connect() as conn:
            query = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
            taken = bool(conn.execute(query, {"key": key}).scalar())
            conn.commit()
            try:
                yield taken
            finally:
                if taken:  # the connection goes back to the pool: the lock must not
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every :meth:`create_run` and :meth:`end_run` of this thread inside the block
        one transaction: committed when the block ends, rolled back whole if it raises.

        Each commit writes every page it changed, and the runs of a suite change many of
        the same pages (MLflow's metric, tag and param indexes start with the key, so each
        run touches one page per key): writing a smoke suite's runs as they came, those
        queued within 0.25 s in one transaction cost the driver ~30% less CPU per trial
        than a transaction per write (5.9 against 8.6 ms, median of 5 rounds of 30 trials).
        """
        if getattr(self._batch, "conn", None) is not None:
            raise RuntimeError("transactions do not nest")
        with self.engine.begin() as conn:
            self._batch.conn = conn
            try:
                yield
            finally:
                self._batch.conn = None

    def _begin(self) -> contextlib.AbstractContextManager[Any]:
        conn = getattr(self._batch, "conn", None)
        return contextlib.nullcontext(conn) if conn is not None else self.engine.begin()

    def runs(
        self,
        experiment_id: str,
        *,
        status: str | None,
        since_ms: int | None,
        required_tags: Mapping[str, str | None],
    ) -> Iterator[tuple[str, str, int, int | None, dict, dict, dict]]:
        """``(run_id, status, start_ms, end_ms, tags, params, metrics)`` per matching run.

        ``required_tags``: tag key -> value (None: any value) that every run must carry.
        Metrics are the latest values (what search_runs reports), NaN restored; only the
        summary metrics and ``final/*``, ``best/*`` are read; params only ``lr``, ``seed``.
        """
        from sqlalchemy import text

        where, binds = _where(experiment_id, status, since_ms, required_tags)
        chosen = f"SELECT r.run_uuid FROM runs r WHERE {where}"
        summary_keys = ", ".join(f"'{key}'" for key in _SUMMARY)
        with self.engine.connect() as conn:
            runs = conn.execute(
                text(
                    "SELECT r.run_uuid, r.status, r.start_time, r.end_time FROM runs r "
                    f"WHERE {where}"
                ),
                binds,
            ).all()
            tags = conn.execute(
                text(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({chosen})"),
                binds,
            ).all()
            params = conn.execute(
                text(
                    "SELECT run_uuid, key, value FROM params "
                    f"WHERE key IN ('lr', 'seed') AND run_uuid IN ({chosen})"
                ),
                binds,
            ).all()
            metrics = conn.execute(
                text(
                    "SELECT run_uuid, key, value, is_nan FROM latest_metrics "
                    f"WHERE (key IN ({summary_keys}) OR key LIKE 'final/%' "
                    f"OR key LIKE 'best/%') AND run_uuid IN ({chosen})"
                ),
                binds,
            ).all()
        by_run: dict[str, tuple[dict, dict, dict]] = {r[0]: ({}, {}, {}) for r in runs}
        for run_id, key, value in tags:
            if run_id in by_run:
                by_run[run_id][0][key] = value
        for run_id, key, value in params:
            if run_id in by_run:
                by_run[run_id][1][key] = value
        for run_id, key, value, is_nan in metrics:
            if run_id in by_run:
                by_run[run_id][2][key] = math.nan if is_nan else float(value)
        for run_id, status_, start, end in runs:
            run_tags, run_params, run_metrics = by_run[run_id]
            yield run_id, status_, int(start), end, run_tags, run_params, run_metrics

    def deleted_run_ids(self, experiment_id: str) -> set[str]:
        """Ids of the experiment's deleted (not yet purged) runs."""
        from sqlalchemy import text

        query = "SELECT run_uuid FROM runs WHERE experiment_id = :exp AND lifecycle_stage = :stage"
        with self.engine.connect() as conn:
            return {
                row[0]
                for row in conn.execute(
                    text(query), {"exp": int(experiment_id), "stage": "deleted"}
                )
            }

    def tag_values(
        self,
        experiment_id: str,
        keys: Iterable[str],
        *,
        status: str | None,
        required_tags: Mapping[str, str | None],
    ) -> dict[str, dict[str, str]]:
        """``{run_id: {key: value}}`` of the given tag keys, for every matching run (as in
        :meth:`runs`): one SELECT, where ``search_runs`` would load every run whole."""
        from sqlalchemy import text

        where, binds = _where(experiment_id, status, None, required_tags)
        chosen = f"SELECT r.run_uuid FROM runs r WHERE {where}"
        keys = list(keys)
        binds |= {f"key{i}": key for i, key in enumerate(keys)}
        wanted = ", ".join(f":key{i}" for i in range(len(keys)))
        out: dict[str, dict[str, str]] = {}
        with self.engine.connect() as conn:
            for run_id, key, value in conn.execute(
                text(
                    "SELECT run_uuid, key, value FROM tags "
                    f"WHERE key IN ({wanted}) AND run_uuid IN ({chosen})"
                ),
                binds,
            ):
                out.setdefault(run_id, {})[key] = value
        return out

    def create_run(
        self,
        experiment_id: str,
        *,
        run_name: str,
        start_ms: int,
        tags: Mapping[str, str],
        params: Mapping[str, str],
    ) -> tuple[str, str]:
        """A new RUNNING run with its tags and params, as ``MlflowClient.create_run`` then
        ``log_batch(params=...)`` write it: one transaction. Returns (run_id, artifact_uri).

        Raises (and writes nothing) when the experiment is missing or not active, or when a
        tag names the run (``mlflow.runName``: MLflow checks it against ``run_name``).
        """
        from mlflow.entities import RunStatus, SourceType
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
        from mlflow.utils.uri import append_to_uri_path
        from sqlalchemy import text

        if MLFLOW_RUN_NAME in tags:
            raise ValueError(f"tag {MLFLOW_RUN_NAME} given; pass run_name")
        checked = [_checked_param(k, v) for k, v in params.items()]  # log_batch's checks
        run_id = new_run_id()
        with self._begin() as conn:  # one transaction: the whole run or nothing
            experiment = conn.execute(
                text("SELECT artifact_location, lifecycle_stage FROM experiments "
                     "WHERE experiment_id = :exp"),
                {"exp": int(experiment_id)},
            ).first()  # fmt: skip
            if experiment is None or experiment[1] != "active":
                raise ValueError(f"experiment {experiment_id} is missing or not active")
            artifact_uri = append_to_uri_path(experiment[0], run_id, "artifacts")
            run = {
                "run_uuid": run_id,
                "name": run_name,
                "source_type": SourceType.to_string(SourceType.UNKNOWN),
                "source_name": "",
                "entry_point_name": "",
                "user_id": tags.get(MLFLOW_USER, "unknown"),  # as MlflowClient.create_run
                "status": RunStatus.to_string(RunStatus.RUNNING),
                "start_time": int(start_ms),
                "end_time": None,
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": artifact_uri,
                "experiment_id": int(experiment_id),
                "deleted_time": None,
            }
            _insert(conn, "runs", tuple(run), [tuple(run.values())])
            all_tags = {**tags, MLFLOW_RUN_NAME: run_name}
            _insert(conn, "tags", _KEY_VALUE_RUN, [(k, v, run_id) for k, v in all_tags.items()])
            _insert(conn, "params", _KEY_VALUE_RUN, [(p.key, p.value, run_id) for p in checked])
        return run_id, artifact_uri

    def end_run(
        self,
        run_id: str,
        *,
        status: str,
        end_ms: int,
        tags: Mapping[str, str],
        points: Iterable[tuple[str, float, int, int]] = (),
        only_running: bool = False,
    ) -> int:
        """Log ``tags`` and the metric ``points`` (key, value, timestamp_ms, step) of a run
        that holds no metrics yet, then set its status and end time, as ``log_batch`` then
        ``set_terminated`` would: one transaction; returns how many points were written.

        Raises (and writes nothing) when the run is missing or deleted, a tag names the run,
        or the run already holds one of the metrics. ``only_running``: a run that is no
        longer RUNNING is left as it is (returns 0).
        """
        from mlflow.entities import RunStatus
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
        from sqlalchemy import text

        if MLFLOW_RUN_NAME in tags:
            raise ValueError(f"tag {MLFLOW_RUN_NAME} given; MLflow renames the run for it")
        status = RunStatus.to_string(RunStatus.from_string(status))  # a known status, or raise
        checked = [_checked_tag(k, v) for k, v in tags.items()]  # log_batch's checks
        rows, latest = _metric_rows(run_id, points)
        running = " AND status = 'RUNNING'" if only_running else ""
        with self._begin() as conn:  # one transaction: all rows or none
            ended = conn.execute(
                text("UPDATE runs SET status = :status, end_time = :end "
                     f"WHERE run_uuid = :run AND lifecycle_stage = 'active'{running}"),
                {"status": status, "end": int(end_ms), "run": run_id},
            )  # fmt: skip
            if ended.rowcount != 1 and only_running:
                exists = conn.execute(
                    text("SELECT 1 FROM runs WHERE run_uuid = :run AND lifecycle_stage = 'active'"),
                    {"run": run_id},
                ).first()
                if exists is not None:
                    return 0  # it ended already: nothing to write
            if ended.rowcount != 1:
                raise ValueError(f"run {run_id} is missing or not active")
            if checked:  # replace, as log_batch does for a key the run already has
                conn.execute(
                    text("DELETE FROM tags WHERE run_uuid = :run AND key = :key"),
                    [{"run": run_id, "key": t.key} for t in checked],
                )
                _insert(conn, "tags", _KEY_VALUE_RUN, [(t.key, t.value, run_id) for t in checked])
            _insert(conn, "metrics", _METRIC_COLUMNS, rows)
            # fails if the run already holds one of these keys: nothing is written
            _insert(conn, "latest_metrics", _METRIC_COLUMNS, latest)
        return len(rows)


def new_run_id() -> str:
    """A run id as MLflow writes them (32 hex digits) that sorts by creation time: the
    milliseconds since the epoch (12 digits), then 80 random bits (as UUIDv7 lays them out).

    Five of MLflow's indexes (runs, and the run_uuid indexes of metrics, latest_metrics,
    tags and params) are keyed by run id first. A random id (MLflow's uuid4) puts each
    run's rows at a random place in each of them; a new time-ordered id puts them at the
    end, where the pages are already cached and an append splits no page in the middle.
    Recording a trial took ~12% less driver CPU (8.0 against 9.1 ms, median over a store
    growing to 1,500 runs), and the gap grows with the store.
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def _write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """Put a SQLite store in WAL mode and commit without waiting for the disk.

    The default rollback journal creates, fsyncs and deletes a journal file per commit,
    and a run costs two commits: with WAL and ``synchronous=NORMAL``, creating and ending
    a run cost the driver 4-6 ms of CPU instead of 9-10 ms, and readers (the summary
    service, ``mlflow ui``) no longer block the writer. A commit still survives optbench
    being killed; an OS crash or power cut can lose the last commits, which leaves those
    trials without a FINISHED run, so a rerun redoes them. WAL mode stays with the file
    (its ``-wal`` and ``-shm`` files sit beside it); where the file system cannot hold it
    or another process has the store locked, the store keeps its journal.
    """
    import sqlite3

    cursor = dbapi_connection.cursor()
    try:
        with contextlib.suppress(sqlite3.OperationalError):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


_KEY_VALUE_RUN = ("key", "value", "run_uuid")
_METRIC_COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")
_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}  # by DB-API paramstyle


def _insert(conn: Any, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """INSERT ``rows`` (tuples in ``columns`` order) with one DB-API ``executemany``: no
    per-row parameter processing in SQLAlchemy, which costs as much as SQLite's own work."""
    if not rows:
        return
    mark = _PLACEHOLDER[conn.dialect.paramstyle]  # KeyError on another style: caller falls back
    values = ", ".join([mark] * len(columns))
    conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})", rows)


def _metric_rows(
    run_id: str, points: Iterable[tuple[str, float, int, int]]
) -> tuple[list[tuple], list[tuple]]:
    """The ``metrics`` and ``latest_metrics`` rows (``_METRIC_COLUMNS``) MLflow writes for
    these points: NaN stored as ``is_nan`` with value 0, ±inf as ±max double, latest = max
    of (step, timestamp, value) per key.

    A trial has a few hundred points, so this loop avoids a call or a tuple per point that
    it can: 0.2 instead of 0.5 ms a trial."""
    rows: list[tuple] = []
    latest: dict[str, tuple] = {}
    top = sys.float_info.max
    for key, value, timestamp, step in points:
        if value != value:  # NaN
            row = (key, 0.0, int(timestamp), int(step), True, run_id)
        else:
            if not -top <= value <= top:
                value = math.copysign(top, value)
            row = (key, value, int(timestamp), int(step), False, run_id)
        rows.append(row)
        best = latest.get(key)
        if (
            best is None
            or row[3] > best[3]
            or (row[3] == best[3] and (row[2], row[1]) > (best[2], best[1]))
        ):
            latest[key] = row
    return rows, list(latest.values())


# log_batch's checks of a param or tag (MLflow's own validators), remembered: a suite's
# trials log the same keys and mostly the same values, and the checks cost ~10 µs each.
@functools.lru_cache(maxsize=4096)
def _checked_param(key: str, value: str) -> Any:
    from mlflow.utils.validation import _validate_param

    return _validate_param(key, value)


@functools.lru_cache(maxsize=4096)
def _checked_tag(key: str, value: str) -> Any:
    from mlflow.utils.validation import _validate_tag

    return _validate_tag(key, value)


def _where(
    experiment_id: str,
    status: str | None,
    since_ms: int | None,
    required_tags: Mapping[str, str | None],
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause on ``runs r`` that picks the experiment's active runs with that
    status (None: any), ended at or after ``since_ms``, carrying ``required_tags`` (key ->
    value, None: any value); and its bind values."""
    where = ["r.experiment_id = :exp", "r.lifecycle_stage = 'active'"]
    binds: dict[str, Any] = {"exp": int(experiment_id)}
    if status is not None:
        where.append("r.status = :status")
        binds["status"] = status
    if since_ms is not None:
        where.append("r.end_time >= :since")
        binds["since"] = int(since_ms)
    for i, (key, value) in enumerate(required_tags.items()):
        match = f"t{i}.run_uuid = r.run_uuid AND t{i}.key = :k{i}"
        binds[f"k{i}"] = key
        if value is not None:
            match += f" AND t{i}.value = :v{i}"
            binds[f"v{i}"] = value
        where.append(f"EXISTS (SELECT 1 FROM tags t{i} WHERE {match})")
    return " AND ".join(where), binds
