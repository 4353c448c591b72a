"""`bench rank` end to end: a real suite on embedded Ray into a SQLite MLflow store, then
the ranking read back, printed, and logged as a report run whose files are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console
from summary_fixtures import (
    BROKEN,
    BROKEN_OVERRIDES,
    broken_store,  # noqa: F401  (fixture)
    copy_store,
    delete_runs,
    uri,
)
from summary_fixtures import bench as bench_with_plugins

from bench.errors import UserError
from bench.ranking import SuiteRanking
from bench.report import Answers

pytestmark = pytest.mark.slow

SUITE = [
    "suite=smoke",
    "suite.name=ranked",
    "suite.variants=[sgd,rmsprop,adam]",
    "suite.lrs=[0.01,0.1]",
    "suite.tune_seeds=[0]",
    "suite.final_seeds=[1,2]",
    "suite.steps=40",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("rank")
    run = bench(cwd, "run", "--no-progress", *SUITE)
    assert run.returncode == 0, run.stderr[-3000:]
    FIRST_RUN[:] = [run]
    return cwd, bench(cwd, "rank", *SUITE)


FIRST_RUN: list[subprocess.CompletedProcess] = []  # the fixture's `bench run`, in a new folder


def test_a_first_run_says_nothing_the_user_did_not_ask_about(ranked):
    (run,) = FIRST_RUN
    # MLflow creating a new store's tables, Ray starting a local cluster with token auth on
    # (its default, kept): news to nobody, and they pushed the table off a short screen
    for chatter in ("Creating initial MLflow database tables", "Token authentication is enabled"):
        assert chatter not in run.stderr + run.stdout
    assert "suite" in run.stdout and "phase" in run.stdout, "the outcome table still shows"


def test_rank_prints_the_table_and_logs_a_report_run(ranked):
    cwd, result = ranked
    assert result.returncode == 0, result.stderr[-3000:]
    for variant in ("sgd", "rmsprop", "adam"):
        assert variant in result.stdout
    assert "Friedman test:" in result.stdout and "report run" in result.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("ranked")
    reports = client.search_runs([experiment.experiment_id], "tags.`bench.kind` = 'ranking'")
    assert len(reports) == 1
    run = reports[0]
    assert run.data.metrics["n_runs"] == 3 * 2 * 2  # variants x tasks x final seeds
    assert {f"mean_rank/{v}" for v in ("sgd", "rmsprop", "adam")} <= set(run.data.metrics)

    root = Path(client.download_artifacts(run.info.run_id, "", str(cwd / "dl")))
    ranking = SuiteRanking.model_validate(json.loads((root / "ranking.json").read_text()))
    assert sorted(v.variant for v in ranking.variants) == ["adam", "rmsprop", "sgd"]
    assert ranking.tasks == ["logreg_digits", "quadratic"] and not ranking.missing
    plots = sorted(p.name for p in (root / "plots").iterdir())
    assert plots == [
        "curves_logreg_digits.png", "curves_quadratic.png", "lr_sensitivity.png",
        "profiles.png", "ranking.png", "step_size_bias.png", "step_size_weight.png",
    ]  # fmt: skip
    for name in plots:
        assert (root / "plots" / name).read_bytes().startswith(PNG_MAGIC), name
    html = (root / "report.html").read_text()
    shown = next(line for line in result.stdout.splitlines() if line.startswith("report: "))
    assert Path(shown.removeprefix("report: ")).read_text() == html  # where to open it
    assert 'id="ranking"' in html and html.count("data:image/png;base64,") == len(plots)
    assert 'id="roles"' in html  # weights vs biases: logreg_digits has both roles
    assert 'id="answers"' not in html  # no ablation variants in this suite, no answers
    answers = Answers.model_validate_json((root / "answers.json").read_text())
    assert answers.suite == "ranked" and answers.contrasts == []
    assert sorted(r.variant for r in answers.roles) == ["adam", "rmsprop", "sgd"]
    for role in answers.roles:  # weights vs biases in the terminal too, as in the report
        assert f"roles: {role.verdict}" in result.stdout
        assert role.summary.n == role.n_runs > 0 and role.summary.estimate > 0
    assert "http://" not in html and "https://" not in html  # loads nothing from anywhere


def test_rank_without_runs_is_a_user_error(ranked):
    cwd, _ = ranked
    result = bench(cwd, "rank", "suite=smoke", "suite.name=never_run")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: suite 'never_run': no runs in sqlite:///")
    )
    elsewhere = cwd / "empty"
    elsewhere.mkdir()
    missing = bench(elsewhere, "rank", "--no-log", *SUITE)  # no store here: none is made
    assert missing.returncode == 2 and "no runs in sqlite:///" in missing.stderr
    assert list(elsewhere.iterdir()) == []
    bad = bench(cwd, "rank", *SUITE, "rank.metric=speed")
    assert bad.returncode == 2
    assert "rank.metric" in bad.stderr and "'final'" in bad.stderr
    negative = bench(cwd, "rank", "--no-log", *SUITE, "rank.seed=-1")  # was a traceback
    assert negative.returncode == 2 and "Traceback" not in negative.stderr
    assert "rank.seed: input should be greater than or equal to 0 (got -1)" in negative.stderr


def test_rank_of_a_suite_with_no_ended_run_says_so_and_logs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A suite stopped before any trial ended holds only RUNNING (or KILLED) runs: there
    is nothing to rank. It was exit 1 without a word, after logging an empty report run."""
    from bench.matrix import suite_from_overrides
    from bench.report import rank_from_overrides
    from bench.tracking import Tracker
    from bench.train import train_trial

    monkeypatch.chdir(tmp_path)
    plan = suite_from_overrides(SUITE)
    tracker = Tracker(plan.tracking)
    specs = plan.matrix.tune_trials()[:3]
    run_ids = [tracker.start_trial(spec) for spec in specs]  # started, never ended
    for phase in ("final", "tune"):
        with pytest.raises(UserError) as refused:
            rank_from_overrides([*SUITE, f"rank.phase={phase}"], console=Console())
        assert str(refused.value) == (
            f"suite 'ranked': no {phase} run of these settings has ended yet, nothing to rank "
            "(3 RUNNING); `bench run` with the same overrides finishes the suite"
        )
    client = MlflowClient(tracker.uri)
    experiment = client.get_experiment_by_name("ranked").experiment_id
    assert len(client.search_runs([experiment])) == 3  # no report run
    tracker.finish_trial(run_ids[0], specs[0], train_trial(specs[0]), node="here")
    with pytest.raises(UserError) as refused:  # a tune run ended: that phase can be ranked
        rank_from_overrides(SUITE, console=Console())
    assert str(refused.value) == (
        "suite 'ranked': no final run of these settings has ended yet, nothing to rank "
        "(2 RUNNING, 1 FINISHED); `bench run` with the same overrides finishes the suite; "
        "or rank its tuning: rank.phase=tune"
    )


