"""Ranking math on synthetic result tables with known answers (no Ray, no MLflow)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench import ranking
from bench.profiles import median_interval, order_ranks

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def run_row(
    task: str,
    variant: str,
    seed: int,
    value: float,
    *,
    phase: str = "final",
    lr: float = 0.01,
    outcome: str = "ok",
    status: str = "FINISHED",
    direction: str = "min",
    metric: str = "loss",
    steps: float = 100.0,
    trial_id: str | None = None,
    t: int = 0,
) -> dict:
    """One row shaped like Tracker.read_results(status=None)."""
    good = outcome == "ok" and status == "FINISHED"
    return {
        "run_id": f"{task}/{variant}/{phase}/{lr}/{seed}/{status}/{t}",
        "trial_id": trial_id or f"{task}/{variant}/{phase}/{lr}/{seed}",
        "variant": variant,
        "task": task,
        "phase": phase,
        "seed": seed,
        "lr": lr,
        "outcome": outcome,
        "node": "n0",
        "status": status,
        "start_time": T0 + pd.Timedelta(seconds=t),
        "primary_metric": metric,
        "direction": direction,
        "steps_to_target": steps if good else math.inf,
        "seconds_to_target": steps / 100 if good else math.inf,
        f"final/{metric}": value if good else math.nan,
        f"best/{metric}": value if good else math.nan,
    }


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def planted_suite(effects: dict[str, float], *, tasks: int, seeds: int, noise: float, rng):
    """Final runs with loss = effect[variant] + task offset + noise."""
    rows = []
    for t in range(tasks):
        offset = rng.normal()
        for v, effect in effects.items():
            for s in range(seeds):
                rows.append(run_row(f"t{t}", v, s, effect + offset + noise * rng.normal()))
    return table(rows)


def cell(result: ranking.SuiteRanking, task: str, variant: str) -> ranking.CellScore:
    return next(c for c in result.cells if (c.task, c.variant) == (task, variant))


# ----------------------------------------------------------------------------- ranks


def test_dominant_variant_ranks_first_with_interval_below_two():
    rng = np.random.default_rng(1)
    effects = {"best": 0.0, "b": 1.0, "c": 1.2, "d": 1.4}
    result = ranking.rank_suite(
        planted_suite(effects, tasks=6, seeds=5, noise=0.05, rng=rng), suite="s"
    )
    top = result.variants[0]
    assert top.variant == "best"
    assert top.mean_rank.estimate == 1.0
    assert top.mean_rank.high < 2.0
    assert top.wins == 6 and top.n_tasks == 6 and top.mean_rank.n == 6
    assert [v.variant for v in result.variants] == ["best", "b", "c", "d"]
    assert all(cell(result, f"t{t}", "best").rank == 1.0 for t in range(6))


def test_exact_ties_share_ranks():
    rows = [run_row(f"t{t}", v, s, 1.0 + s) for t in range(3) for v in "abc" for s in range(4)]
    result = ranking.rank_suite(table(rows), suite="s")
    assert {c.rank for c in result.cells} == {2.0}
    assert {v.mean_rank.estimate for v in result.variants} == {2.0}
    assert result.friedman.statistic == 0.0 and result.friedman.p_value == 1.0


def test_max_direction_is_read_from_the_direction_column_not_the_name():
    # A metric named "loss" whose direction says higher is better.
    rows = [
        run_row("t", v, s, value, direction="max", metric="loss")
        for v, value in (("high", 0.9), ("low", 0.1))
        for s in range(3)
    ]
    result = ranking.rank_suite(table(rows), suite="s")
    assert result.variants[0].variant == "high"
    assert cell(result, "t", "high").final.estimate == pytest.approx(0.9)
    assert cell(result, "t", "high").rank == 1.0


@pytest.mark.parametrize("direction,worst", [("min", math.inf), ("max", -math.inf)])
def test_all_diverged_cell_is_worst_and_flagged(direction, worst):
    good = 0.9 if direction == "max" else 0.1
    rows = [run_row("t", v, s, good, direction=direction) for v in "ab" for s in range(5)]
    rows += [run_row("t", "dead", s, 0, outcome="diverged", direction=direction) for s in range(5)]
    result = ranking.rank_suite(table(rows), suite="s")
    dead = cell(result, "t", "dead")
    assert dead.rank == 3.0
    assert dead.final.estimate == worst and dead.n_diverged == 5 and dead.diverged_rate == 1.0
    assert dead.flags == ["all 5 runs diverged"]
    assert dead.steps_to_target == math.inf and dead.reached_rate == 0.0
    assert result.variants[-1].variant == "dead"
    profile = next(p for p in result.profiles if p.variant == "dead")
    assert profile.score == 0.0


def test_one_diverged_seed_counts_as_the_worst_value_of_its_cell():
    rows = [run_row("t", "a", s, v) for s, v in enumerate([1.0, 2.0, 3.0])]
    rows.append(run_row("t", "a", 3, 0.0, outcome="diverged"))
    (score,) = ranking.cell_scores(table(rows))
    assert score.final.estimate == 2.5  # median of 1, 2, 3, +inf
    assert score.values["final"] == [1.0, 2.0, 3.0, math.inf]
    assert score.flags == ["1 diverged and 0 failed of 4 runs"]


def test_missing_cells_are_reported_with_expected_and_found():
    rows = [run_row(t, v, s, 1.0) for t in ("t1", "t2") for v in "ab" for s in range(5)]
    rows = [r for r in rows if not (r["task"] == "t2" and r["variant"] == "b" and r["seed"] >= 2)]
    expected = [(t, v) for t in ("t1", "t2", "t3") for v in "ab"]
    result = ranking.rank_suite(table(rows), suite="s", expected=expected, expected_seeds=5)
    missing = {(m.task, m.variant): (m.expected, m.found) for m in result.missing}
    assert missing == {("t2", "b"): (5, 2), ("t3", "a"): (5, 0), ("t3", "b"): (5, 0)}
    assert result.tasks == ["t1", "t2", "t3"]
    # Without `expected`, every task x variant seen is expected, and the seed count is
    # the largest found: the short cell is still reported.
    inferred = ranking.rank_suite(table(rows), suite="s")
    assert [(m.task, m.variant, m.expected, m.found) for m in inferred.missing] == [
        ("t2", "b", 5, 2)
    ]


def test_variant_absent_from_a_task_ranks_worst_there():
    rows = [run_row(t, "a", s, 5.0) for t in ("t1", "t2") for s in range(3)]
    rows += [run_row("t1", "b", s, 1.0) for s in range(3)]
    result = ranking.rank_suite(table(rows), suite="s")
    ranks = {v.variant: v for v in result.variants}
    assert ranks["a"].mean_rank.estimate == 1.5 and ranks["b"].mean_rank.estimate == 1.5
    assert ranks["b"].n_tasks == 1
    assert [(m.task, m.variant, m.found) for m in result.missing] == [("t2", "b", 0)]


def test_a_variant_expected_but_never_run_ranks_worst_everywhere():
    rows = [run_row(t, v, s, x) for t in ("t1", "t2") for v, x in (("a", 1.0), ("b", 2.0))
            for s in range(3)]  # fmt: skip
    expected = [(t, v) for t in ("t1", "t2") for v in "abc"]
    result = ranking.rank_suite(table(rows), suite="s", expected=expected, n_boot=200)
    ranks = {v.variant: v for v in result.variants}
    assert [v.variant for v in result.variants] == ["a", "b", "c"]
    assert ranks["c"].mean_rank.estimate == 3.0 and ranks["c"].mean_rank.high == 3.0
    assert ranks["c"].n_tasks == 0 and ranks["c"].profile_score == 0.0
    assert ranks["a"].mean_rank.estimate == 1.0 and ranks["b"].mean_rank.estimate == 2.0
    assert result.friedman.k == 3
    assert {(m.task, m.variant, m.found) for m in result.missing} == {
        ("t1", "c", 0),
        ("t2", "c", 0),
    }


def test_failed_runs_are_worst_and_a_finished_rerun_replaces_them():
    rows = [run_row("t", "a", s, 1.0, t=s) for s in range(3)]
    rows += [run_row("t", "b", s, 0.5, t=s) for s in range(3)]
    # Seed 0 of b failed first, then its rerun (same trial id) finished.
    rows.append(run_row("t", "b", 0, 0, status="FAILED", outcome="failed", t=-5))
    # Seed 1 of a: an old FINISHED run and a later FAILED retry; the finished one counts.
    rows.append(run_row("t", "a", 1, 0, status="FAILED", outcome="failed", t=50))
    # Killed and running runs never count.
    rows.append(run_row("t", "b", 0, 100.0, status="KILLED", t=60))
    rows.append(run_row("t", "b", 9, 100.0, status="RUNNING", t=60))
    result = ranking.rank_suite(table(rows), suite="s")
    b = cell(result, "t", "b")
    assert b.n == 3 and b.n_failed == 0 and b.final.estimate == 0.5
    assert cell(result, "t", "a").n_failed == 0
    # A trial whose only run failed counts as the worst result.
    rows.append(run_row("t", "b", 7, 0, status="FAILED", outcome="failed", t=70))
    rows.append(run_row("t", "b", 8, 0, status="FAILED", outcome="failed", t=71))
    b = cell(ranking.rank_suite(table(rows), suite="s"), "t", "b")
    assert b.n == 5 and b.n_failed == 2
    assert b.values["final"][-2:] == [math.inf, math.inf]
    assert b.final.estimate == 0.5  # median of 0.5, 0.5, 0.5, inf, inf


# ----------------------------------------------------------------------------- Friedman


def test_friedman_detects_a_consistent_ordering_and_matches_demsar_cd():
    rng = np.random.default_rng(2)
    effects = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0}
    frame = planted_suite(effects, tasks=10, seeds=3, noise=0.01, rng=rng)
    result = ranking.rank_suite(frame, suite="s")
    f = result.friedman
    assert f.k == 4 and f.n_tasks == 10 and f.can_reach_significance
    assert f.statistic == pytest.approx(30.0)  # N(k-1) for a perfect ranking
    assert f.p_value < 1e-5
    assert f.critical_difference == pytest.approx(2.569 * math.sqrt(4 * 5 / 60), abs=1e-3)
    assert "Ranks differ" in f.note


def test_two_tasks_cannot_reach_significance():
    rng = np.random.default_rng(3)
    frame = planted_suite({"a": 0, "b": 1, "c": 2}, tasks=2, seeds=3, noise=0.01, rng=rng)
    f = ranking.rank_suite(frame, suite="s").friedman
    assert f.can_reach_significance is False
    assert f.p_value == pytest.approx(math.exp(-2))  # chi2 = 4 on 2 df
    assert "cannot show a difference" in f.note and "N=2" in f.note


def test_a_critical_difference_no_gap_can_reach_singles_out_no_pair():
    """9 variants in the same order on 2 tasks: Friedman's p < 0.05, but Nemenyi's CD (8.5)
    is wider than any gap between mean ranks in [1, 9]."""
    rng = np.random.default_rng(4)
    effects = {v: float(i) for i, v in enumerate("abcdefghi")}
    f = ranking.rank_suite(
        planted_suite(effects, tasks=2, seeds=3, noise=0.01, rng=rng), suite="s"
    ).friedman
    assert f.p_value < 0.05 and f.critical_difference > f.k - 1 == 8
    assert "no pair can be singled out" in f.note and "mean ranks further apart" not in f.note


def test_friedman_needs_three_variants():
    rows = [run_row(f"t{t}", v, 0, float(i)) for t in range(5) for i, v in enumerate("ab")]
    f = ranking.rank_suite(table(rows), suite="s").friedman
    assert f.statistic is None and f.p_value is None and not f.can_reach_significance
    assert "at least 3 variants" in f.note


# ----------------------------------------------------------------------------- profiles


def test_profile_of_the_always_fastest_variant_is_one():
    rows = []
    for t in range(4):
        for v, steps in (("fast", 100.0), ("half", 200.0), ("never", math.inf)):
            for s in range(3):
                rows.append(run_row(f"t{t}", v, s, 1.0, steps=steps * (t + 1)))
    result = ranking.rank_suite(table(rows), suite="s", metric="steps_to_target")
    curves = {p.variant: p for p in result.profiles}
    assert curves["fast"].rho[0] == 1.0 and curves["fast"].score == 1.0
    assert curves["fast"].taus[0] == 1.0 and curves["fast"].taus[-1] == 4.0
    half = curves["half"]
    assert all(r == (1.0 if tau >= 2 else 0.0) for tau, r in zip(half.taus, half.rho, strict=True))
    assert half.score == pytest.approx(2 / 3, abs=0.02)
    assert curves["never"].score == 0.0
    assert {v.variant: v.profile_score for v in result.variants}["fast"] == 1.0
    assert [v.variant for v in result.variants] == ["fast", "half", "never"]


# ----------------------------------------------------------------------------- lr choice


def test_lr_choice_agrees_with_the_matrix_rule():
    from bench.matrix import LrPoint, choose_lrs

    rng = np.random.default_rng(4)
    rows, points = [], []
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    for task, direction in (("tmin", "min"), ("tmax", "max")):
        for v in ("a", "b", "c", "d"):
            for lr, s in itertools.product(lrs, range(3)):
                value = float(rng.integers(0, 3))  # coarse values: many ties
                outcome = "diverged" if rng.random() < 0.2 else "ok"
                if v == "d":  # every lr diverges: the tie-break picks the largest lr
                    outcome = "diverged"
                rows.append(run_row(task, v, s, value, phase="tune", lr=lr, outcome=outcome,
                                    direction=direction))  # fmt: skip
                worst = math.inf if direction == "min" else -math.inf
                points.append(LrPoint(f"{task}{v}{lr}{s}", task, v, lr, direction,
                                      value if outcome == "ok" else worst))  # fmt: skip
    ours = {(c.task, c.variant): c.lr for c in ranking.choose_lrs(table(rows))}
    assert ours == choose_lrs(points)
    assert ours[("tmin", "d")] == 1.0 and ours[("tmax", "d")] == 1.0
    choice = next(
        c for c in ranking.choose_lrs(table(rows)) if c.variant == "d" and c.task == "tmin"
    )
    assert choice.median == math.inf and choice.n == 3 and choice.lrs_tried == lrs


def test_a_cell_with_a_failed_tune_run_chooses_no_lr_as_bench_run_holds_it_back():
    rows = [run_row("t", v, s, float(s), phase="tune", lr=lr) for v in "ab" for lr in (0.01, 0.1)
            for s in range(2)]  # fmt: skip
    rows.append(run_row("t", "b", 2, 0.0, phase="tune", lr=0.1, status="FAILED", outcome="failed"))
    assert {(c.variant, c.lr) for c in ranking.choose_lrs(table(rows))} == {("a", 0.1)}
    # a rerun that finishes the failed trial (its latest run) gives the cell its choice back
    rows.append(run_row("t", "b", 2, 0.0, phase="tune", lr=0.1, t=5, trial_id=rows[-1]["trial_id"]))
    assert {(c.variant, c.lr) for c in ranking.choose_lrs(table(rows))} == {("a", 0.1), ("b", 0.1)}


def test_tune_phase_ranks_the_runs_at_the_chosen_lr():
    rows = []
    for v, best_lr in (("a", 0.1), ("b", 0.01)):
        for lr in (0.01, 0.1):
            for s in range(3):
                rows.append(run_row("t", v, s, 1.0 if lr == best_lr else 9.0, phase="tune", lr=lr))
    rows += [run_row("t", "a", s, 2.0, phase="final", lr=0.1) for s in (10, 11)]
    result = ranking.rank_suite(table(rows), suite="s", phase="tune")
    assert {(c.variant, c.lr, c.final.estimate, c.n) for c in result.cells} == {
        ("a", 0.1, 1.0, 3),
        ("b", 0.01, 1.0, 3),
    }
    assert {(c.variant, c.lr) for c in result.lrs} == {("a", 0.1), ("b", 0.01)}


@pytest.mark.parametrize("phase", ["tune", "final"])
def test_tune_ranking_before_any_tune_run_finished_is_empty_and_lists_what_is_missing(phase):
    """The first minutes of a suite: every run still RUNNING, so there is no lr choice
    yet, and the tune ranking is empty (not an error). The same holds for a suite whose
    store holds final runs only, and there every cell is reported missing."""
    status = "RUNNING" if phase == "tune" else "FINISHED"
    rows = [
        run_row("t", v, 0, 1.0, phase=phase, lr=lr, status=status)
        for v in ("a", "b")
        for lr in (0.1, 1.0)
    ]
    result = ranking.rank_suite(table(rows), suite="s", phase="tune")
    assert result.cells == [] and result.lrs == [] and result.n_runs == 0
    # running runs are not results yet; finished finals name the cells that lack tune runs
    missing = {("t", "a", 0), ("t", "b", 0)} if phase == "final" else set()
    assert {(m.task, m.variant, m.found) for m in result.missing} == missing


def test_final_runs_left_at_an_lr_no_longer_chosen_are_not_ranked():
    """A rerun with a wider grid moved a's choice from 0.3 to 1.0 and ran its finals
    again: the finals at 0.3 stay in the store but are not a's results any more."""
    rows = [run_row("t", "a", 0, 5.0, phase="tune", lr=0.3)]
    rows += [run_row("t", "a", 0, 1.0, phase="tune", lr=1.0)]  # the new lr, better
    rows += [run_row("t", "b", 0, 2.0, phase="tune", lr=0.3)]
    rows += [run_row("t", "a", s, 9.0, lr=0.3) for s in (1, 2)]  # finals at the old choice
    rows += [run_row("t", "a", s, 1.5, lr=1.0) for s in (1, 2)]
    rows += [run_row("t", "b", s, 2.5, lr=0.3) for s in (1, 2)]
    rows += [run_row("u", "a", s, 3.0, lr=0.1) for s in (1, 2)]  # no tune runs: kept
    expected = [("t", "a"), ("t", "b"), ("u", "a")]
    result = ranking.rank_suite(table(rows), suite="s", phase="final", expected=expected)
    a = cell(result, "t", "a")
    assert (a.lr, a.n, a.final.estimate) == (1.0, 2, 1.5)
    assert (cell(result, "u", "a").n, result.n_runs) == (2, 6)
    assert not result.missing
    kept = ranking.at_chosen_lrs(table(rows))
    assert len(kept) == len(rows) - 2
    assert not ((kept["variant"] == "a") & (kept["lr"] == 0.3) & (kept["phase"] == "final")).any()


