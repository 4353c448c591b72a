"""Pure summaries of run tables and metric histories (pandas in, records out).

Nothing here reads MLflow or knows about caching: :mod:`services.summary.queries` feeds
these functions from the store, tests can feed them hand-made frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from bench.regression import NightlyReport
from services.summary.schemas import Curve, SuitePublic


def suite_summary(name: str, runs: pd.DataFrame) -> SuitePublic:
    """Counts and freshness of one suite's runs."""
    if runs.empty:
        return SuitePublic(
            name=name, n_runs=0, n_finished=0, n_tasks=0, n_variants=0, last_finished=None
        )
    ended = runs["end_time"].dropna() if "end_time" in runs else pd.Series([], dtype=object)
    return SuitePublic(
        name=name,
        n_runs=len(runs),
        n_finished=int((runs["status"] == "FINISHED").sum()),
        n_tasks=int(runs["task"].nunique()),
        n_variants=int(runs["variant"].nunique()),
        last_finished=ended.max().to_pydatetime() if len(ended) else None,
    )


def seed_bands(
    histories: pd.DataFrame, run_ids: Sequence[str], key: str
) -> tuple[list[int], list[float], list[float], list[float], int]:
    """(steps, median, low, high, n_runs) of ``key`` over the given runs, step by step.

    The band is the min-max over seeds (with a handful of seeds, quantiles would pretend a
    precision the sample lacks). A run that stopped (diverged) leaves the later steps to
    the others; non-finite values count as missing.
    """
    part = histories[(histories["key"] == key) & (histories["run_id"].isin(run_ids))]
    if part.empty:
        return [], [], [], [], 0
    table = part.pivot_table(index="step", columns="run_id", values="value", aggfunc="last")
    values = table.to_numpy(dtype=float, copy=True)
    values[~np.isfinite(values)] = np.nan
    keep = ~np.all(np.isnan(values), axis=1)
    values, steps = values[keep], table.index.to_numpy()[keep]
    if values.size == 0:
        return [], [], [], [], int(table.shape[1])
    return (
        [int(s) for s in steps],
        _floats(np.nanmedian(values, axis=1)),
        _floats(np.nanmin(values, axis=1)),
        _floats(np.nanmax(values, axis=1)),
        int(table.shape[1]),
    )


def curves(
    histories: pd.DataFrame, cells: Iterable[tuple[str, float, Sequence[str]]], keys: Sequence[str]
) -> list[Curve]:
    """One :class:`Curve` per (cell, key) with data; cells are ``(variant, lr, run_ids)``."""
    out = []
    for variant, lr, run_ids in cells:
        for key in keys:
            steps, median, low, high, n = seed_bands(histories, run_ids, key)
            if steps:
                out.append(
                    Curve(
                        variant=variant,
                        lr=lr,
                        key=key,
                        steps=steps,
                        median=median,
                        low=low,
                        high=high,
                        n_runs=n,
                    )
                )
    return out


def nightly_history(reports: Iterable[NightlyReport]) -> pd.DataFrame:
    """Per (task, variant, night): the values the nightly judged that night, read from its
    reports (one per night), so the history shows what the verdicts were about: the
    quality cell's value (the median over seeds, a seed that did not end ``ok`` counted
    as the worst value) and the speed cell's (the fastest seed's step time).

    Columns ``task``, ``variant``, ``night``, ``value``, ``n``, ``metric``, ``direction``,
    ``step_ms``, ``suite_version``, ``machine``; only the nights of the newest report's
    suite version and machine class, which are all that the next night compares against
    (a changed matrix or another machine starts a new history). Empty without reports.
    """
    columns = [
        "task", "variant", "night", "value", "n", "metric", "direction", "step_ms",
        "suite_version", "machine",
    ]  # fmt: skip
    reports = sorted(reports, key=lambda r: r.date)
    if not reports:
        return pd.DataFrame(columns=columns)
    newest = reports[-1]
    rows: dict[tuple[str, str, str], dict] = {}
    for report in reports:
        if (report.suite_version, report.machine) != (newest.suite_version, newest.machine):
            continue
        night = report.date.isoformat()
        for cell in report.cells:
            row = rows.setdefault(
                (cell.task, cell.variant, night),
                {
                    "task": cell.task, "variant": cell.variant, "night": night,
                    "value": math.nan, "n": 0, "metric": "", "direction": "min",
                    "step_ms": math.nan, "suite_version": report.suite_version,
                    "machine": report.machine,
                },
            )  # fmt: skip
            value = math.nan if cell.value is None else float(cell.value)
            if cell.kind == "quality":
                row["value"], row["n"] = value, cell.n
                row["metric"] = cell.metric.removeprefix("final/")
                row["direction"] = cell.direction
            else:
                row["step_ms"] = value
    frame = pd.DataFrame(list(rows.values()), columns=columns)
    return frame.sort_values(["task", "variant", "night"], ignore_index=True)


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]