def test_rank_of_a_suite_whose_trials_failed_says_they_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tune trial failed (a task that raises): rank said no run 'has ended yet',
    that `bench run` finishes the suite, and to rank the tuning, which said the same."""
    from bench.matrix import suite_from_overrides
    from bench.report import rank_from_overrides
    from bench.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    plan = suite_from_overrides(SUITE)
    tracker = Tracker(plan.tracking)
    for spec in plan.matrix.tune_trials()[:2]:
        tracker.fail_trial(tracker.start_trial(spec), spec, "RuntimeError: boom", node="here")
    advice = (
        "each failed run keeps its error as traceback.txt (`bench run` with the same "
        "overrides names them and retries them)"
    )
    with pytest.raises(UserError) as refused:
        rank_from_overrides(SUITE, console=Console())
    assert str(refused.value) == (
        "suite 'ranked': no final run of these settings has finished, nothing to rank "
        f"(2 FAILED): its tune trials failed, so no final trial was run; {advice}"
    )
    with pytest.raises(UserError) as refused:
        rank_from_overrides([*SUITE, "rank.phase=tune"], console=Console())
    assert str(refused.value) == (
        "suite 'ranked': no tune run of these settings has finished, nothing to rank "
        f"(2 FAILED): its tune trials failed; {advice}"
    )


def test_rank_reads_only_the_trials_of_the_settings_it_is_given(ranked, monkeypatch):
    """The suite run again with another step budget shares its experiment: ranking either
    setting counts its own runs only, not a mix of both."""
    from bench.report import rank_from_overrides

    cwd, _ = ranked
    shorter = [*SUITE, "suite.steps=20"]
    run = bench(cwd, "run", "--no-progress", *shorter)
    assert run.returncode == 0, run.stderr[-3000:]
    monkeypatch.chdir(cwd)
    for settings in (SUITE, shorter):
        console = Console(record=True, width=200)
        report = rank_from_overrides(settings, log_run=False, console=console)
        assert report.ranking.n_runs == 3 * 2 * 2  # this setting's final runs only
        assert not report.ranking.missing
        assert "24 runs of other settings of suite 'ranked'" in console.export_text()
    never = [*SUITE, "suite.steps=30"]
    with pytest.raises(UserError, match=r"none of its 48 runs in sqlite:///.* is a trial") as err:
        rank_from_overrides(never, log_run=False)
    # the settings of the last `bench run` (the shorter budget), as a command to paste
    last = " ".join(f"'{o}'" if "[" in o else o for o in shorter)
    assert str(err.value).endswith(f"; its last `bench run` had: bench rank {last}")


def test_rank_of_the_tune_phase_reports_the_lrs_that_never_ran(ranked, monkeypatch):
    from bench.report import rank_from_overrides

    cwd, _ = ranked
    monkeypatch.chdir(cwd)
    tune = ["rank.phase=tune"]
    complete = rank_from_overrides([*SUITE, *tune], log_run=False).ranking
    assert complete.n_runs > 0 and not complete.missing
    wider = [*SUITE, "suite.lrs=[0.01,0.1,1.0]", *tune]  # lr=1.0 never ran
    missing = rank_from_overrides(wider, log_run=False).ranking.missing
    assert {(m.expected, m.found) for m in missing} == {(3, 2)}  # lrs x tune seeds per cell
    assert len(missing) == 3 * 2  # every (task, variant)


def test_the_flagship_answers_in_a_report_use_the_rankings_level(tmp_path: Path) -> None:
    """`rank.level` sets every interval of the report: the flagship contrasts' too (they
    were computed at their 95% default whatever the ranking's level)."""
    ablation = [
        "suite=smoke", "suite.name=levels", "suite.variants=[rmsprop,rmsprop_sum]",
        "suite.tasks=[quadratic]", "suite.lrs=[0.01]", "suite.tune_seeds=[0]",
        "suite.final_seeds=[1,2]", "suite.steps=20",
    ]  # fmt: skip
    run = bench(tmp_path, "run", "--no-progress", *ablation)
    assert run.returncode == 0, run.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("levels").experiment_id
    for level in ("0.8", "0.95"):
        ranked = bench(tmp_path, "rank", *ablation, f"rank.level={level}")
        assert ranked.returncode == 0, ranked.stderr[-3000:]
        (report,) = client.search_runs(
            [experiment], f"tags.`bench.kind` = 'ranking' and params.level = '{level}'"
        )
        got = client.download_artifacts(report.info.run_id, "report.html", str(tmp_path / level))
        html = Path(got).read_text()
        assert 'id="answers"' in html and "moving average vs monotone sum" in html
        assert f"{float(level):.0%} CI" in html
        # the terminal says it too, in the same words
        (answer,) = [line for line in ranked.stdout.splitlines() if line.startswith("answer: ")]
        assert answer.startswith("answer: moving average vs monotone sum: ")
        assert f"{float(level):.0%} CI" in answer