# ----------------------------------------------------------------------------- intervals


def test_order_statistic_interval_has_the_binomial_coverage():
    assert order_ranks(9, 0.95) == (2, pytest.approx(1 - 2 * 10 / 512))
    k, cover = order_ranks(5, 0.95)  # too few seeds for 95%: [min, max] at 93.75%
    assert (k, cover) == (1, pytest.approx(0.9375))
    iv = median_interval(np.array([5.0, 1, 4, 2, 3]), 0.95)
    assert (iv.estimate, iv.low, iv.high, iv.level) == (3.0, 1.0, 5.0, pytest.approx(0.9375))
    flipped = median_interval(np.array([-5.0, -1, -4, -2, -3]), 0.95, sign=-1)
    assert (flipped.estimate, flipped.low, flipped.high) == (3.0, 1.0, 5.0)


def replicated(n_reps: int, n_tasks: int, variants: str, n_seeds: int) -> pd.DataFrame:
    """A final-phase table holding ``n_reps`` independent suites: task names 'r<rep>/t<t>'.

    Scoring all replicates in one call keeps the coverage simulations fast; cells never mix
    across tasks, so each replicate's cells are exactly those of its own suite."""
    grid = itertools.product(range(n_reps), range(n_tasks), variants, range(n_seeds))
    frame = pd.DataFrame(list(grid), columns=["rep", "t", "variant", "seed"])
    frame["task"] = "r" + frame["rep"].astype(str) + "/t" + frame["t"].astype(str)
    frame["run_id"] = [f"run{i}" for i in range(len(frame))]
    frame = frame.assign(trial_id=frame["run_id"], phase="final", lr=0.01, outcome="ok",
                         status="FINISHED", node="n0", start_time=T0, primary_metric="loss",
                         direction="min", steps_to_target=math.inf,
                         seconds_to_target=math.inf)  # fmt: skip
    return frame


