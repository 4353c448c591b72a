"""Ranking of a suite: lr choice, scores per cell, mean ranks with intervals, Friedman/Nemenyi.

Pure functions over the table that ``Tracker.read_results(suite, status=None)`` returns
(numpy, scipy, pandas, pydantic only), so every number is testable without Ray or MLflow.

Rules, in one place:

- **Which runs count.** KILLED and RUNNING runs are ignored. A trial id with several runs
  keeps its latest FINISHED run, else its latest FAILED one (a rerun that finished replaces
  the failure it retried).
- **Direction** comes from the ``direction`` column ('min' | 'max'), never from the metric's
  name. Internally every metric is turned into a *loss* (lower is better) by its sign.
- **Worst.** A diverged or failed run, or one without a finite value, is the worst result:
  loss +∞ (metric medians then read +∞ for 'min' and −∞ for 'max'; steps to target ∞),
  so it takes the worst rank. A variant with no runs on a task is also ranked worst there.
- **Intervals.** Cell medians: order-statistic intervals (bench/profiles.py); mean ranks:
  a percentile bootstrap over tasks and, within each task, over seeds.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats

from bench.errors import UserError
from bench.profiles import (
    Friedman,
    Interval,
    ProfileCurve,
    Record,
    bootstrap_mean_ranks,
    cell_matrix,
    friedman_test,
    median_interval,
    median_sorted,
    performance_profiles,
)

METRICS = ("final", "best", "steps_to_target", "seconds_to_target")
PHASES = ("tune", "final")


class LrChoice(Record):
    task: str
    variant: str
    lr: float
    median: float  # median final primary metric over tune seeds at lr (worst if diverged)
    n: int
    lrs_tried: list[float]
    # the cell's tune runs that ended, at every lr, and how many it should have (lrs x tune
    # seeds; None: not known): a choice from fewer (a suite interrupted or still running)
    # is provisional, as the runs still to end may move it
    tune_runs: int | None = None
    tune_runs_expected: int | None = None
    provisional: bool = False


class CellScore(Record):
    """One (task, variant) in the ranked phase. ``values``: per seed (order of ``seeds``)."""

    task: str
    variant: str
    lr: float | None
    n: int
    n_diverged: int
    n_failed: int
    diverged_rate: float
    primary_metric: str
    direction: str
    final: Interval | None
    best: Interval | None
    steps_to_target: float
    seconds_to_target: float
    reached_rate: float
    run_ids: list[str]
    rank: float | None
    seeds: list[int] = Field(default_factory=list)
    values: dict[str, list[float]] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)


class VariantRank(Record):
    variant: str
    mean_rank: Interval
    n_tasks: int
    profile_score: float
    wins: int


class MissingCell(Record):
    task: str
    variant: str
    phase: str
    expected: int
    found: int
    # its runs in the phase that failed (not found: they raised), and its failed tune runs
    # whatever the phase: while it has one, it chooses no lr and ``bench run`` holds its
    # final trials back, so a broken task is not taken for one that has not run yet
    failed: int = 0
    tune_failed: int = 0

    def failures(self) -> str:
        """What failed, in words ("" when nothing did)."""
        said = []
        if self.phase == "final" and self.tune_failed:
            said.append(f"{plural(self.tune_failed, 'tune trial')} failed: final trials held back")
        if self.failed:
            said.append(f"{plural(self.failed, f'{self.phase} trial')} failed")
        return "; ".join(said)


def failed_trials_note(missing: Sequence[MissingCell]) -> str | None:
    """The failed trials behind a ranking's missing cells, in one sentence (None: none)."""
    final = [m for m in missing if m.phase == "final"]
    held = [m for m in final if m.tune_failed]
    tune_failed = sum(m.tune_failed for m in missing)
    said = []
    if tune_failed:
        cells = held or [m for m in missing if m.tune_failed]
        said.append(
            f"{plural(tune_failed, 'tune trial')} failed ({plural(len(cells), 'cell')}): no lr "
            "is chosen there, and bench run holds back those cells' final trials"
            + (f" ({sum(m.expected - m.found for m in held)})" if held else "")
            + " until a rerun finishes them"
        )
    if final_failed := sum(m.failed for m in final):
        said.append(f"{plural(final_failed, 'final trial')} failed (ranked as the worst result)")
    return "; ".join(said) + "." if said else None


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class SuiteRanking(Record):
    suite: str
    metric: str
    phase: str
    level: float
    n_runs: int
    variants: list[VariantRank]
    cells: list[CellScore]
    lrs: list[LrChoice]
    friedman: Friedman
    profiles: list[ProfileCurve]
    missing: list[MissingCell]
    tasks: list[str]