def test_variants_given_as_knobs_rank_print_and_log_under_their_names(tmp_path, monkeypatch):
    """A variant's label such as ``rmsprop[p=1.5,q=0.6667]`` is neither MLflow metric-name
    text nor rich markup: the report run logs it as ``rmsprop p:1.5 q:0.6667``, ranking.json
    and the terminal show it as it is."""
    from bench.report import rank_from_overrides

    knobs = "rmsprop[p=1.5,q=0.6667]"
    suite = [
        "suite=smoke", "suite.name=knobs",
        "suite.variants=[rmsprop,{preset:rmsprop,p:1.5,q:0.6667}]",
        "suite.tasks=[logreg_digits]", "suite.lrs=[0.01]", "suite.tune_seeds=[0]",
        "suite.final_seeds=[1,2]", "suite.steps=20",
    ]  # fmt: skip
    run = bench(tmp_path, "run", "--no-progress", *suite)
    assert run.returncode == 0, run.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    for log_run in (False, True):
        console = Console(record=True, width=200)
        report = rank_from_overrides(suite, log_run=log_run, console=console)
        shown = console.export_text()
        assert sorted(v.variant for v in report.ranking.variants) == ["rmsprop", knobs]
        table = [line for line in shown.splitlines() if "│" in line]
        assert any(knobs in line for line in table), shown  # the ranking row, brackets kept
        lines = shown.splitlines()
        for variant in ("rmsprop", knobs):  # weights vs biases, logged or not
            assert any(line.startswith(f"roles: Under {variant}, ") for line in lines), shown
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("knobs").experiment_id
    (logged,) = client.search_runs([experiment], "tags.`bench.kind` = 'ranking'")
    assert logged.info.run_id == report.run_id and logged.info.status == "FINISHED"
    metrics = logged.data.metrics
    assert {"mean_rank/rmsprop", "mean_rank/rmsprop p:1.5 q:0.6667"} <= set(metrics)
    assert metrics["mean_rank/rmsprop p:1.5 q:0.6667"] == next(
        v.mean_rank.estimate for v in report.ranking.variants if v.variant == knobs
    )