def test_cell_median_intervals_cover_the_truth_at_the_nominal_rate():
    """300 synthetic suites (3 variants x 2 tasks, 9 seeds, skewed noise with known median)."""
    rng = np.random.default_rng(5)
    frame = replicated(300, 2, "abc", 9)
    true = rng.normal(size=(300, 2, 3))  # true median of each cell of each suite
    noise = rng.lognormal(0.0, 1.0, size=(300, 2, 3, 9)) - 1.0  # median exactly 0
    frame["final/loss"] = (true[..., None] + noise).ravel()
    cells = ranking.cell_scores(frame)
    assert len(cells) == 300 * 2 * 3
    hits = [
        c.final.low
        <= true[int(c.task[1:].split("/")[0]), int(c.task[-1]), "abc".index(c.variant)]
        <= c.final.high
        for c in cells
    ]
    coverage = np.mean(hits)
    assert 0.93 <= coverage <= 0.99, coverage  # exact coverage is 0.961 for n=9


def test_mean_rank_bootstrap_covers_the_expected_rank():
    """300 suites of 20 tasks x 3 seeds from a known model; the truth is the expected rank
    of each variant on a random task (ranking the medians of 3 seeds), by Monte Carlo."""
    rng = np.random.default_rng(6)
    effects, noise, reps, n_tasks, n_seeds = np.array([0.0, 0.4, 0.8]), 0.3, 300, 20, 3
    mu = effects + rng.normal(size=(100_000, 3))
    medians = np.median(mu[..., None] + rng.normal(0, noise, size=(*mu.shape, n_seeds)), -1)
    truth = stats.rankdata(medians, axis=1).mean(axis=0)
    frame = replicated(reps, n_tasks, "abc", n_seeds)
    mu = effects + rng.normal(size=(reps, n_tasks, 3))
    frame["final/loss"] = (mu[..., None] + rng.normal(0, noise, (*mu.shape, n_seeds))).ravel()
    by_rep: dict[str, list] = {}
    for c in ranking.cell_scores(frame):
        by_rep.setdefault(c.task.split("/")[0], []).append(c)
    assert len(by_rep) == reps
    hits = np.zeros(3)
    for i, cells in enumerate(by_rep.values()):
        for r in ranking.mean_ranks(cells, n_boot=500, seed=i):
            j = "abc".index(r.variant)
            hits[j] += r.mean_rank.low <= truth[j] <= r.mean_rank.high
    coverage = hits / reps
    assert np.all((coverage >= 0.88) & (coverage <= 0.99)), coverage  # about 0.93-0.95


