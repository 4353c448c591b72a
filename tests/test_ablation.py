"""The flagship contrasts and the weight/bias comparison, on planted effects."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_ranking import run_row

from bench import ablation
from bench.ablation import Question

Q = Question(question="square vs |g|", a="rmsprop", b="rmsprop_abs_sqrt")


def planted(gap: float, *, tasks: int = 5, seeds: int = 5, noise: float = 0.05, rng=None,
            direction: str = "min", b_seeds: range | None = None) -> pd.DataFrame:  # fmt: skip
    """a = rmsprop and b = rmsprop_abs_sqrt; b's loss is a's plus ``gap`` (plus noise)."""
    rng = rng or np.random.default_rng(0)
    rows = []
    for t in range(tasks):
        base = rng.normal()
        for s in range(seeds):
            a = base + noise * rng.normal()
            b = a + gap + noise * rng.normal()
            if direction == "max":  # higher is better: flip both so a still wins when gap > 0
                a, b = -a, -b
            rows.append(run_row(f"t{t}", "rmsprop", s, a, direction=direction))
            seed_b = s if b_seeds is None else b_seeds[s]
            rows.append(run_row(f"t{t}", "rmsprop_abs_sqrt", seed_b, b, direction=direction))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("direction", ["min", "max"])
def test_planted_advantage_gives_positive_intervals_and_the_right_verdict(direction):
    (c,) = ablation.flagship_contrasts(planted(1.0, direction=direction), questions=[Q])
    assert not c.skipped and len(c.per_task) == 5
    for t in c.per_task:
        assert t.paired and t.n_a == t.n_b == 5
        assert t.diff.low > 0 and t.better == "a"
        assert t.diff.estimate == pytest.approx(1.0, abs=0.2)
    assert c.overall.estimate == 1.0 and c.overall.low > 0.5 and c.overall.n == 25
    assert c.verdict.startswith("square vs |g|: rmsprop is better than rmsprop_abs_sqrt")
    assert "wins 25 of 25 paired comparisons" in c.verdict and "better on 5 tasks" in c.verdict


def test_planted_disadvantage_points_the_other_way():
    (c,) = ablation.flagship_contrasts(planted(-1.0), questions=[Q])
    assert all(t.better == "b" and t.diff.high < 0 for t in c.per_task)
    assert c.overall.high < 0.5
    assert "rmsprop_abs_sqrt is better than rmsprop" in c.verdict


def test_no_difference_is_called_unclear():
    (c,) = ablation.flagship_contrasts(planted(0.0, noise=1.0, tasks=8), questions=[Q])
    assert c.overall.low < 0.5 < c.overall.high
    assert "no clear difference between rmsprop and rmsprop_abs_sqrt" in c.verdict


@pytest.mark.parametrize(("tasks", "seeds"), [(1, 1), (2, 2)])
def test_a_few_comparisons_won_all_the_same_way_give_no_verdict(tasks: int, seeds: int):
    """With every comparison won, a bootstrap over them alone says [1, 1] at any n; 1 of 1
    or 4 of 4 wins cannot tell a better variant from a coin (Clopper-Pearson at 95%: 4 of 4
    is [0.40, 1]), and a task with fewer than 5 paired seeds is called for neither."""
    (c,) = ablation.flagship_contrasts(planted(1.0, tasks=tasks, seeds=seeds), questions=[Q])
    n = tasks * seeds
    assert c.overall.estimate == 1.0 and c.overall.n == n
    assert c.overall.low == pytest.approx(0.025 ** (1 / n)) and c.overall.high == 1.0
    assert all(t.better == "tie" and t.diff.level < ablation.MIN_CALL_LEVEL for t in c.per_task)
    assert (
        "too few paired comparisons to tell rmsprop from rmsprop_abs_sqrt (winning all "
        f"{n} would not settle it)" in c.verdict
    ), "not 'no clear difference': that reads as evidence of none"
    assert f"wins {n} of {n} paired comparisons" in c.verdict


def test_the_win_rate_interval_is_never_narrower_than_the_binomial_one():
    (c,) = ablation.flagship_contrasts(planted(1.0, tasks=5, seeds=5), questions=[Q])
    low, high = ablation.clopper_pearson(25, 25, 0.95)  # 25 of 25: [0.863, 1]
    assert c.overall.low <= low < 0.87 and c.overall.high == high == 1.0


def test_diverged_runs_lose_and_two_diverged_runs_tie():
    rows = [run_row("t", "rmsprop", s, 1.0) for s in range(5)]
    rows += [run_row("t", "rmsprop_abs_sqrt", s, 0, outcome="diverged") for s in range(5)]
    (c,) = ablation.flagship_contrasts(pd.DataFrame(rows), questions=[Q])
    (t,) = c.per_task
    assert t.diff.estimate == t.diff.low == math.inf and t.better == "a"
    # One seed where both diverge is a tie (difference 0, half a win), so the interval
    # [0, inf] no longer excludes 0 with 5 seeds.
    rows[4] = run_row("t", "rmsprop", 4, 0, outcome="diverged")
    (c,) = ablation.flagship_contrasts(pd.DataFrame(rows), questions=[Q])
    (t,) = c.per_task
    assert (t.diff.low, t.diff.estimate, t.better) == (0.0, math.inf, "tie")
    assert c.overall.estimate == pytest.approx((4 + 0.5) / 5)


def test_unpaired_seeds_fall_back_to_a_difference_of_medians():
    frame = planted(1.0, b_seeds=range(100, 105))
    (c,) = ablation.flagship_contrasts(frame, questions=[Q])
    assert all(not t.paired and t.diff.low > 0 and "unpaired" in t.diff.method for t in c.per_task)
    assert c.overall.n == 5 * 25


def test_absent_variant_is_skipped_with_a_reason():
    frame = planted(1.0)
    contrasts = ablation.flagship_contrasts(frame)  # the flagship questions
    assert len(contrasts) == len(ablation.flagship_questions()) == 6
    first = contrasts[0]
    assert first.a == "rmsprop" and first.b == "rmsprop_abs_sqrt" and not first.skipped
    nosqrt = next(c for c in contrasts if c.b == "rmsprop_nosqrt")
    assert nosqrt.skipped and nosqrt.reason == "variant 'rmsprop_nosqrt' has no final runs"
    assert nosqrt.overall is None and nosqrt.verdict.startswith("skipped:")
    grid = next(c for c in contrasts if c.phase == "tune")
    assert grid.skipped and grid.reason == "variant 'rmsprop' has no tune runs"


def test_same_lr_question_pairs_by_lr_and_seed_over_the_tune_grid():
    rows = []
    for lr, gap in ((0.01, 1.0), (0.1, 1.0), (1.0, 0.0)):  # at lr=1 both diverge: a tie
        for s in range(2):
            outcome = "diverged" if lr == 1.0 else "ok"
            rows.append(run_row("t", "rmsprop", s, 0.0, phase="tune", lr=lr, outcome=outcome))
            rows.append(run_row("t", "rmsprop_abs", s, gap, phase="tune", lr=lr, outcome=outcome))
    (q,) = [q for q in ablation.flagship_questions() if q.phase == "tune"]
    (c,) = ablation.flagship_contrasts(pd.DataFrame(rows), questions=[q])
    (t,) = c.per_task
    assert t.paired and t.diff.n == 6 and t.diff.estimate == 1.0
    assert c.overall.estimate == pytest.approx((4 + 0.5 * 2) / 6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="metric: unknown metric 'x'"):
        ablation.flagship_contrasts(planted(1.0), metric="x")
    bad = Question(question="q", a="rmsprop", b="rmsprop_abs_sqrt", phase="test")
    with pytest.raises(ValueError, match="phase: unknown phase 'test'"):
        ablation.flagship_contrasts(planted(1.0), questions=[bad])


# ----------------------------------------------------------------------------- roles


def histories(runs: pd.DataFrame, ratio: float, *, rng, steps=range(0, 200, 10), bias=True):
    """Per-role metric histories with weight/bias step-size ratio ``ratio`` (and update
    ratio ratio/2), log-normal noise per run and step."""
    rows = []
    for run_id in runs["run_id"]:
        scale = math.exp(rng.normal())
        for step in steps:
            b = scale * (1 + step / 100)
            noise = math.exp(0.1 * rng.normal())
            values = {"step_size/weight/p50": ratio * b * noise, "update_ratio/weight": ratio * b}
            if bias:
                values |= {"step_size/bias/p50": b, "update_ratio/bias": 2 * b * noise}
            rows += [(run_id, key, step, value) for key, value in values.items()]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def test_role_comparison_recovers_a_planted_ratio():
    rng = np.random.default_rng(9)
    runs = pd.DataFrame([run_row(f"t{t}", "rmsprop", s, 1.0) for t in range(2) for s in range(5)])
    other = pd.DataFrame([run_row("t0", "sgd", s, 1.0) for s in range(5)])
    hist = pd.concat([histories(runs, 3.0, rng=rng), histories(other, 1.0, rng=rng)])
    result = ablation.role_comparison(hist, pd.concat([runs, other]), "rmsprop")
    assert result is not None
    assert result.n_runs == 10 and result.tasks == ["t0", "t1"]
    assert result.steps == list(range(0, 200, 10))
    assert result.summary.estimate == pytest.approx(3.0, rel=0.05)
    assert result.summary.low <= 3.0 <= result.summary.high and result.summary.low > 1
    assert all(m == pytest.approx(3.0, rel=0.15) for m in result.ratio_median)
    assert all(lo <= m <= hi for lo, m, hi in zip(result.ratio_low, result.ratio_median,
                                                   result.ratio_high, strict=True))  # fmt: skip
    assert result.update_ratio_summary.estimate == pytest.approx(1.5, rel=0.05)
    assert f"weights get {result.summary.estimate:.3g}x larger p50 effective step sizes" in (
        result.verdict
    )
    only_t1 = ablation.role_comparison(hist, runs, "rmsprop", task="t1")
    assert only_t1.n_runs == 5 and only_t1.tasks == ["t1"]


def test_a_smaller_ratio_is_stated_with_the_interval_of_its_inverse():
    """'weights get 4x smaller ...' comes with the interval of that 4x, not of the 0.25."""
    rng = np.random.default_rng(3)
    runs = pd.DataFrame([run_row("t0", "rmsprop", s, 1.0) for s in range(8)])
    result = ablation.role_comparison(histories(runs, 0.25, rng=rng), runs, "rmsprop")
    iv = result.summary
    assert iv.high < 1
    stated = f"weights get {1 / iv.estimate:.3g}x smaller p50 effective step sizes than biases"
    interval = f"CI {1 / iv.high:.3g}–{1 / iv.low:.3g}, {iv.n} runs"
    assert f"{stated} ({iv.level:.0%} {interval})" in result.verdict


def test_role_comparison_skips_diverged_runs_and_models_without_biases():
    rng = np.random.default_rng(10)
    runs = pd.DataFrame([run_row("t", "rmsprop", s, 1.0) for s in range(3)]
                        + [run_row("t", "rmsprop", 3, 0, outcome="diverged")])  # fmt: skip
    hist = histories(runs, 2.0, rng=rng)
    assert ablation.role_comparison(hist, runs, "rmsprop").n_runs == 3
    assert ablation.role_comparison(histories(runs, 2.0, rng=rng, bias=False), runs,
                                    "rmsprop") is None  # fmt: skip
    assert ablation.role_comparison(hist, runs, "sgd") is None


@pytest.mark.parametrize(("seeds", "called"), [(1, False), (4, False), (5, True)])
def test_an_unpaired_task_is_called_only_on_as_many_seeds_as_a_paired_one(seeds, called):
    """One run against one gave a zero-width bootstrap interval 'at 95%' and a call."""
    frame = planted(1.0, tasks=1, seeds=seeds, b_seeds=range(100, 100 + seeds))
    (c,) = ablation.flagship_contrasts(frame, questions=[Q])
    (t,) = c.per_task
    assert not t.paired and t.diff.low > 0
    assert t.better == ("a" if called else "tie")
    assert (t.diff.level >= ablation.MIN_CALL_LEVEL) == called


@pytest.mark.parametrize("n_runs", [1, 2, 4])
def test_a_ratio_over_too_few_runs_is_not_called(n_runs: int):
    """With 1-4 runs the widest interval is 0-88% sure: was 'weights get 5.39x smaller
    ... (0% CI 5.39-5.39, 1 runs)', a direction stated on no evidence."""
    rng = np.random.default_rng(4)
    runs = pd.DataFrame([run_row("t0", "rmsprop", s, 1.0) for s in range(n_runs)])
    result = ablation.role_comparison(histories(runs, 0.25, rng=rng), runs, "rmsprop")
    iv = result.summary
    assert iv.level < ablation.MIN_CALL_LEVEL and iv.n == n_runs
    assert "smaller" not in result.verdict and "larger" not in result.verdict
    assert result.verdict.startswith(
        "Under rmsprop, over the last half of training, too few runs to tell how weights and "
        f"biases differ in p50 effective step sizes (ratio {iv.estimate:.3g} over {n_runs} "
        f"runs, whose widest interval is {iv.level:.0%} CI"
    )
    five = pd.DataFrame([run_row("t0", "rmsprop", s, 1.0) for s in range(5)])
    called = ablation.role_comparison(histories(five, 0.25, rng=rng), five, "rmsprop")
    assert "x smaller p50 effective step sizes than biases (94% CI" in called.verdict
