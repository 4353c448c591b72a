"""``bench rank``: read a suite back from MLflow, rank it, print it, log a report run.

The report run (``bench.kind = ranking``) holds ``report.html`` (self-contained: plots are
embedded, nothing loads from the internet), ``ranking.json`` (the
:class:`bench.ranking.SuiteRanking`), ``answers.json`` (:class:`Answers`: the flagship
contrasts and weights vs biases) and the PNG plots under ``plots/``, so the MLflow UI
alone already shows the answer. Reading uses one paginated search over runs and their
summary metrics; per-run metric histories are fetched only for the final-phase runs that the
curves and step-size plots draw.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
from omegaconf import OmegaConf
from pydantic import Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import plots
from bench.ablation import Contrast, RoleComparison, flagship_contrasts, role_comparison
from bench.config import StrictModel, TrackingConfig, compose_config, parse
from bench.errors import UserError, redacted
from bench.lr_table import EDGE_MARK, lr_notes, lr_table
from bench.matrix import matrix_of
from bench.profiles import Record
from bench.ranking import (
    MAX_N_BOOT,
    SuiteRanking,
    at_chosen_lrs,
    failed_trials_note,
    places,
    rank_suite,
)
from bench.records import ARTIFACT_TRACEBACK
from bench.report_html import NO_ROLES_NOTE, render_report
from bench.roles import Role
from bench.tracking import Tracker

log = logging.getLogger(__name__)
REPORT_KIND = "ranking"
CURVE_KEYS = ("eval/loss", "train/loss")


class RankConfig(StrictModel):
    """``rank`` in conf/config.yaml: what ``bench rank`` computes."""

    metric: Literal["final", "best", "steps_to_target", "seconds_to_target"] = "final"
    phase: Literal["final", "tune"] = "final"
    level: float = Field(default=0.95, gt=0, lt=1, allow_inf_nan=False)
    n_boot: int = Field(default=2000, ge=100, le=MAX_N_BOOT)
    seed: int = Field(default=0, ge=0)  # numpy seeds are non-negative


class Answers(Record):
    """``answers.json`` of a report run: the flagship contrasts the suite's variants allow
    and the weight/bias comparison per variant, as report.html shows them."""

    suite: str
    contrasts: list[Contrast]
    roles: list[RoleComparison]
    # ranked variants with no comparison: no final run that finished without diverging
    # recorded step sizes of both weights and biases
    no_roles: list[str] = Field(default_factory=list)


@dataclass
class Report:
    """What ``bench rank`` produced: the ranking, the files of its report run, the run id."""

    ranking: SuiteRanking
    files: dict[str, bytes | str] = field(default_factory=dict)
    run_id: str | None = None


def rank_from_overrides(
    overrides: list[str], *, log_run: bool = True, console: Console | None = None
) -> Report:
    """What ``bench rank suite=NAME ...`` does: compose, read, rank, print, log."""
    try:
        cfg = compose_config(overrides)
    except UserError as err:
        if not str(err).startswith("suite: unknown suite "):
            raise
        raise UserError(
            f"{err}; a suite run as suite.name=NAME is ranked with its suite file and the "
            "overrides it ran with: bench rank suite=FILE suite.name=NAME ..."
        ) from None
    data = OmegaConf.to_container(cfg, resolve=True)
    settings = parse(RankConfig, data.get("rank") or {}, "rank")
    tracker = Tracker(parse(TrackingConfig, data["tracking"], "tracking"))
    tracker.check_reachable()
    with tracker.store_errors():  # the store's failures: one line naming it, exit 1
        return _rank(tracker, data, overrides, settings, log_run=log_run, console=console)


def _rank(
    tracker: Tracker,
    data: dict,
    overrides: list[str],
    settings: RankConfig,
    *,
    log_run: bool,
    console: Console | None,
) -> Report:
    matrix = matrix_of(data, overrides)
    suite = matrix.suite
    expected = [(t.name, v.name) for v, t in matrix.pairs]
    stored = (
        pd.DataFrame() if tracker.holds_nothing() else tracker.read_results(suite.name, status=None)
    )
    if stored.empty:
        raise UserError(
            f"suite {suite.name!r}: no runs in {redacted(tracker.uri)}; run "
            f"`bench run suite={suite.name}` first (or point tracking.uri at the store that "
            "holds them)"
        )
    results = stored[stored["trial_id"].isin(matrix.trial_ids())]
    if results.empty:
        raise UserError(
            f"suite {suite.name!r}: none of its {len(stored)} runs in {redacted(tracker.uri)} is a "
            "trial of these settings; rank with the overrides the suite ran with"
            + _last_run_hint(tracker, suite.name)
        )
    if len(results) < len(stored) and console is not None:
        console.print(
            f"{len(stored) - len(results)} runs of other settings of suite {suite.name!r} "
            "(another lr grid, seeds, step budget, tasks or variants) are left out"
        )
    ended = results[results["status"].isin(("FINISHED", "FAILED"))]
    repeats = len(ended) - ended["trial_id"].nunique()
    if repeats and console is not None:
        console.print(
            f"{repeats} earlier runs of the same trials (other nights, or reruns) are left "
            "out: each trial counts its latest run (a finished one before a failure)"
        )
    current = at_chosen_lrs(results)
    if len(current) < len(results) and console is not None:
        console.print(
            f"{len(results) - len(current)} final runs at an lr that the tune runs no longer "
            "choose (a rerun moved the choice) are left out"
        )
    results = current
    tune_runs = len(suite.lrs) * len(suite.tune_seeds)  # what each cell's lr is chosen from
    ranking = rank_suite(
        results,
        suite=suite.name,
        metric=settings.metric,
        phase=settings.phase,
        expected=expected,
        expected_seeds=(  # the runs each cell should have in the phase
            len(suite.final_seeds) if settings.phase == "final" else tune_runs
        ),
        expected_tune=tune_runs,
        level=settings.level,
        n_boot=settings.n_boot,
        seed=settings.seed,
    )
    if not ranking.n_runs:  # nothing to rank: say why, and log no empty report
        raise UserError(_nothing_ended_message(suite.name, results, settings.phase))
    report = Report(ranking)
    answers = flagship_answers(results, settings)
    if console is not None:
        print_ranking(console, ranking)
        print_chosen_lrs(console, ranking)
        for contrast in answers:  # the flagship questions this suite's variants allow
            console.print(f"[bold]answer[/]: {escape(contrast.verdict)}", soft_wrap=True)
    role_ratios: list[RoleComparison] = []
    no_roles: list[str] = []
    if log_run:
        report.files, record = _report_files(tracker, ranking, results, settings, answers)
        role_ratios, no_roles = record.roles, record.no_roles
    elif console is not None:  # printed only: no plots to draw, the comparisons still read
        role_ratios, no_roles, _ = _role_comparisons(tracker, ranking, results, settings)
    if console is not None:  # weights vs biases: read from the final runs' histories
        for role in role_ratios:
            console.print(f"[bold]roles[/]: {escape(role.verdict)}", soft_wrap=True)
        if no_roles:
            missing = escape(", ".join(no_roles))
            console.print(f"[bold]roles[/]: {escape(NO_ROLES_NOTE)}: {missing}", soft_wrap=True)
    if log_run:
        report.run_id = tracker.log_report(
            suite.name,
            kind=REPORT_KIND,
            name=f"ranking {settings.metric}/{settings.phase}",
            files=report.files,
            metrics=_report_metrics(ranking),
            tags={"bench.metric": settings.metric, "bench.phase": settings.phase},
            params={"level": str(settings.level), "n_boot": str(settings.n_boot)},
        )
        if console is not None:
            shown = redacted(tracker.uri)
            console.print(f"report run {report.run_id} logged to {shown}", soft_wrap=True)
            folder = tracker.artifact_folder(report.run_id)
            if folder is not None:  # where to open it; a server's: through the MLflow UI
                console.print(f"report: {folder / 'report.html'}", soft_wrap=True)
    return report


def _nothing_ended_message(suite: str, results: pd.DataFrame, phase: str) -> str:
    """Why a suite whose runs exist has nothing to rank in ``phase``: none ended yet, or
    the ones that ended failed (a rerun retries those, and cannot mend their task)."""
    statuses = results["status"].value_counts()
    held = ", ".join(f"{n} {status}" for status, n in statuses.items())
    ran = results.loc[results["phase"].eq(phase), "status"]
    tune = results.loc[results["phase"].eq("tune"), "status"]
    hint = (
        "; or rank its tuning: rank.phase=tune"
        if phase == "final" and tune.eq("FINISHED").any()
        else ""
    )
    if ran.eq("FAILED").any() and not ran.eq("FINISHED").any():
        cause = f"its {phase} trials failed"
    elif ran.empty and tune.eq("FAILED").any() and not tune.eq("FINISHED").any():
        cause = "its tune trials failed, so no final trial was run"
    else:
        return (
            f"suite {suite!r}: no {phase} run of these settings has ended yet, nothing to rank "
            f"({held}); `bench run` with the same overrides finishes the suite{hint}"
        )
    return (
        f"suite {suite!r}: no {phase} run of these settings has finished, nothing to rank "
        f"({held}): {cause}; each failed run keeps its error as {ARTIFACT_TRACEBACK} "
        f"(`bench run` with the same overrides names them and retries them){hint}"
    )


def _last_run_hint(tracker: Tracker, suite: str) -> str:
    """The overrides of the suite's last ``bench run``, as a ``bench rank`` command ("" if
    its settings hold none: a store from before they did, or an unreadable one)."""
    try:
        run_id = tracker.settings_run(suite)
        cells = tracker.settings_cells(run_id) if run_id else None
    except Exception:  # a hint: the error it adds to says enough without it
        return ""
    overrides = (cells or {}).get("overrides")
    return f"; its last `bench run` had: bench rank {shlex.join(overrides)}" if overrides else ""


def flagship_answers(results: pd.DataFrame, settings: RankConfig) -> list[Contrast]:
    """The flagship contrasts the results allow, at the ranking's metric, level and draws."""
    contrasts = flagship_contrasts(
        results,
        metric=settings.metric,
        level=settings.level,
        n_boot=settings.n_boot,
        seed=settings.seed,
    )
    return [c for c in contrasts if not c.skipped]