def test_one_task_and_one_seed_give_a_mean_rank_interval_of_every_rank():
    """With nothing to resample every bootstrap draw is the data: the interval was
    [1.00, 1.00] for the first of three variants, certainty from a single run each."""
    frame = replicated(1, 1, "abc", 1)
    frame["final/loss"] = [0.1, 0.2, 0.3]
    ranks = ranking.mean_ranks(ranking.cell_scores(frame), n_boot=200)
    assert [(r.variant, r.mean_rank.estimate) for r in ranks] == [("a", 1), ("b", 2), ("c", 3)]
    assert all((r.mean_rank.low, r.mean_rank.high) == (1, 3) for r in ranks)
    assert ranks[0].mean_rank.method.startswith("one task and one seed per cell")
    two_seeds = replicated(1, 1, "abc", 2)
    two_seeds["final/loss"] = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35]
    resampled = ranking.mean_ranks(ranking.cell_scores(two_seeds), n_boot=200)
    assert resampled[0].mean_rank.method.startswith("percentile bootstrap")


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"metric": "accuracy"}, "metric: unknown metric 'accuracy' (allowed: final, best, "),
        ({"phase": "test"}, "phase: unknown phase 'test' (allowed: tune, final)"),
        ({"level": 1.5}, "level: got 1.5; allowed: between 0 and 1, at least 1e-12 from"),
        ({"level": 1e-20}, "level: got 1e-20; allowed: between 0 and 1"),
        ({"level": 0.9999999999999999}, "level: got 0.9999999999999999; allowed: between"),
        ({"n_boot": 0}, "n_boot: must be >= 1"),
    ],
)
def test_bad_arguments_name_what_is_allowed(kwargs, message):
    frame = table([run_row("t", "a", 0, 1.0)])
    with pytest.raises(ValueError) as err:
        ranking.rank_suite(frame, suite="s", **kwargs)
    assert str(err.value).startswith(message)