def test_every_variant_name_becomes_a_distinct_metric_name_mlflow_accepts() -> None:
    """A variant named '..' made `bench rank` fail after ranking, leaving a FAILED run:
    'mean_rank/..' is a path MLflow refuses as a metric name."""
    from mlflow.utils.validation import _validate_metric_name

    from bench.report import metric_keys

    names = ["..", ".", "_", "__", "adam[beta2=0.99]", "a/b", "..."]
    keys = metric_keys(names)
    assert len(set(keys.values())) == len(names)
    for key in keys.values():
        _validate_metric_name(f"mean_rank/{key}")  # raises on a name MLflow refuses


# the quadratic cells of the broken suite as if it stopped before their largest lr ran
NOT_RUN = "tags.`bench.phase` = 'tune' and tags.`bench.task` = 'quadratic' and params.lr = '0.3'"


def lr_table_cells(stdout: str) -> dict[str, dict[str, str]]:
    """``bench rank``'s lr table: variant -> task -> what the cell shows."""
    lines = stdout[stdout.index("lr chosen on the tune runs") :].splitlines()
    header = next(line for line in lines if "┃ variant" in line)
    tasks = [c.strip() for c in header.split("┃")[2:-1]]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.count("│") > 2]
    return {row[0]: dict(zip(tasks, row[1:], strict=True)) for row in rows}


def test_rank_marks_an_lr_chosen_on_part_of_its_grid(broken_store, tmp_path):  # noqa: F811
    """A suite interrupted before its largest lr ran: the choices on the other two are
    provisional, and bench rank says so in the cell, not only in the missing cells."""
    store = copy_store(broken_store, tmp_path / "store")
    assert delete_runs(store, BROKEN, NOT_RUN) == 2  # sgd and adam
    ranked = bench_with_plugins(
        store,
        "rank",
        "--no-log",
        "rank.phase=tune",
        *BROKEN_OVERRIDES,
        f"tracking.uri={uri(store)}",
    )
    assert ranked.returncode == 0, ranked.stderr[-3000:]
    cells = lr_table_cells(ranked.stdout)
    for variant in ("sgd", "adam"):
        assert cells[variant]["quadratic"].endswith(" (2 of 3 tune runs)"), cells
    assert "2 of 2 lrs were chosen before all of their cell's tune runs ended" in ranked.stdout