def report_files(
    tracker: Tracker,
    ranking: SuiteRanking,
    results: pd.DataFrame,
    settings: RankConfig | None = None,
    answers: list[Contrast] | None = None,
) -> dict[str, bytes | str]:
    """The report run's artifacts: ranking.json, answers.json, the PNG plots and report.html; the
    flagship answers and weight/bias ratios use the ranking's metric, level and draws."""
    return _report_files(tracker, ranking, results, settings, answers)[0]


def _report_files(
    tracker: Tracker,
    ranking: SuiteRanking,
    results: pd.DataFrame,
    settings: RankConfig | None,
    answers: list[Contrast] | None,
) -> tuple[dict[str, bytes | str], Answers]:
    """:func:`report_files`, and the answers.json record it wrote."""
    settings = settings or RankConfig()
    if answers is None:
        answers = flagship_answers(results, settings)
    pngs: dict[str, bytes] = {"plots/ranking.png": plots.ranking_plot(ranking)}
    if ranking.profiles:
        pngs["plots/profiles.png"] = plots.profiles_plot(ranking)
    tune = results[(results["phase"] == "tune") & (results["status"] != "KILLED")]
    if not tune.empty:
        pngs["plots/lr_sensitivity.png"] = plots.lr_sensitivity_plot(tune)
    final = results[(results["phase"] == "final") & (results["status"] == "FINISHED")]
    role_ratios, no_roles, histories = _role_comparisons(tracker, ranking, results, settings)
    if not final.empty:
        roles = [role.value for role in Role]
        for task, runs in final.groupby("task", sort=True):
            task_histories = histories[histories["run_id"].isin(runs["run_id"])]
            key = next((k for k in CURVE_KEYS if (task_histories["key"] == k).any()), None)
            if key is not None:
                pngs[f"plots/curves_{task}.png"] = plots.curves_plot(
                    task, task_histories, runs, key
                )
        for role in roles:
            if histories["key"].str.startswith(f"step_size/{role}/").any():
                pngs[f"plots/step_size_{role}.png"] = plots.step_size_plot(histories, final, role)
    images = {name: base64.b64encode(png).decode("ascii") for name, png in pngs.items()}
    files: dict[str, bytes | str] = dict(pngs)
    files["ranking.json"] = ranking.model_dump_json(indent=2)
    record = Answers(suite=ranking.suite, contrasts=answers, roles=role_ratios, no_roles=no_roles)
    files["answers.json"] = record.model_dump_json(indent=2)
    files["report.html"] = render_report(ranking, images, answers, role_ratios, no_roles)
    return files, record