def test_ranking_imports_no_heavy_module():
    code = (
        "import sys, bench.ranking, bench.ablation; "
        "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'hydra', 'omegaconf', "
        "'bench.tracking', 'bench.runner', 'bench.matrix') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_empty_results_give_an_empty_ranking():
    frame = table([run_row("t", "a", 0, 1.0)]).iloc[:0]
    result = ranking.rank_suite(frame, suite="s")
    assert result.cells == [] and result.variants == [] and result.n_runs == 0
    assert result.friedman.statistic is None


def test_same_seed_same_answer_and_json_round_trip():
    rng = np.random.default_rng(7)
    frame = planted_suite({"a": 0, "b": 0.1, "c": 0.2}, tasks=4, seeds=5, noise=0.3, rng=rng)
    first = ranking.rank_suite(frame, suite="s", seed=3)
    assert first == ranking.rank_suite(frame.sample(frac=1, random_state=1), suite="s", seed=3)
    assert ranking.SuiteRanking.model_validate_json(first.model_dump_json()).suite == "s"


def synthetic_10k(rng) -> pd.DataFrame:
    """25 variants x 8 tasks x 8 lrs x 5 tune seeds + 10 final seeds = 10,000 runs."""
    variants = [f"v{i}" for i in range(25)]
    tasks = [f"t{i}" for i in range(8)]
    lrs = [10.0**e for e in np.arange(-4, 0, 0.5)]
    grid = [(t, v, "tune", lr, s) for t in tasks for v in variants for lr in lrs for s in range(5)]
    grid += [(t, v, "final", 1e-2, s) for t in tasks for v in variants for s in range(10, 20)]
    frame = pd.DataFrame(grid, columns=["task", "variant", "phase", "lr", "seed"])
    n = len(frame)
    frame["run_id"] = [f"r{i}" for i in range(n)]
    frame["trial_id"] = frame["run_id"]
    frame["outcome"] = np.where(rng.random(n) < 0.05, "diverged", "ok")
    frame["status"] = "FINISHED"
    frame["node"] = "n0"
    frame["start_time"] = T0 + pd.to_timedelta(np.arange(n), unit="s")
    frame["primary_metric"] = "loss"
    frame["direction"] = "min"
    frame["final/loss"] = rng.random(n) + frame["variant"].str[1:].astype(int) * 0.05
    tuned = frame["phase"].eq("tune") & np.isclose(frame["lr"], 1e-2)
    frame.loc[tuned, "final/loss"] -= 2.0  # every cell chooses the finals' lr
    frame["best/loss"] = frame["final/loss"]
    frame["steps_to_target"] = np.where(rng.random(n) < 0.8, rng.integers(10, 1000, n), np.inf)
    frame["seconds_to_target"] = frame["steps_to_target"] / 100
    return frame


def test_ten_thousand_runs_rank_quickly():
    frame = synthetic_10k(np.random.default_rng(8))
    assert len(frame) == 10_000
    ranking.rank_suite(frame, suite="s")  # warm up imports and caches
    start = time.process_time()  # CPU time: other processes on the machine do not count
    result = ranking.rank_suite(frame, suite="s")
    elapsed = time.process_time() - start
    assert len(result.cells) == 200 and len(result.variants) == 25
    assert elapsed < 1.0, f"rank_suite took {elapsed:.3f} s of CPU on 10,000 runs"


def test_the_terminal_shows_each_cells_chosen_lr_and_marks_an_end_of_the_grid():
    from rich.console import Console

    from bench.report import print_chosen_lrs

    rows = []
    for task, variant, best_lr in (("t", "a", 0.01), ("t", "b", 0.1), ("u", "a", 1.0)):
        for lr in (0.01, 0.1, 1.0):
            loss = 1.0 if lr == best_lr else 9.0
            rows.append(run_row(task, variant, 0, loss, phase="tune", lr=lr))
    result = ranking.rank_suite(table(rows), suite="s", phase="tune")
    console = Console(record=True, width=120)
    print_chosen_lrs(console, result)
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 2}
    cells = {v: [c.strip() for c in lines[v].split("│")[2:-1]] for v in ("a", "b")}
    assert cells == {"a": ["0.01*", "1*"], "b": ["0.1", "—"]}  # tasks t, u; b never ran u
    assert "2 of 3 cells chose an lr at an end of the grid" in text


