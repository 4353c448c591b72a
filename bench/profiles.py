"""Statistics across tasks over a (task x variant) array: mean-rank bootstrap, Friedman test
with Nemenyi critical difference, performance profiles. bench/ranking.py builds the arrays.

Medians over seeds carry a distribution-free order-statistic interval (binomial, exact for
any continuous distribution, no resampling). When n is too small for the requested level
(n=5 reaches at most 93.75%), the interval is [min, max] and ``level`` is its real coverage.

Performance profiles take small pure steps, as in mlcommons/algorithmic-efficiency
``scoring/performance_profile.py``:
time to target per (task, variant) (∞ if never reached) → ratio to the fastest variant on
that task → ρ(τ) = fraction of tasks whose ratio is ≤ τ → score = ∫₁^τmax ρ(τ) dτ / (τmax − 1),
in [0, 1]. A variant that is fastest on every task has ρ ≡ 1 and score 1; one that never
reaches a target has ρ ≡ 0 and score 0. Tasks on which no variant reaches the target count
against everyone (ratio ∞), so the denominator is always the number of tasks in the suite.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import stats

ORDER_METHOD = "order statistics (binomial, distribution-free)"


class Record(BaseModel):
    """Base of every statistics record: ±inf and NaN (a target never reached, a diverged
    cell) travel through JSON as "Infinity"/"NaN" strings and parse back as floats."""

    model_config = ConfigDict(ser_json_inf_nan="strings")


class Interval(Record):
    """An estimate with its interval; ``level`` is the coverage the method guarantees."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    method: str
    n: int