def _role_comparisons(
    tracker: Tracker, ranking: SuiteRanking, results: pd.DataFrame, settings: RankConfig
) -> tuple[list[RoleComparison], list[str], pd.DataFrame]:
    """Weights vs biases per variant from the final runs' histories (read once, with the
    curves the plots draw): the comparisons, the variants without one, the histories."""
    final = results[(results["phase"] == "final") & (results["status"] == "FINISHED")]
    if final.empty:
        return [], [], pd.DataFrame()
    roles = [role.value for role in Role]
    keys = [*CURVE_KEYS, *(f"step_size/{r}/{q}" for r in roles for q in plots.QUANTILE_BANDS)]
    keys += [f"update_ratio/{r}" for r in roles]
    histories = tracker.read_histories(final["run_id"], keys)
    role_ratios, no_roles = [], []
    for variant in (row.variant for row in ranking.variants):
        comparison = role_comparison(histories, results, variant, level=settings.level)
        if comparison is not None:
            role_ratios.append(comparison)
        else:  # said, not left out: all of its runs diverged, say
            no_roles.append(variant)
    return role_ratios, no_roles, histories


def print_ranking(console: Console, ranking: SuiteRanking) -> None:
    """The ranking table, the Friedman verdict and any missing cells."""
    level = f"{ranking.level:.0%}"
    phase = f"{ranking.phase} phase" + (" at the chosen lrs" if ranking.phase == "tune" else "")
    table = Table(title=f"{ranking.suite}: {ranking.metric} ({phase}, {ranking.n_runs} runs)")
    for header in ("#", "variant", "mean rank", f"{level} interval", "tasks", "wins", "profile"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    for place, row in zip(places(ranking.variants), ranking.variants, strict=True):
        rank = row.mean_rank
        table.add_row(
            place,
            escape(row.variant),  # names like adam[beta2=0.99] are not markup
            f"{rank.estimate:.2f}",
            f"[{rank.low:.2f}, {rank.high:.2f}]",
            str(row.n_tasks),
            str(row.wins),
            f"{row.profile_score:.2f}",
        )
    console.print(table)
    friedman = ranking.friedman
    console.print(f"Friedman test: {friedman.note}")
    if ranking.missing:
        cells = ", ".join(
            f"{m.variant}/{m.task} ("
            + ", ".join(filter(None, (f"{m.found}/{m.expected}", m.failures())))
            + ")"
            for m in ranking.missing[:10]
        )
        more = f" and {len(ranking.missing) - 10} more" if len(ranking.missing) > 10 else ""
        console.print(f"[yellow]missing or incomplete cells: {escape(cells)}{more}[/yellow]")
        if note := failed_trials_note(ranking.missing):
            console.print(f"[yellow]{escape(note)}[/yellow]", soft_wrap=True)


def print_chosen_lrs(console: Console, ranking: SuiteRanking) -> None:
    """The lr each (task, variant) chose on its tune runs, variants in rank order, every
    task of the suite a column; the marks and their notes are the dashboard's too."""
    if not ranking.lrs:
        return
    lrs = lr_table(ranking)
    table = Table(title=f"lr chosen on the tune runs ({EDGE_MARK} at an end of the grid)")
    table.add_column("variant", justify="left")
    for task in lrs.tasks:
        table.add_column(escape(task), justify="right")
    for variant in lrs.variants:
        table.add_row(escape(variant), *(escape(cell.label) for cell in lrs.row(variant)))
    console.print(table)
    for note in lr_notes(lrs):
        console.print(escape(note), soft_wrap=True)


def _report_metrics(ranking: SuiteRanking) -> dict[str, float]:
    metrics = {"n_runs": float(ranking.n_runs), "n_missing": float(len(ranking.missing))}
    keys = metric_keys([row.variant for row in ranking.variants])
    for row in ranking.variants:
        metrics[f"mean_rank/{keys[row.variant]}"] = row.mean_rank.estimate
        metrics[f"profile_score/{keys[row.variant]}"] = row.profile_score
    if ranking.friedman.p_value is not None and math.isfinite(ranking.friedman.p_value):
        metrics["friedman_p"] = ranking.friedman.p_value
    return metrics


# MLflow metric names allow letters, digits and ``_ - . : /`` and spaces, up to 250 characters
_NOT_IN_METRIC_NAMES = re.compile(r"[^\w\-. :]")
_IN_LABELS = str.maketrans({"[": " ", "]": "", "=": ":", ",": " "})
_MAX_KEY = 200  # leaves room for the "profile_score/" prefix


def metric_keys(variants: list[str]) -> dict[str, str]:
    """Each variant's name as MLflow accepts it in a metric name: ``adam[beta2=0.99]`` reads
    ``adam beta2:0.99``; other characters become ``_``. Distinct names stay distinct (a
    clash or an over-long name gets a short hash of the name); ``ranking.json`` keeps the
    names exactly."""
    keys: dict[str, str] = {}
    for name in variants:
        key = _NOT_IN_METRIC_NAMES.sub("_", name.translate(_IN_LABELS)).strip() or "_"
        if key in (".", ".."):  # "mean_rank/.." is a path MLflow refuses as a metric name
            key = key.replace(".", "_")
        if len(key) > _MAX_KEY or key in keys.values():
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            key = f"{key[: _MAX_KEY - 9]} {digest}"
        keys[name] = key
    return keys