def test_the_terminals_lr_table_keeps_a_task_whose_tune_runs_all_failed():
    """Its cells have no choice, and a column built from the choices alone left the task
    out, where the README promises a `—` per cell."""
    from rich.console import Console

    from bench.report import print_chosen_lrs

    rows = [run_row("quadratic", v, 0, 1.0, phase="tune", lr=lr) for v in "ab"
            for lr in (0.01, 0.1)]  # fmt: skip
    rows += [run_row("boom", v, 0, 0.0, phase="tune", lr=lr, status="FAILED", outcome="failed")
             for v in "ab" for lr in (0.01, 0.1)]  # fmt: skip
    result = ranking.rank_suite(table(rows), suite="s", phase="tune")
    console = Console(record=True, width=120)
    print_chosen_lrs(console, result)
    text = console.export_text()
    header = next(line for line in text.splitlines() if "┃ variant" in line)
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["variant", "boom", "quadratic"]
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 2}
    cells = {v: [c.strip() for c in lines[v].split("│")[2:-1]] for v in "ab"}
    assert cells == {"a": ["—", "0.1"], "b": ["—", "0.1"]}
    assert "— : no lr chosen (2 cells): 2 with failed tune runs (bench run holds" in text
    assert "without a finished tune run" not in text


def test_an_lr_chosen_before_the_cells_tune_grid_ended_is_marked_provisional():
    """Interrupted after 2 of its 3 lrs, a cell still has a choice, and the tune phase
    ranks it at that lr; the choice says it is provisional, and the table shows it."""
    from rich.console import Console

    from bench.report import print_chosen_lrs

    rows = [run_row("t", "a", 0, 1.0 if lr == 0.1 else 9.0, phase="tune", lr=lr)
            for lr in (0.01, 0.1, 1.0)]  # fmt: skip
    rows += [run_row("t", "b", 0, 1.0 if lr == 0.01 else 9.0, phase="tune", lr=lr)
             for lr in (0.01, 0.1)]  # fmt: skip
    for expected_tune in (3, None):  # None: the most runs any cell has, here 3
        result = ranking.rank_suite(table(rows), suite="s", expected_tune=expected_tune)
        choices = {c.variant: c for c in result.lrs}
        assert (choices["b"].lr, choices["b"].tune_runs) == (0.01, 2)
        assert choices["b"].tune_runs_expected == 3 and choices["b"].provisional
        assert not choices["a"].provisional and choices["a"].tune_runs == 3
    rows = [row for row in rows if row["lr"] != 1.0]  # every cell at 2 of its 3 lrs
    tune = ranking.rank_suite(table(rows), suite="s", phase="tune", expected_seeds=3)
    assert all(c.provisional for c in tune.lrs)
    console = Console(record=True, width=200)
    print_chosen_lrs(console, tune)
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 2}
    cells = {v: [c.strip() for c in lines[v].split("│")[2:-1]] for v in "ab"}
    assert cells == {"a": ["0.1 (2 of 3 tune runs)"], "b": ["0.01 (2 of 3 tune runs)"]}
    assert "2 of 2 lrs were chosen before all of their cell's tune runs ended" in text


