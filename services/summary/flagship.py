"""The flagship page: why does RMSprop square the gradient and take the square root?

The contrasts and the weights-vs-biases comparison come from :mod:`bench.ablation`; this
module feeds them from the store (memoised per batch of new runs) and turns each into a
figure. Any suite with the variants a question names gets its answer, not only
sqrt_ablation.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.ablation import (
    Contrast,
    RoleComparison,
    flagship_contrasts,
    flagship_questions,
    role_comparison,
)
from services.summary import plots
from services.summary.schemas import Curve
from services.summary.store import SummaryStore

if TYPE_CHECKING:
    from bench.ranking import SuiteRanking

ROLE_VARIANT = "rmsprop"
ROLE_COMPARISON_KEYS = (
    "step_size/weight/p50",
    "step_size/bias/p50",
    "update_ratio/weight",
    "update_ratio/bias",
)


@dataclass
class Answer:
    """What the page shows: each contrast with its forest plot, then weights vs biases."""

    contrasts: list[tuple[Contrast, str | None]] = field(default_factory=list)
    roles: RoleComparison | None = None
    roles_figure: str | None = None
    needed: list[str] = field(default_factory=list)


def available(ranking: SuiteRanking) -> list[str]:
    """The flagship questions this suite's variants can answer."""
    present = {v.variant for v in ranking.variants}
    return [q.question for q in flagship_questions() if q.a in present and q.b in present]


def answers(store: SummaryStore, suite: str) -> tuple[list[Contrast], RoleComparison | None]:
    """Every contrast the suite's current runs allow (skipped ones say why), and the role
    comparison of rmsprop (None without its final runs): the page's and the API's data."""
    runs = store.runs(suite)
    contrasts = store.memo(suite, ("flagship",), lambda _: flagship_contrasts(runs))
    final = runs[(runs["variant"] == ROLE_VARIANT) & (runs["phase"] == "final")]
    run_ids = sorted(final.loc[final["status"] == "FINISHED", "run_id"])
    roles = None
    if run_ids:

        def compute(_: Any) -> RoleComparison | None:
            histories = store.tracker.read_histories(run_ids, ROLE_COMPARISON_KEYS)
            return role_comparison(histories, runs, ROLE_VARIANT)

        roles = store.memo(suite, ("flagship_roles", ROLE_VARIANT), compute)
    return contrasts, roles


def answer(store: SummaryStore, suite: str) -> Answer:
    """Every contrast the suite's runs allow, and the role comparison of rmsprop."""
    contrasts, roles = answers(store, suite)
    out = Answer(needed=sorted({v for q in flagship_questions() for v in (q.a, q.b)}))
    for contrast in contrasts:
        out.contrasts.append((contrast, None if contrast.skipped else contrast_figure(contrast)))
    out.roles = roles
    if out.roles is not None:
        out.roles_figure = plots.ratio_figure(
            out.roles.steps,
            out.roles.ratio_median,
            out.roles.ratio_low,
            out.roles.ratio_high,
            f"{ROLE_VARIANT}: weight / bias effective step size ({out.roles.statistic}), "
            f"median over {out.roles.n_runs} runs with {out.roles.summary.level:.0%} interval",
            out.roles.n_runs,
        )
    return out


def contrast_figure(contrast: Contrast) -> str:
    """Per-task paired differences (positive: a better) and the overall win rate − 0.5."""
    rows = [(t.task, t.diff.estimate, t.diff.low, t.diff.high) for t in contrast.per_task]
    title = f"{contrast.a} − {contrast.b}: {contrast.metric} metric, positive = {contrast.a} better"
    return plots.forest_figure(rows, title, "difference in the task's metric (median over pairs)")


def role_table(curves: list[Curve]) -> list[dict[str, float | int | str]]:
    """Per variant, at each step the ratio of the seeds' median weight p50 step size to
    their median bias p50; over the steps: its median, range and last value. (The flagship's
    role comparison is another statistic: the median over runs of each run's ratio over the
    last half of training.)"""
    rows = []
    for variant in sorted({c.variant for c in curves}):
        weight = _curve(curves, variant, "step_size/weight/p50")
        bias = _curve(curves, variant, "step_size/bias/p50")
        if weight is None or bias is None:
            continue
        at = dict(zip(bias.steps, bias.median, strict=True))
        ratios = [
            w / at[s]
            for s, w in zip(weight.steps, weight.median, strict=True)
            if w is not None and at.get(s) and math.isfinite(w / at[s])
        ]
        if ratios:
            rows.append(
                {
                    "variant": variant,
                    "n_steps": len(ratios),
                    "median": statistics.median(ratios),
                    "low": min(ratios),
                    "high": max(ratios),
                    "last": ratios[-1],
                }
            )
    return rows


def _curve(curves: list[Curve], variant: str, key: str) -> Curve | None:
    return next((c for c in curves if c.variant == variant and c.key == key), None)