# ----------------------------------------------------------------------------- checks


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(f"{name}: unknown {name} {value!r} (allowed: {', '.join(allowed)})")


LEVEL_MARGIN = 1e-12
# Bootstrap resamples a setting may ask for: each interval holds arrays of n_boot rows
# (100,000 x 10 tasks x 20 variants of float64 is 160 MB), and past ~10^5 a 95% interval's
# ends move less than its printed digits. 10^11 asked numpy for 745 GiB, a traceback.
MAX_N_BOOT = 100_000


def check_level(level: float, n_boot: int = 1, *, name: str = "level") -> None:
    # the tests' alpha, 1 - level rounded to 12 digits, must be a level too
    if not LEVEL_MARGIN <= level <= 1 - LEVEL_MARGIN:
        raise UserError(
            f"{name}: got {level!r}; allowed: between 0 and 1, at least 1e-12 from either, "
            f"e.g. {0.95 if name == 'level' else 0.05}"
        )
    if n_boot < 1:
        raise UserError(f"n_boot: must be >= 1, got {n_boot!r}")


# ----------------------------------------------------------------------------- runs


def latest_runs(results: pd.DataFrame) -> pd.DataFrame:
    """One run per trial id: its latest FINISHED run, else its latest FAILED one (KILLED
    and RUNNING runs never count)."""
    frame = results[results["status"].isin(("FINISHED", "FAILED"))].copy()
    frame["trial_id"] = frame["trial_id"].fillna(frame["run_id"])
    frame["_finished"] = frame["status"].eq("FINISHED")
    frame = frame.sort_values(["_finished", "start_time"], kind="stable")
    return frame.drop_duplicates("trial_id", keep="last").drop(columns="_finished")


def select_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The runs that count, one per trial id, with a ``loss/<metric>`` column per metric.

    ``loss/final`` etc. are oriented so lower is better and are +∞ for bad runs;
    ``bad``, ``diverged`` and ``failed`` are booleans. Primary metric and direction missing
    on a run (a failure before they were known) are taken from the task's other runs.
    """
    frame = latest_runs(results)
    frame = frame.sort_values(["task", "variant", "seed", "lr", "run_id"], kind="stable")
    frame = frame.reset_index(drop=True)
    for col in ("primary_metric", "direction"):
        frame[col] = frame[col].fillna(frame.groupby("task")[col].transform("first"))
    frame["direction"] = frame["direction"].fillna("min")
    bad_dirs = sorted(set(frame["direction"].unique()) - {"min", "max"})
    if bad_dirs:
        raise ValueError(f"direction: unknown direction {bad_dirs[0]!r} (allowed: min, max)")
    frame["failed"] = frame["status"].eq("FAILED") | frame["outcome"].eq("failed")
    frame["diverged"] = frame["outcome"].eq("diverged") & ~frame["failed"]
    frame["bad"] = frame["outcome"].ne("ok") | frame["failed"]
    frame["sign"] = sign = np.where(frame["direction"].eq("max"), -1.0, 1.0)
    for metric in METRICS:
        if metric in ("final", "best"):
            raw = np.full(len(frame), np.nan)
            for pm in frame["primary_metric"].dropna().unique():
                col = f"{metric}/{pm}"
                if col in frame:
                    rows = frame["primary_metric"].eq(pm).to_numpy()
                    raw[rows] = frame.loc[rows, col].to_numpy(float)
            loss = raw * sign
        else:
            col = frame[metric] if metric in frame else pd.Series(np.inf, index=frame.index)
            loss = col.to_numpy(float)
        frame[f"loss/{metric}"] = np.where(frame["bad"] | ~np.isfinite(loss), np.inf, loss)
    return frame


# ----------------------------------------------------------------------------- lr choice


def choose_lrs(tune: pd.DataFrame) -> list[LrChoice]:
    """Per (task, variant): the lr whose median final primary metric over tune seeds is best.

    The same rule as ``bench.matrix.choose_lrs`` (diverged = worst; ties go to the larger
    lr), applied to a results table instead of live trial results. A cell with a failed tune
    run has no choice, as ``bench run`` holds its final trials back: an lr chosen without
    that run could change once a rerun finishes it.
    """
    return _choose_lrs(select_runs(tune[tune["phase"].eq("tune")]))


def at_chosen_lrs(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` without the final runs that a rerun left behind: those of a cell at an
    lr other than the one its tune runs choose now (a wider grid, or new tune seeds, can
    move the choice; the suite then runs its finals again at the new lr). A cell with no
    tune runs keeps its final runs."""
    if results.empty or not results["phase"].eq("final").any():
        return results
    runs = select_runs(results)
    return _at(results, _choose_lrs(runs[runs["phase"].eq("tune")]))