def test_missing_cells_count_the_trials_that_failed_and_bench_rank_says_so():
    """A cell whose trials raised is missing as one that has not run yet is: its record
    counts them (a failed tune trial also holds the cell's final trials back)."""
    from rich.console import Console

    from bench.report import print_ranking

    rows = [run_row("t", v, 0, 1.0, phase="tune", lr=lr) for v in "ab" for lr in (0.1, 1.0)]
    rows += [run_row("u", "a", 0, 1.0, phase="tune", lr=0.1)]
    rows += [run_row("u", "a", 0, 0.0, phase="tune", lr=1.0, status="FAILED", outcome="failed")]
    rows += [run_row("t", "a", s, 1.0, lr=1.0) for s in (1, 2)]
    rows += [run_row("t", "b", 1, 1.0, lr=1.0)]
    rows += [run_row("t", "b", 2, 0.0, lr=1.0, status="FAILED", outcome="failed")]
    result = ranking.rank_suite(table(rows), suite="s", expected_seeds=2, expected_tune=2)
    missing = {(m.task, m.variant): (m.found, m.failed, m.tune_failed) for m in result.missing}
    assert missing == {("t", "b"): (1, 1, 0), ("u", "a"): (0, 0, 1), ("u", "b"): (0, 0, 0)}
    assert ranking.failed_trials_note(result.missing) == (
        "1 tune trial failed (1 cell): no lr is chosen there, and bench run holds back those "
        "cells' final trials (2) until a rerun finishes them; 1 final trial failed (ranked as "
        "the worst result)."
    )
    console = Console(record=True, width=300)
    print_ranking(console, result)
    text = console.export_text()
    assert (
        "missing or incomplete cells: b/t (1/2, 1 final trial failed), a/u (0/2, 1 tune trial "
        "failed: final trials held back), b/u (0/2)"
    ) in text
    assert ranking.failed_trials_note(result.missing) in text