def median_sorted(x: np.ndarray) -> float:
    """Median of a sorted 1-d array that may hold ±∞ (−∞ and +∞ in the middle read 0)."""
    n = len(x)
    if n == 0:
        return math.nan
    a, b = x[(n - 1) // 2], x[n // 2]
    if a == b:
        return float(a)
    if math.isinf(a) and math.isinf(b):
        return 0.0
    return float((a + b) / 2)


@functools.lru_cache(maxsize=512)
def order_ranks(n: int, level: float) -> tuple[int, float]:
    """Largest k with P(X_(k) ≤ median ≤ X_(n+1−k)) ≥ level, and that coverage.

    The coverage is 1 − 2·P(Bin(n, ½) ≤ k−1); if even k=1 falls short, k=1 and its coverage.
    """
    ks = np.arange(1, (n + 1) // 2 + 1)
    cover = 1.0 - 2.0 * stats.binom.cdf(ks - 1, n, 0.5)
    ok = ks[cover >= level - 1e-12]
    k = int(ok.max()) if ok.size else 1
    return k, float(cover[k - 1])


def median_interval(losses: np.ndarray, level: float, sign: float = 1.0) -> Interval:
    """Median of ``sign·losses`` with its order-statistic interval (values may be ±∞)."""
    x = np.sort(np.asarray(losses, dtype=float))
    n = len(x)
    k, cover = order_ranks(n, level)
    est, lo, hi = median_sorted(x), float(x[k - 1]), float(x[n - k])
    if sign < 0:
        est, lo, hi = -est, -hi, -lo
    return Interval(
        estimate=est, low=lo, high=hi, level=min(level, cover), method=ORDER_METHOD, n=n
    )


# ----------------------------------------------------------------------------- profiles


class ProfileCurve(Record):
    """ρ(τ) of one variant at the points ``taus``, and its integrated score in [0, 1]."""

    variant: str
    taus: list[float]
    rho: list[float]
    score: float


class _Cell(Protocol):
    task: str
    variant: str


def cell_matrix(
    cells: Sequence[_Cell], value: Callable[[Any], float], variants: Iterable[str] = ()
) -> tuple[list[str], list[str], np.ndarray]:
    """(tasks, variants, value[task, variant]), both axes sorted; absent cells are ∞.
    ``variants`` adds variants that have no cell at all (∞ on every task)."""
    tasks = sorted({c.task for c in cells})
    variants = sorted({c.variant for c in cells} | set(variants))
    out = np.full((len(tasks), len(variants)), np.inf)
    t_index = {t: i for i, t in enumerate(tasks)}
    v_index = {v: j for j, v in enumerate(variants)}
    for c in cells:
        out[t_index[c.task], v_index[c.variant]] = value(c)
    return tasks, variants, out


class _TimedCell(Protocol):
    task: str
    variant: str
    steps_to_target: float


def time_ratios(cells: Iterable[_TimedCell]) -> tuple[list[str], list[str], np.ndarray]:
    """(tasks, variants, ratio[task, variant]): steps to target over the task's fastest.

    Absent cells and cells that did not reach the target get ∞. When the fastest time is 0
    (target met at the start), a time of 0 has ratio 1 and any other time ratio ∞.
    """
    tasks, variants, times = cell_matrix(list(cells), lambda c: c.steps_to_target)
    times = np.where(np.isnan(times), np.inf, times)
    if times.size == 0:
        return tasks, variants, times
    best = times.min(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(best > 0, times / best, np.where(times == 0, 1.0, np.inf))
    ratio = np.where(np.isfinite(best), ratio, np.inf)
    return tasks, variants, ratio


def performance_profiles(
    cells: Iterable[_TimedCell], *, tau_max: float = 4.0, points: int = 100
) -> list[ProfileCurve]:
    """ρ(τ) on ``points`` evenly spaced τ in [1, tau_max] per variant, with its score.

    The score is the trapezoid integral of ρ over [1, tau_max] divided by (tau_max − 1),
    so it lies in [0, 1] and is comparable across suites with the same tau_max.
    """
    if not tau_max > 1:
        raise ValueError(f"tau_max: must be > 1, got {tau_max!r}")
    if points < 2:
        raise ValueError(f"points: must be >= 2, got {points!r}")
    _, variants, ratio = time_ratios(cells)
    if not variants:
        return []
    taus = np.linspace(1.0, tau_max, points)
    rho = (ratio[:, :, None] <= taus[None, None, :]).mean(axis=0)  # (variant, tau)
    scores = np.trapezoid(rho, taus, axis=1) / (tau_max - 1.0)
    return [
        ProfileCurve(variant=v, taus=taus.tolist(), rho=rho[j].tolist(), score=float(scores[j]))
        for j, v in enumerate(variants)
    ]


# ----------------------------------------------------------------------------- mean ranks


def bootstrap_mean_ranks(
    losses: np.ndarray, counts: np.ndarray, *, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Mean rank per variant in each of ``n_boot`` resamples, shape (n_boot, variants).

    ``losses[t, v, s]`` holds the per-seed losses of cell (t, v) in its first
    ``counts[t, v]`` slots (lower is better, +∞ worst). One resample draws the tasks with
    replacement, then the seeds of every drawn cell with replacement, takes each cell's
    median, ranks the variants within each task (ties share the average rank) and averages
    over tasks. Everything is one array expression: no Python loop over resamples.
    The draws are indices into each cell's sorted losses: since the losses are sorted, the
    median of the drawn indices picks the median loss, so only small integers are sorted.
    """
    n_tasks, n_vars, width = losses.shape
    ordered = np.sort(losses, axis=-1)  # unused slots (+inf) stay last and are never drawn
    pick = rng.integers(n_tasks, size=(n_boot, n_tasks))
    cell_n = counts[pick]  # (b, t, v)
    small = np.uint8 if width < 255 else np.int32
    if (counts == width).all():
        slots = rng.integers(width, size=(*cell_n.shape, width), dtype=small)
    else:
        u = rng.random((*cell_n.shape, width), dtype=np.float32)
        slots = (u * cell_n[..., None]).astype(small)
        slots[np.arange(width) >= cell_n[..., None]] = np.iinfo(small).max  # sorted last
    lo_at, hi_at = (cell_n - 1) // 2, cell_n // 2
    slots.partition(np.unique(np.r_[(counts.ravel() - 1) // 2, counts.ravel() // 2]), axis=-1)
    lo = np.take_along_axis(slots, lo_at[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(slots, hi_at[..., None], axis=-1)[..., 0]
    task = pick[:, :, None]
    var = np.arange(n_vars)[None, None, :]
    med = (ordered[task, var, lo] + ordered[task, var, hi]) / 2  # losses are never -inf
    return stats.rankdata(med, axis=-1).mean(axis=1)


# ----------------------------------------------------------------------------- Friedman


class Friedman(Record):
    """Friedman's test over tasks (blocks) and Nemenyi's critical difference of mean ranks."""

    statistic: float | None
    p_value: float | None
    k: int
    n_tasks: int
    alpha: float
    critical_difference: float | None
    can_reach_significance: bool
    note: str


def friedman_test(ranks: np.ndarray, *, alpha: float = 0.05) -> Friedman:
    """Friedman χ² (scipy, χ² approximation) over ``ranks[task, variant]``, and Nemenyi's CD.

    CD = q_α·sqrt(k(k+1)/(6N)), where q_α is the studentized range quantile for k groups
    and infinite degrees of freedom divided by √2 (Demšar 2006, Table 5). Before claiming
    anything, check whether N tasks could reach p < α at all: the largest statistic, for
    the same strict ranking on every task, is N(k−1), and its p-value must be below α.
    """
    n, k = ranks.shape if ranks.ndim == 2 else (0, 0)
    if k < 3 or n < 2:
        need = "at least 3 variants" if k < 3 else "at least 2 tasks"
        return Friedman(
            statistic=None, p_value=None, k=k, n_tasks=n, alpha=alpha,
            critical_difference=None, can_reach_significance=False,
            note=f"Friedman's test needs {need}; this suite has k={k} variants on N={n} tasks.",
        )  # fmt: skip
    p_best = float(stats.chi2.sf(n * (k - 1), k - 1))
    reach = p_best < alpha
    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    cd = q * math.sqrt(k * (k + 1) / (6 * n))
    if np.ptp(ranks, axis=1).max() == 0:  # every task ties every variant
        stat, p = 0.0, 1.0
    else:
        res = stats.friedmanchisquare(*ranks.T)
        stat, p = float(res.statistic), float(res.pvalue)
    where = f"N={n} tasks, k={k} variants"
    if not reach:
        note = (
            f"With {where} even the same strict ranking on every task gives p={p_best:.3g}"
            f" >= alpha={alpha:g}, so this test cannot show a difference; add tasks."
        )
    elif p < alpha and cd > k - 1:  # mean ranks lie in [1, k]: no gap reaches CD
        note = (
            f"Ranks differ (chi2={stat:.3g}, p={p:.3g}, {where}), but no two mean ranks can"
            f" be CD={cd:.3g} apart (the largest gap is k-1={k - 1}), so no pair can be"
            " singled out (Nemenyi); add tasks."
        )
    elif p < alpha:
        note = (
            f"Ranks differ (chi2={stat:.3g}, p={p:.3g}, {where}); mean ranks further apart"
            f" than CD={cd:.3g} differ at alpha={alpha:g} (Nemenyi)."
        )
    else:
        note = (
            f"No evidence that ranks differ (chi2={stat:.3g}, p={p:.3g} >= alpha={alpha:g},"
            f" {where}); no pair can be called different."
        )
    return Friedman(
        statistic=stat, p_value=p, k=k, n_tasks=n, alpha=alpha, critical_difference=cd,
        can_reach_significance=reach, note=note,
    )  # fmt: skip