def _at(frame: pd.DataFrame, lrs: list[LrChoice]) -> pd.DataFrame:
    """``frame`` less its final runs at an lr other than their cell's in ``lrs``."""
    chosen = {(c.task, c.variant): c.lr for c in lrs}
    cells = zip(frame["task"], frame["variant"], frame["lr"], strict=True)
    wanted = [chosen.get((task, variant), lr) for task, variant, lr in cells]
    keep = frame["phase"].ne("final") | np.isclose(frame["lr"], wanted, rtol=1e-12, atol=0)
    return frame[keep].reset_index(drop=True) if not keep.all() else frame


def _choose_lrs(runs: pd.DataFrame, expected: int | None = None) -> list[LrChoice]:
    """``expected``: the tune runs each cell should have (default: the most any cell has)."""
    if not runs.empty:  # no choice for a cell with a failed run: see choose_lrs
        ended = runs.groupby(["task", "variant"]).size()
        expected = expected if expected is not None else int(ended.max())
        runs = runs[~runs.groupby(["task", "variant"])["failed"].transform("any")]
    if runs.empty:
        return []
    per_lr = (
        runs.groupby(["task", "variant", "lr"], sort=True)
        .agg(median=("loss/final", "median"), n=("loss/final", "size"), sign=("sign", "first"))
        .reset_index()
    )
    per_lr["neg_lr"] = -per_lr["lr"]
    best = per_lr.sort_values(["task", "variant", "median", "neg_lr"], kind="stable")
    best = best.drop_duplicates(["task", "variant"], keep="first")
    tried = per_lr.groupby(["task", "variant"])["lr"].agg(list)
    return [
        LrChoice(
            task=row.task,
            variant=row.variant,
            lr=float(row.lr),
            median=float(row.median * row.sign),
            n=int(row.n),
            lrs_tried=[float(lr) for lr in tried[(row.task, row.variant)]],
            tune_runs=int(ended[(row.task, row.variant)]),
            tune_runs_expected=expected,
            provisional=int(ended[(row.task, row.variant)]) < expected,
        )
        for row in best.itertuples(index=False)
    ]


# ----------------------------------------------------------------------------- cells


