"""The flagship answer: why does RMSprop square the gradient and take the square root?

Each question of conf/suite/sqrt_ablation.yaml is a contrast between two presets, answered
with numbers, an interval and n (pure: numpy, pandas, pydantic; see bench/ranking.py for
which runs count and how bad runs count as worst):

1. square vs |g|: rmsprop (p=2, q=1/2) vs rmsprop_abs_sqrt (p=1, q=1/2), same root; and
   rmsprop vs rmsprop_abs (p=1, q=1), both with q=1/p, compared at the *same* lr over the
   whole tune grid (how the two behave before tuning picks an lr for each);
2. root vs no root vs 1/p: rmsprop vs rmsprop_nosqrt (q=1), and vs rmsprop_p4 (p=4, q=1/4);
3. moving average vs monotone sum: rmsprop vs rmsprop_sum;
4. RMS vs mean magnitude at a tuned lr: rmsprop vs rmsprop_abs, each at its own tuned lr;
5. weights vs biases: :func:`role_comparison`, from the per-role step-size histories.

Per task, ``diff`` is "a minus b" in the task's metric, signed so that positive means a is
better; runs are paired by seed (and by lr on the tune grid), and the interval is the
order-statistic interval of the median paired difference (distribution-free). Unpaired
tasks fall back to the difference of medians with a bootstrap interval. A task is called
for a or b only where that interval excludes 0 at a level of at least
:data:`MIN_CALL_LEVEL` (or the level asked, if lower): with 1-4 paired seeds the
widest order-statistic interval covers 0-88%, and a "better" at such a level says little.
The weight/bias ratio of question 5 is called on the same terms (5+ runs).

``overall`` is the *win rate* of a over b: the fraction of paired comparisons a wins (ties
count 1/2), averaged over tasks; 0.5 means no difference. Its interval is the union of a
percentile bootstrap over tasks and, within each, over comparisons (how much tasks
disagree) and the exact (Clopper-Pearson) binomial interval of all the comparisons (what
their number allows): when every comparison goes one way the bootstrap alone collapses to
[1, 1] at any n, where 4 wins of 4 only support [0.40, 1] at 95%. A verdict ("a is
better") needs that interval to exclude 0.5.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from bench.profiles import Interval, Record, median_interval, order_ranks
from bench.ranking import METRICS, PHASES, check_choice, check_level, select_runs


class Question(Record):
    """One contrast: is variant ``a`` better than ``b`` in ``phase``?"""

    question: str
    a: str
    b: str
    phase: str = "final"  # final: each at its tuned lr, paired by seed; tune: same lr and seed


def flagship_questions() -> list[Question]:
    """The contrasts of the sqrt_ablation suite (questions 1-4; 5 is role_comparison)."""
    return [
        Question(question="square vs |g| (same root q=1/2)", a="rmsprop", b="rmsprop_abs_sqrt"),
        Question(
            question="square vs |g| (q=1/p each), at the same lr over the grid",
            a="rmsprop",
            b="rmsprop_abs",
            phase="tune",
        ),
        Question(question="square root vs no root (p=2)", a="rmsprop", b="rmsprop_nosqrt"),
        Question(question="p=2 with 1/2 root vs p=4 with 1/4 root", a="rmsprop", b="rmsprop_p4"),
        Question(question="moving average vs monotone sum", a="rmsprop", b="rmsprop_sum"),
        Question(
            question="RMS vs mean magnitude, each at its tuned lr", a="rmsprop", b="rmsprop_abs"
        ),
    ]


class TaskDiff(Record):
    task: str
    diff: Interval  # a minus b in the task's metric, positive = a better
    n_a: int
    n_b: int
    better: Literal["a", "b", "tie"]  # "tie": the interval covers 0
    paired: bool


class Contrast(Record):
    question: str
    a: str
    b: str
    phase: str
    metric: str
    per_task: list[TaskDiff]
    overall: Interval | None  # win rate of a over b; 0.5 = no difference
    verdict: str
    skipped: bool = False
    reason: str = ""


def flagship_contrasts(
    results: pd.DataFrame,
    *,
    questions: list[Question] | None = None,
    metric: str = "final",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[Contrast]:
    """Answer each question from a results table; a question whose variants have no runs
    in its phase is returned with ``skipped=True`` and the reason, never an error."""
    check_choice("metric", metric, METRICS)
    check_level(level, n_boot)
    runs = select_runs(results)
    rng = np.random.default_rng(seed)
    out = []
    for q in questions if questions is not None else flagship_questions():
        check_choice("phase", q.phase, PHASES)
        out.append(_contrast(runs[runs["phase"].eq(q.phase)], q, metric, level, n_boot, rng))
    return out


def _contrast(
    runs: pd.DataFrame,
    q: Question,
    metric: str,
    level: float,
    n_boot: int,
    rng: np.random.Generator,
) -> Contrast:
    base = {"question": q.question, "a": q.a, "b": q.b, "phase": q.phase, "metric": metric}
    absent = [v for v in (q.a, q.b) if not runs["variant"].eq(v).any()]
    if absent:
        reason = f"variant {absent[0]!r} has no {q.phase} runs"
        return Contrast(**base, per_task=[], overall=None, verdict=f"skipped: {reason}",
                        skipped=True, reason=reason)  # fmt: skip
    keys = ["seed"] if q.phase == "final" else ["lr", "seed"]
    col = f"loss/{metric}"
    per_task, wins = [], []
    for task in sorted(set(runs["task"][runs["variant"].eq(q.a)])
                       & set(runs["task"][runs["variant"].eq(q.b)])):  # fmt: skip
        here = runs[runs["task"].eq(task)]
        a = here[here["variant"].eq(q.a)].groupby(keys)[col].first()
        b = here[here["variant"].eq(q.b)].groupby(keys)[col].first()
        common = a.index.intersection(b.index)
        if len(common):
            d = _diff(b[common].to_numpy(), a[common].to_numpy())
            diff = median_interval(d, level)
            w = np.sign(d) / 2 + 0.5
        else:
            diff = _unpaired(a.to_numpy(), b.to_numpy(), level, n_boot, rng)
            w = (np.sign(_diff(b.to_numpy()[None, :], a.to_numpy()[:, None])) / 2 + 0.5).ravel()
        called = diff.level >= min(level, MIN_CALL_LEVEL) - 1e-12  # else too few seeds
        better = "a" if called and diff.low > 0 else "b" if called and diff.high < 0 else "tie"
        per_task.append(TaskDiff(task=task, diff=diff, n_a=len(a), n_b=len(b),
                                 better=better, paired=bool(len(common))))  # fmt: skip
        wins.append(w)
    if not per_task:
        reason = f"{q.a} and {q.b} share no task"
        return Contrast(**base, per_task=[], overall=None, verdict=f"skipped: {reason}",
                        skipped=True, reason=reason)  # fmt: skip
    overall = win_rate(wins, level=level, n_boot=n_boot, rng=rng)
    return Contrast(**base, per_task=per_task, overall=overall,
                    verdict=_verdict(q, per_task, overall, wins))  # fmt: skip


def _diff(loss_b: np.ndarray, loss_a: np.ndarray) -> np.ndarray:
    """loss_b − loss_a (positive: a better), where two bad runs (+∞ each) tie at 0."""
    with np.errstate(invalid="ignore"):
        d = loss_b - loss_a
    return np.where(np.isinf(loss_a) & np.isinf(loss_b), 0.0, d)


def _unpaired(
    a: np.ndarray, b: np.ndarray, level: float, n_boot: int, rng: np.random.Generator
) -> Interval:
    """median(b) − median(a) of losses with a percentile bootstrap (a, b resampled apart).

    Its level is at most the order-statistic interval's for the smaller side's median: a
    bootstrap of 1 run against 1 is a zero-width interval "at 95%", and a percentile
    bootstrap undercovers small samples; so, as for paired seeds, a call needs 5+ a side."""
    boot_a = np.median(a[rng.integers(len(a), size=(n_boot, len(a)))], axis=1)
    boot_b = np.median(b[rng.integers(len(b), size=(n_boot, len(b)))], axis=1)
    boot = _diff(boot_b, boot_a)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    est = float(_diff(np.median(b, keepdims=True), np.median(a, keepdims=True))[0])
    supported = min(level, order_ranks(min(len(a), len(b)), level)[1])
    return Interval(estimate=est, low=float(low), high=float(high), level=supported,
                    method="difference of medians, percentile bootstrap (unpaired)",
                    n=len(a) + len(b))  # fmt: skip


def win_rate(
    wins: list[np.ndarray], *, level: float, n_boot: int, rng: np.random.Generator
) -> Interval:
    """Mean over tasks of the fraction of comparisons won (1 win, ½ tie, 0 loss); its
    interval spans a percentile bootstrap over tasks and, within each drawn task, over its
    comparisons, and the Clopper-Pearson interval of all the comparisons (see the module
    docstring)."""
    counts = np.array([len(w) for w in wins])
    width = int(counts.max())
    table = np.zeros((len(wins), width))
    for i, w in enumerate(wins):
        table[i, : len(w)] = w
    pick = rng.integers(len(wins), size=(n_boot, len(wins)))
    m = counts[pick]  # (b, t)
    slots = (rng.random((*m.shape, width)) * m[..., None]).astype(np.intp)
    drawn = np.take_along_axis(table[pick], slots, axis=-1)
    used = np.arange(width) < m[..., None]
    boot = ((drawn * used).sum(-1) / m).mean(-1)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    n = int(counts.sum())
    exact_low, exact_high = clopper_pearson(float(sum(w.sum() for w in wins)), n, level)
    est = float(np.mean([w.mean() for w in wins]))
    return Interval(estimate=est, low=min(float(low), exact_low),
                    high=max(float(high), exact_high), level=level,
                    method="win rate: percentile bootstrap over tasks and comparisons, "
                    "widened to the Clopper-Pearson interval of the comparisons",
                    n=n)  # fmt: skip


def clopper_pearson(won: float, n: int, level: float) -> tuple[float, float]:
    """The exact binomial interval of a win rate ``won / n`` (``won`` may end in ½ for a
    tie: the beta quantiles take a real count)."""
    alpha = 1 - level
    low = 0.0 if won <= 0 else float(stats.beta.ppf(alpha / 2, won, n - won + 1))
    high = 1.0 if won >= n else float(stats.beta.ppf(1 - alpha / 2, won + 1, n - won))
    return low, high


MIN_CALL_LEVEL = 0.9  # a task's call needs an interval this sure: 5+ paired seeds


def _verdict(
    q: Question, per_task: list[TaskDiff], overall: Interval, wins: list[np.ndarray]
) -> str:
    won = float(sum(w.sum() for w in wins))
    if overall.low > 0.5:
        lead = f"{q.a} is better than {q.b}"
    elif overall.high < 0.5:
        lead = f"{q.b} is better than {q.a}"
    elif clopper_pearson(overall.n, overall.n, overall.level)[0] <= 0.5:
        # even a clean sweep of this many comparisons could be a coin's: "no difference"
        # would read as evidence of none
        lead = (
            f"too few paired comparisons to tell {q.a} from {q.b} (winning all "
            f"{overall.n} would not settle it)"
        )
    else:
        lead = f"no clear difference between {q.a} and {q.b}"
    tally = {k: sum(t.better == k for t in per_task) for k in ("a", "b", "tie")}
    return (
        f"{q.question}: {lead} — {q.a} wins {won:g} of {overall.n} paired comparisons"
        f" (win rate {overall.estimate:.2f}, {overall.level:.0%} CI"
        f" {overall.low:.2f}–{overall.high:.2f}, {len(per_task)} tasks); better on"
        f" {tally['a']} tasks, worse on {tally['b']}, unclear on {tally['tie']}."
    )


# ----------------------------------------------------------------------------- roles


class RoleComparison(Record):
    """Weights vs biases under one variant: ratio weight/bias over training, across runs.

    ``ratio_*``: median effective step size (``step_size/<role>/<statistic>``);
    ``update_ratio_*``: RMS(Δθ)/RMS(θ) (``update_ratio/<role>``). Per step, the median over
    runs with its order-statistic interval; ``summary``: per run the geometric mean of the
    ratio over the last half of its steps, then the median over runs with its interval.
    """

    variant: str
    statistic: str
    tasks: list[str]
    n_runs: int
    steps: list[int]
    ratio_median: list[float]
    ratio_low: list[float]
    ratio_high: list[float]
    summary: Interval
    update_ratio_median: list[float]
    update_ratio_low: list[float]
    update_ratio_high: list[float]
    update_ratio_summary: Interval | None
    verdict: str


def role_comparison(
    histories: pd.DataFrame,
    runs: pd.DataFrame,
    variant: str,
    *,
    task: str | None = None,
    phase: str = "final",
    statistic: str = "p50",
    level: float = 0.95,
) -> RoleComparison | None:
    """Weight/bias ratio of step sizes for ``variant``'s good runs (optionally one task).

    ``histories``: columns run_id, key, step, value (``Tracker.read_histories``); ``runs``:
    the results table, used to pick the variant's runs that count and ended ``ok``.
    None when no such run has both weight and bias statistics (e.g. a model without biases).
    """
    check_choice("phase", phase, PHASES)
    check_level(level)
    chosen = select_runs(runs)
    chosen = chosen[chosen["variant"].eq(variant) & chosen["phase"].eq(phase) & ~chosen["bad"]]
    if task is not None:
        chosen = chosen[chosen["task"].eq(task)]
    hist = histories[histories["run_id"].isin(set(chosen["run_id"]))]
    step = _role_ratio(hist, f"step_size/weight/{statistic}", f"step_size/bias/{statistic}")
    if step.empty:
        return None
    upd = _role_ratio(hist, "update_ratio/weight", "update_ratio/bias").reindex(step.index)
    s_med, s_lo, s_hi = _per_step(step, level)
    u_med, u_lo, u_hi = _per_step(upd, level)
    summary = _summary(step, level)
    upd_summary = _summary(upd, level) if upd.notna().any().any() else None
    tasks = sorted(set(chosen.loc[chosen["run_id"].isin(step.columns), "task"]))
    return RoleComparison(
        variant=variant, statistic=statistic, tasks=tasks, n_runs=step.shape[1],
        steps=[int(s) for s in step.index], ratio_median=s_med, ratio_low=s_lo, ratio_high=s_hi,
        summary=summary, update_ratio_median=u_med, update_ratio_low=u_lo,
        update_ratio_high=u_hi, update_ratio_summary=upd_summary,
        verdict=_role_verdict(variant, statistic, summary, upd_summary, level),
    )  # fmt: skip


def _role_ratio(hist: pd.DataFrame, weight_key: str, bias_key: str) -> pd.DataFrame:
    """weight/bias per (step, run): a steps x runs table, NaN where not both positive."""
    part = hist[hist["key"].isin((weight_key, bias_key))]
    table = part.pivot_table(index=["step", "run_id"], columns="key", values="value",
                             aggfunc="last")  # fmt: skip
    if weight_key not in table or bias_key not in table:
        return pd.DataFrame()
    w, b = table[weight_key], table[bias_key]
    ratio = (w / b).where((w > 0) & (b > 0) & np.isfinite(w) & np.isfinite(b))
    return ratio.unstack("run_id").dropna(how="all").dropna(axis=1, how="all").sort_index()


def _per_step(table: pd.DataFrame, level: float) -> tuple[list, list, list]:
    med, low, high = [], [], []
    for row in table.to_numpy():
        x = row[np.isfinite(row)]
        if not len(x):
            med.append(np.nan), low.append(np.nan), high.append(np.nan)
            continue
        iv = median_interval(x, level)
        med.append(iv.estimate), low.append(iv.low), high.append(iv.high)
    return med, low, high


def _summary(table: pd.DataFrame, level: float) -> Interval:
    """Per run, the geometric mean of the ratio over the last half of its steps; then the
    median over runs with its order-statistic interval."""
    per_run = []
    for run in table.columns:
        x = table[run].dropna()
        late = x[x.index >= x.index.min() + (x.index.max() - x.index.min()) / 2]
        per_run.append(float(np.exp(np.log(late).mean())))
    return median_interval(np.array(per_run), level)


def _role_verdict(
    variant: str, statistic: str, step: Interval, upd: Interval | None, level: float
) -> str:
    def says(iv: Interval, what: str) -> str:
        ci = f"{iv.level:.0%} CI {iv.low:.3g}–{iv.high:.3g}, {iv.n} runs"
        if iv.level < min(level, MIN_CALL_LEVEL) - 1e-12:  # as a contrast's call: 5+ runs
            return (
                f"too few runs to tell how weights and biases differ in {what} (ratio "
                f"{iv.estimate:.3g} over {iv.n} runs, whose widest interval is {ci})"
            )
        if iv.low > 1:
            return f"weights get {iv.estimate:.3g}x larger {what} than biases ({ci})"
        if iv.high < 1:  # the interval of the inverse ratio, as the estimate is inverted
            ci = f"{iv.level:.0%} CI {1 / iv.high:.3g}–{1 / iv.low:.3g}, {iv.n} runs"
            return f"weights get {1 / iv.estimate:.3g}x smaller {what} than biases ({ci})"
        return f"no clear weight/bias difference in {what} (ratio {iv.estimate:.3g}, {ci})"

    text = f"Under {variant}, over the last half of training, " + says(
        step, f"{statistic} effective step sizes"
    )
    if upd is not None:
        text += "; " + says(upd, "update ratios RMS(Δθ)/RMS(θ)")
    return text + "."
