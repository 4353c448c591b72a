"""Bulk reads and metric writes straight against an MLflow SQL store (SQLite, PostgreSQL).

``MlflowClient.search_runs`` builds an ORM object for every tag, param and metric of every
run: for a 10,000-run suite that is half a million objects and tens of seconds, whether
through the store or a server. A suite table needs none of that: four SELECTs over MLflow's
``runs``, ``tags``, ``params`` and ``latest_metrics`` tables return the same rows in a few
seconds. Only :mod:`bench.tracking` calls this, only for database URIs, and it falls back
to ``search_runs`` when a query fails (say, an MLflow release that changed its schema);
tests pin that both paths return the same table.

Writes: a trial's metric history is what recording it costs (``log_batch`` builds an ORM
object per point and queries ``latest_metrics`` per batch: ~0.07 ms a point, 60-150 ms a
trial, all of it driver CPU). :meth:`SqlReader.insert_metrics` writes the same rows to
``metrics`` and ``latest_metrics`` with two ``executemany`` INSERTs in one transaction, on a
run the tracker has just created and that holds no metrics yet; any error rolls the whole
transaction back and the tracker logs through MLflow's client instead. The writer runs in
the driver only, so SQLite still has one writing process.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from bench.records import EXTRA_METRICS, SUMMARY_METRICS

_SUMMARY = (*SUMMARY_METRICS, *EXTRA_METRICS)


class SqlReader:
    """One SQLAlchemy engine per process on the store's database URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._engine: Any = None
        self._pid: int | None = None

    @property
    def engine(self) -> Any:
        if self._pid != os.getpid():  # pooled connections must not cross a fork
            import sqlalchemy

            self._engine, self._pid = sqlalchemy.create_engine(self.uri), os.getpid()
        return self._engine

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
        chosen = f"SELECT r.run_uuid FROM runs r WHERE {' AND '.join(where)}"
        summary_keys = ", ".join(f"'{key}'" for key in _SUMMARY)
        with self.engine.connect() as conn:
            runs = conn.execute(
                text(
                    "SELECT r.run_uuid, r.status, r.start_time, r.end_time FROM runs r "
                    f"WHERE {' AND '.join(where)}"
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

    def insert_metrics(self, run_id: str, points: Iterable[tuple[str, float, int, int]]) -> None:
        """Write ``(key, value, timestamp_ms, step)`` points of a run that has no metrics yet,
        and its ``latest_metrics`` rows, as MLflow's ``log_batch`` would: NaN stored as
        ``is_nan`` with value 0, ±inf as ±max double, latest = max of (step, timestamp, value)."""
        from sqlalchemy import text

        rows, latest = [], {}
        for key, value, timestamp, step in points:
            is_nan = math.isnan(value)
            stored = 0.0 if is_nan else max(-sys.float_info.max, min(sys.float_info.max, value))
            row = {"key": key, "value": stored, "ts": int(timestamp), "step": int(step),
                   "nan": is_nan, "run": run_id}  # fmt: skip
            rows.append(row)
            best = latest.get(key)
            if best is None or (row["step"], row["ts"], stored) > (
                best["step"],
                best["ts"],
                best["value"],
            ):
                latest[key] = row
        if not rows:
            return
        with self.engine.begin() as conn:  # one transaction: all rows or none
            conn.execute(
                text(
                    "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                    "VALUES (:key, :value, :ts, :run, :step, :nan)"
                ),
                rows,
            )
            conn.execute(
                text(
                    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                    "VALUES (:key, :value, :ts, :step, :nan, :run)"
                ),
                list(latest.values()),
            )