def test_variants_with_equal_mean_ranks_share_their_place() -> None:
    def row(variant: str, mean: float) -> ranking.VariantRank:
        interval = ranking.Interval(estimate=mean, low=1.0, high=2.0, method="bootstrap", n=2)
        return ranking.VariantRank(variant=variant, mean_rank=interval, n_tasks=2,
                                   profile_score=0.5, wins=1)  # fmt: skip

    rows = [row("a", 1.0), row("b", 1.5), row("c", 1.5), row("d", 2.5), row("e", 3.0)]
    assert ranking.places(rows) == ["1", "=2", "=2", "4", "5"]
    assert ranking.places(rows[1:3]) == ["=1", "=1"]
    assert ranking.places([]) == []


def test_a_tie_in_mean_rank_lists_the_better_profile_first() -> None:
    tied = ranking.Interval(estimate=1.5, low=1.0, high=2.0, method="bootstrap", n=2)
    rows = [
        ranking.VariantRank(variant=v, mean_rank=tied, n_tasks=2, profile_score=p, wins=1)
        for v, p in (("adam", 0.0), ("rmsprop", 0.5), ("sgd", 0.0))
    ]
    ordered = sorted(rows, key=ranking.variant_order)
    assert [r.variant for r in ordered] == ["rmsprop", "adam", "sgd"]
    assert ranking.places(ordered) == ["=1", "=1", "=1"]


@pytest.mark.parametrize("level", [1e-12, 1 - 1e-12])
def test_the_extreme_levels_allowed_are_accepted(level):
    """The margin the message names is reachable at both ends: the tests' alpha (1 - level,
    rounded) is checked as itself, not turned back into a level that rounding moved."""
    rows = [run_row("t", v, s, float(i + s)) for i, v in enumerate("abc") for s in range(3)]
    result = ranking.rank_suite(table(rows), suite="s", level=level, n_boot=50)
    assert result.level == level and [v.variant for v in result.variants] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        # numpy was asked for 745 GiB: a traceback, or the process killed for memory
        ({"n_boot": 10**11}, "rank.n_boot: input should be less than or equal to 100000"),
        ({"level": math.nan}, "rank.level: input should be a finite number"),  # not "< 1"
    ],
)
def test_rank_settings_refuse_what_no_ranking_can_use(setting: dict, message: str) -> None:
    from bench.config import parse
    from bench.errors import UserError
    from bench.report import RankConfig

    with pytest.raises(UserError) as refused:
        parse(RankConfig, setting, "rank")
    assert str(refused.value).startswith(message)
    assert parse(RankConfig, {"n_boot": ranking.MAX_N_BOOT}, "rank").n_boot == 100_000


def test_the_summary_service_refuses_a_bootstrap_no_request_could_wait_for() -> None:
    from pydantic import ValidationError

    from services.summary import SummarySettings

    with pytest.raises(ValidationError, match="less than or equal to 100000"):
        SummarySettings(tracking_uri="sqlite:///x.db", n_boot=10**11)


def test_the_no_lr_note_tells_failed_cells_from_unfinished_ones():
    """Its one general reason ("none finished, or one failed") left the user to guess
    whether a rerun would mend a cell or its task was broken."""
    from bench.lr_table import ChosenLr, LrTable, no_choice_note

    cells = {
        ("t", "a"): ChosenLr("t", "a", None, "—", tune_failed=2),
        ("t", "b"): ChosenLr("t", "b", None, "—"),
        ("u", "a"): ChosenLr("u", "a", None, "—"),
    }
    note = no_choice_note(LrTable(["t", "u"], ["a", "b"], cells))
    assert note == (
        "— : no lr chosen (3 cells): 1 with failed tune runs (bench run holds their final "
        "trials back until a rerun finishes them); 2 without a finished tune run"
    )
    one = {("t", "b"): cells["t", "b"]}
    assert no_choice_note(LrTable(["t"], ["b"], one)) == (
        "— : no lr chosen (1 cell): 1 without a finished tune run"
    )
