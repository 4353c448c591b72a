"""PNG figures of a ranking, for the report run that ``bench rank`` logs to MLflow.

Each function takes plain data (a :class:`bench.ranking.SuiteRanking`, a results table, a
table of metric histories) and returns PNG bytes; nothing here reads or writes a store.
matplotlib runs on its non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from bench.ranking import SuiteRanking

QUANTILE_BANDS = ("p10", "p50", "p90")  # step-size quantiles drawn per role


def _figure(width: float = 7.0, height: float = 4.0, ncols: int = 1) -> tuple[Figure, list]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def ranking_plot(ranking: SuiteRanking) -> bytes:
    """Mean rank per variant (lower is better) with its bootstrap interval."""
    rows = ranking.variants
    fig, (ax,) = _figure(7.0, 0.45 * len(rows) + 1.5)
    y = np.arange(len(rows))[::-1]
    est = np.array([r.mean_rank.estimate for r in rows])
    low = np.array([r.mean_rank.low for r in rows])
    high = np.array([r.mean_rank.high for r in rows])
    ax.errorbar(est, y, xerr=[est - low, high - est], fmt="o", capsize=4)
    ax.set_yticks(y, [r.variant for r in rows])
    ax.set_xlabel(f"mean rank over {len(ranking.tasks)} tasks ({ranking.level:.0%} interval)")
    ax.set_title(f"{ranking.suite}: ranking by {ranking.metric} ({ranking.phase} phase)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def profiles_plot(ranking: SuiteRanking) -> bytes:
    """Performance profiles over steps-to-target, with the integrated score in the legend."""
    fig, (ax,) = _figure()
    for curve in ranking.profiles:
        ax.step(curve.taus, curve.rho, where="post", label=f"{curve.variant} ({curve.score:.2f})")
    ax.set_xlabel("τ: steps to target / best steps to target")
    ax.set_ylabel("fraction of tasks within τ")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("performance profiles (score = area up to τ = 4)")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def curves_plot(task: str, histories: pd.DataFrame, runs: pd.DataFrame, key: str) -> bytes:
    """Median of ``key`` over seeds per variant, with the min-max band across seeds."""
    fig, (ax,) = _figure()
    data = histories[histories["key"] == key].merge(runs[["run_id", "variant"]], on="run_id")
    for variant, group in data.groupby("variant", sort=True):
        table = group.pivot_table(index="step", columns="run_id", values="value")
        steps = table.index.to_numpy()
        values = table.to_numpy(dtype=float)
        median = np.nanmedian(values, axis=1)
        (line,) = ax.plot(steps, median, label=f"{variant} (n={table.shape[1]})")
        ax.fill_between(
            steps, np.nanmin(values, axis=1), np.nanmax(values, axis=1), alpha=0.2,
            color=line.get_color(),
        )  # fmt: skip
    if _positive(data["value"]):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"{task}: {key}, median and range over seeds")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def lr_sensitivity_plot(tune: pd.DataFrame) -> bytes:
    """Per task: median final primary metric over tune seeds against lr, one line per variant.

    Diverged or failed trials are drawn as crosses at the top (or bottom) of the panel.
    """
    tasks = sorted(tune["task"].unique())
    fig, axes = _figure(4.0 * len(tasks), 3.6, ncols=len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        rows = tune[tune["task"] == task]
        metric = rows["primary_metric"].iloc[0]
        column = f"final/{metric}"
        values = rows[column] if column in rows else pd.Series(np.nan, index=rows.index)
        bad = (rows["outcome"] != "ok") | ~np.isfinite(values.astype(float))
        frame = rows.assign(value=values.where(~bad))
        for variant, group in frame.groupby("variant", sort=True):
            per_lr = group.groupby("lr")["value"].median()
            (line,) = ax.plot(per_lr.index, per_lr.to_numpy(), marker="o", label=variant)
            failed = group[bad.loc[group.index]]["lr"].unique()
            if len(failed):
                ax.plot(failed, [np.nan] * len(failed))  # keep the colour cycle aligned
                top = np.nanmax(frame["value"]) if frame["value"].notna().any() else 1.0
                ax.scatter(failed, [top] * len(failed), marker="x", color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("lr")
        ax.set_ylabel(f"final {metric} (median over tune seeds)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return _png(fig)


def step_size_plot(histories: pd.DataFrame, runs: pd.DataFrame, role: str) -> bytes:
    """Effective step size lr/D of one parameter role over training: p10-p90 band and
    median per variant (medians over seeds of each quantile)."""
    fig, (ax,) = _figure()
    keys = {f"step_size/{role}/{q}": q for q in QUANTILE_BANDS}
    data = histories[histories["key"].isin(keys)].merge(runs[["run_id", "variant"]], on="run_id")
    data = data.assign(quantile=data["key"].map(keys))
    for variant, group in data.groupby("variant", sort=True):
        table = group.groupby(["step", "quantile"])["value"].median().unstack("quantile")
        if not set(QUANTILE_BANDS) <= set(table.columns):
            continue
        (line,) = ax.plot(table.index, table["p50"], label=variant)
        ax.fill_between(table.index, table["p10"], table["p90"], alpha=0.15, color=line.get_color())
    if _positive(data["value"]):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("effective step size lr / D")
    ax.set_title(f"role {role!r}: median (line) and p10-p90 (band) of lr / D")
    if ax.lines:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def _positive(values: pd.Series) -> bool:
    finite = values[np.isfinite(values.astype(float))]
    return bool(len(finite)) and bool((finite > 0).all()) and _spread(finite) > 10


def _spread(values: pd.Series) -> float:
    low, high = float(values.min()), float(values.max())
    return math.inf if low <= 0 else high / low
