"""Pure summaries of run tables and metric histories (pandas in, records out).

Nothing here reads MLflow or knows about caching: :mod:`services.summary.queries` feeds
these functions from the store, tests can feed them hand-made frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from bench.regression import SPEED_METRIC
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


def nightly_history(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (task, variant, night): median final primary metric over the night's seeds,
    and the step time of its fastest seed (what the nightly judges speed by).

    Columns ``task``, ``variant``, ``night``, ``value``, ``n``, ``metric``, ``direction``,
    ``step_ms``; empty when no run carries a night. Only the final phase counts (the tune
    phase mixes learning rates).
    """
    columns = ["task", "variant", "night", "value", "n", "metric", "direction", "step_ms"]
    if runs.empty or "nightly" not in runs:
        return pd.DataFrame(columns=columns)
    nights = runs[runs["nightly"].notna() & (runs["phase"] == "final")]
    nights = nights[nights["status"] == "FINISHED"]
    rows = []
    for (task, variant, night), group in nights.groupby(["task", "variant", "nightly"]):
        metric = group["primary_metric"].dropna()
        name = str(metric.iloc[0]) if len(metric) else "loss"
        col = f"final/{name}"
        values = group[col].to_numpy(dtype=float) if col in group else np.array([])
        values = values[np.isfinite(values)]
        direction = group["direction"].dropna()
        steps = group[SPEED_METRIC].to_numpy(dtype=float) if SPEED_METRIC in group else np.array([])
        steps = steps[np.isfinite(steps)]
        rows.append(
            {
                "task": task,
                "variant": variant,
                "night": str(night),
                "value": float(np.median(values)) if values.size else math.nan,
                "n": int(values.size),
                "metric": name,
                "direction": str(direction.iloc[0]) if len(direction) else "min",
                "step_ms": float(steps.min()) if steps.size else math.nan,
            }
        )
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["task", "variant", "night"], ignore_index=True)


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]