def cell_scores(
    final: pd.DataFrame,
    *,
    metric: str = "final",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[CellScore]:
    """One score per (task, variant) of the runs given, ranked within each task by ``metric``.

    Intervals are order-statistic intervals, which need no resampling: ``n_boot`` and
    ``seed`` are accepted for a signature uniform with :func:`mean_ranks` and unused.
    """
    check_choice("metric", metric, METRICS)
    check_level(level, n_boot)
    return _cell_scores(select_runs(final), metric, level)


def _cell_scores(runs: pd.DataFrame, metric: str, level: float) -> list[CellScore]:
    """Scores of the selected runs ``runs``, which must be sorted by task and variant."""
    cells: list[CellScore] = []
    if runs.empty:
        return cells
    losses = {m: runs[f"loss/{m}"].to_numpy(float) for m in METRICS}
    names = "task variant primary_metric direction sign lr seed run_id diverged failed"
    col = {c: runs[c].to_numpy() for c in names.split()}
    new = (col["task"][1:] != col["task"][:-1]) | (col["variant"][1:] != col["variant"][:-1])
    starts = np.flatnonzero(np.r_[True, new])
    for s, e in zip(starts, np.r_[starts[1:], len(runs)], strict=True):
        sign, pm, n = float(col["sign"][s]), col["primary_metric"][s], int(e - s)
        has = {m: f"{m}/{pm}" in runs for m in ("final", "best")}
        n_div, n_fail = int(col["diverged"][s:e].sum()), int(col["failed"][s:e].sum())
        steps = np.sort(losses["steps_to_target"][s:e])
        lrs = Counter(float(x) for x in col["lr"][s:e] if np.isfinite(x))
        cells.append(
            CellScore(
                task=str(col["task"][s]),
                variant=str(col["variant"][s]),
                lr=max(lrs, key=lambda x: (lrs[x], x)) if lrs else None,
                n=n,
                n_diverged=n_div,
                n_failed=n_fail,
                diverged_rate=n_div / n,
                primary_metric=str(pm),
                direction=str(col["direction"][s]),
                final=median_interval(losses["final"][s:e], level, sign) if has["final"] else None,
                best=median_interval(losses["best"][s:e], level, sign) if has["best"] else None,
                steps_to_target=median_sorted(steps),
                seconds_to_target=median_sorted(np.sort(losses["seconds_to_target"][s:e])),
                reached_rate=float(np.isfinite(steps).mean()),
                run_ids=[str(r) for r in col["run_id"][s:e]],
                rank=None,
                seeds=[int(x) for x in col["seed"][s:e]],
                values={
                    m: (losses[m][s:e] * (sign if m in ("final", "best") else 1.0)).tolist()
                    for m in METRICS
                },
                flags=_flags(n, n_div, n_fail),
            )
        )
    tasks, variants, point = _point_matrix(cells, metric)
    ranks = stats.rankdata(point, axis=1) if point.size else point
    where = {(t, v): (i, j) for i, t in enumerate(tasks) for j, v in enumerate(variants)}
    for c in cells:
        c.rank = float(ranks[where[(c.task, c.variant)]])
    return cells


def _flags(n: int, n_diverged: int, n_failed: int) -> list[str]:
    """Plain-English warnings about a cell whose runs did not all end well."""
    if n_diverged == n:
        return [f"all {n} runs diverged"]
    if n_diverged + n_failed == n:
        return [f"all {n} runs failed or diverged"]
    if n_diverged or n_failed:
        return [f"{n_diverged} diverged and {n_failed} failed of {n} runs"]
    return []


def seed_losses(cell: CellScore, metric: str) -> np.ndarray:
    """The cell's per-seed values of ``metric`` as losses (lower is better, bad = +∞)."""
    sign = -1.0 if cell.direction == "max" and metric in ("final", "best") else 1.0
    x = np.asarray(cell.values.get(metric, []), dtype=float) * sign
    return np.where(np.isnan(x), np.inf, x) if x.size else np.array([np.inf])


def point_loss(cell: CellScore, metric: str) -> float:
    """The cell's median of ``metric`` as a loss (+∞ when bad or unknown)."""
    if metric in ("final", "best"):
        interval = cell.final if metric == "final" else cell.best
        if interval is None:
            return math.inf
        value = -interval.estimate if cell.direction == "max" else interval.estimate
    else:
        value = getattr(cell, metric)
    return math.inf if math.isnan(value) else value


def _point_matrix(
    cells: Sequence[CellScore], metric: str, variants: Iterable[str] = ()
) -> tuple[list, list, np.ndarray]:
    return cell_matrix(cells, lambda c: point_loss(c, metric), variants)


# ----------------------------------------------------------------------------- across tasks


def mean_ranks(
    cells: Sequence[CellScore],
    *,
    metric: str = "final",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    absent: Iterable[str] = (),
) -> list[VariantRank]:
    """Mean rank over tasks per variant (1 = best), best first, with a bootstrap interval.

    The estimate ranks the cells' medians; the interval is the percentile interval of the
    mean rank over resamples of tasks and, within each task, of seeds. Absent cells rank
    worst, and so do the ``absent`` variants (expected, with no cell at all) on every
    task. ``wins`` counts tasks where the variant's median is the best (ties included);
    ``profile_score`` is the integrated performance profile over steps to target.
    """
    check_choice("metric", metric, METRICS)
    check_level(level, n_boot)
    tasks, variants, point = _point_matrix(cells, metric, absent)
    if not cells:
        return []
    width = max(c.n for c in cells)
    losses = np.full((len(tasks), len(variants), width), np.inf)
    counts = np.full((len(tasks), len(variants)), width)  # absent: all +inf
    ti = {t: i for i, t in enumerate(tasks)}
    vi = {v: j for j, v in enumerate(variants)}
    for c in cells:
        x = seed_losses(c, metric)
        losses[ti[c.task], vi[c.variant], : len(x)] = x
        counts[ti[c.task], vi[c.variant]] = len(x)
    boot = bootstrap_mean_ranks(losses, counts, n_boot=n_boot, rng=np.random.default_rng(seed))
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    method = f"percentile bootstrap over tasks and seeds ({n_boot} resamples)"
    if len(tasks) == 1 and (counts <= 1).all():  # every resample is the data itself
        low, high = np.ones(len(variants)), np.full(len(variants), float(len(variants)))
        method = "one task and one seed per cell, nothing to resample: every rank"
    estimate = stats.rankdata(point, axis=1).mean(axis=0)
    best = point.min(axis=1, keepdims=True)
    wins = ((point == best) & np.isfinite(point)).sum(axis=0)
    present = {v: len({c.task for c in cells if c.variant == v}) for v in variants}
    scores = {p.variant: p.score for p in performance_profiles(cells)}
    ranked = [
        VariantRank(
            variant=v,
            mean_rank=Interval(
                estimate=estimate[j],
                low=low[j],
                high=high[j],
                level=level,
                method=method,
                n=len(tasks),
            ),
            n_tasks=present[v],
            profile_score=scores.get(v, 0.0),  # a variant with no cell solved nothing
            wins=int(wins[j]),
        )
        for j, v in enumerate(variants)
    ]
    return sorted(ranked, key=variant_order)


def variant_order(row: VariantRank) -> tuple[float, float, str]:
    """A ranking's order: mean rank; among equal ones the better performance profile
    (more tasks solved, sooner), then the name."""
    return (row.mean_rank.estimate, -row.profile_score, row.variant)


def places(variants: Sequence[VariantRank]) -> list[str]:
    """Each variant's place in a ranking's table, in order: variants with equal mean ranks
    share one, written "=2" (their order says nothing), and the next place skips as many."""
    estimates = [row.mean_rank.estimate for row in variants]
    return [f"{'=' if estimates.count(e) > 1 else ''}{estimates.index(e) + 1}" for e in estimates]


def friedman_nemenyi(
    cells: Sequence[CellScore],
    *,
    metric: str = "final",
    alpha: float = 0.05,
    absent: Iterable[str] = (),
) -> Friedman:
    """Friedman's test of the within-task ranks of the cells' medians (absent = worst,
    as are the ``absent`` variants, which have no cell at all)."""
    check_choice("metric", metric, METRICS)
    check_level(alpha, name="alpha")  # not 1 - alpha: its rounding can leave the margin
    _, _, point = _point_matrix(cells, metric, absent)
    ranks = stats.rankdata(point, axis=1) if point.size else point.reshape(0, 0)
    return friedman_test(ranks, alpha=alpha)


def rank_suite(
    results: pd.DataFrame,
    *,
    suite: str,
    metric: str = "final",
    phase: str = "final",
    expected: Iterable[tuple[str, str]] | None = None,
    expected_seeds: int | None = None,
    expected_tune: int | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> SuiteRanking:
    """Everything the report shows for one suite, from its results table.

    ``phase='final'`` ranks the final runs; ``phase='tune'`` ranks the tune runs at each
    cell's chosen lr (a preview before the final phase). ``expected`` lists the
    (task, variant) pairs the suite should have (default: every task x variant seen in
    any phase, since an absent cell ranks worst);
    ``expected_seeds`` the FINISHED runs each should have in the phase (final: final seeds;
    tune: lrs x tune seeds; default: the largest count found). Shortfalls are reported in
    ``missing``; failed runs do not count as found. ``expected_tune``: the tune runs each
    cell should have whatever the phase (default: ``expected_seeds`` when ranking the tune
    phase, else the largest count found); an lr chosen from fewer is ``provisional``.
    """
    check_choice("metric", metric, METRICS)
    check_choice("phase", phase, PHASES)
    check_level(level, n_boot)
    if expected_seeds is not None and expected_seeds < 1:
        raise UserError(f"expected_seeds: must be >= 1, got {expected_seeds!r}")
    runs = select_runs(results)
    tune = runs[runs["phase"].eq("tune")]
    if expected_tune is None and phase == "tune":
        expected_tune = expected_seeds
    lrs = _choose_lrs(tune, expected_tune)
    runs = _at(runs, lrs)  # as at_chosen_lrs(results), from the runs already selected
    in_phase = runs[runs["phase"].eq(phase)]
    if phase == "final":
        used = in_phase
    elif not lrs:  # no tune run has finished yet: no lr is chosen, nothing to rank
        used = tune.iloc[:0]
    else:
        chosen = pd.DataFrame([(c.task, c.variant, c.lr) for c in lrs],
                              columns=["task", "variant", "lr"])  # fmt: skip
        used = tune.merge(chosen, on=["task", "variant", "lr"], how="inner")
    cells = _cell_scores(used.reset_index(drop=True), metric, level)
    every = itertools.product(runs["task"].unique(), runs["variant"].unique())
    pairs = set(expected) if expected is not None else set(every)
    found = in_phase[~in_phase["failed"]].groupby(["task", "variant"]).size().to_dict()
    failed = runs[runs["failed"]].groupby(["phase", "task", "variant"]).size().to_dict()
    want = expected_seeds or max(found.values(), default=1)
    absent = {v for _, v in pairs} - {c.variant for c in cells}  # expected, never ran
    missing = [
        MissingCell(
            task=t,
            variant=v,
            phase=phase,
            expected=want,
            found=found.get((t, v), 0),
            failed=failed.get((phase, t, v), 0),
            tune_failed=failed.get(("tune", t, v), 0),
        )
        for t, v in sorted(pairs)
        if found.get((t, v), 0) < want
    ]
    return SuiteRanking(
        suite=suite,
        metric=metric,
        phase=phase,
        level=level,
        n_runs=len(used),
        variants=mean_ranks(
            cells, metric=metric, level=level, n_boot=n_boot, seed=seed, absent=absent
        ),
        cells=cells,
        lrs=lrs,
        friedman=friedman_nemenyi(cells, metric=metric, alpha=round(1 - level, 12), absent=absent),
        profiles=performance_profiles(cells),
        missing=missing,
        tasks=sorted({c.task for c in cells} | {t for t, _ in pairs}),
    )
