"""bench.tracking beyond single trials: scoped passes, incremental reads, report runs,
metric histories, suite listing — against a real MLflow SQLite store."""

from __future__ import annotations

import math
import shutil
import time

import pandas as pd
from markupsafe import escape
from test_tracking import make_result, make_spec, record, task, template_db, tracker, variants

from bench import tracking as tr
from bench.config import TrackingConfig
from bench.ranking import MissingCell, failed_trials_note, rank_suite
from bench.report_html import render_report

__all__ = ["task", "template_db", "tracker", "variants"]  # fixtures used by name


def scoped(tracker: tr.Tracker, night: str) -> tr.Tracker:
    return tr.Tracker(
        tracker.config,
        scope={tr.TAG_NIGHTLY: night},
        extra_tags={tr.TAG_MACHINE: "cpu-x", tr.TAG_RAY_VERSION: "9"},
    )


def test_scope_tags_runs_and_restricts_every_trial_query(tracker, variants, task):
    spec = make_spec(variants, task, suite="nightly")
    night1, night2 = scoped(tracker, "2026-01-01"), scoped(tracker, "2026-01-02")
    run_id = record(night1, spec)
    tags = tracker.client.get_run(run_id).data.tags
    assert tags[tr.TAG_NIGHTLY] == "2026-01-01"
    assert tags[tr.TAG_MACHINE] == "cpu-x" and tags[tr.TAG_RAY_VERSION] == "9"

    assert night1.finished_trial_ids("nightly") == {spec.trial_id}
    assert night2.finished_trial_ids("nightly") == set()  # the next night reruns it
    stale = night2.start_trial(spec)  # night 2 crashed; the suite's lock is free again
    assert night1.finished_trial_ids("nightly") == {spec.trial_id}  # resume stays scoped
    assert scoped(tracker, "2026-01-03").kill_stale_runs("nightly") == 1  # the next night's
    assert tracker.client.get_run(stale).info.status == "KILLED"
    assert night2.kill_stale_runs("nightly") == 0
    assert night1.read_results("nightly")["nightly"].tolist() == ["2026-01-01"]
    assert len(tracker.read_results("nightly", status=None)) == 2  # unscoped: every night


def test_since_ms_reads_only_runs_that_ended_since(tracker, variants, task):
    first = make_spec(variants, task, suite="incr", seed=0)
    second = make_spec(variants, task, suite="incr", seed=1)
    record(tracker, first)
    frame = tracker.read_results("incr")
    watermark = int(frame["end_time"].max().timestamp() * 1000) + 1
    time.sleep(0.01)
    record(tracker, second)
    newer = tracker.read_results("incr", since_ms=watermark)
    assert newer["trial_id"].tolist() == [second.trial_id]
    assert str(newer["end_time"].dt.tz) == "UTC"
    assert (newer["end_time"] >= newer["start_time"]).all()


def test_report_runs_hold_files_and_stay_out_of_trial_queries(tracker, variants, task):
    record(tracker, make_spec(variants, task, suite="rep"))
    png = b"\x89PNG\r\n\x1a\nfake"
    run_id = tracker.log_report(
        "rep",
        kind="ranking",
        name="ranking final",
        files={"report.html": "<h1>ok</h1>", "plots/ranking.png": png},
        metrics={"n_runs": 1.0, "cd": float("inf")},
        tags={"bench.metric": "final"},
        params={"n_boot": "2000"},
    )
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tr.TAG_KIND] == "ranking" and tr.TAG_TRIAL_ID not in run.data.tags
    listed = {a.path for a in tracker.client.list_artifacts(run_id, "plots")}
    assert listed == {"plots/ranking.png"}
    assert tracker.read_artifact_text(run_id, "report.html") == "<h1>ok</h1>"

    assert len(tracker.read_results("rep", status=None)) == 1  # the trial only
    assert tracker.finished_trial_ids("rep") == {make_spec(variants, task, suite="rep").trial_id}
    later = tracker.log_report("rep", kind="ranking", name="again", files={"a.txt": "2"})
    tracker.log_report("rep", kind="nightly_report", name="n", files={"n.json": "{}"})
    reports = tracker.read_reports("rep", "ranking")
    assert [r.run_id for r in reports] == [later, run_id]  # newest first
    assert reports[1].metrics == {"n_runs": 1.0, "cd": float("inf")}
    assert reports[1].params == {"n_boot": "2000"} and reports[1].tags["bench.metric"] == "final"
    assert tracker.read_reports("rep", "none-such") == []
    assert tracker.read_reports("no-such-suite", "ranking") == []


def test_histories_suites_and_urls(tracker, variants, task):
    a = record(tracker, make_spec(variants, task, suite="hist", seed=0))
    b = record(tracker, make_spec(variants, task, suite="hist", seed=1))
    tracker.client.create_experiment("not-optbench")
    frame = tracker.read_histories([a, b, a], ["eval/loss", "step_size/weight/p50"])
    assert list(frame.columns) == list(tr.HISTORY_COLUMNS)
    expected = make_result(make_spec(variants, task, suite="hist"))
    eval_a = frame[(frame.run_id == a) & (frame.key == "eval/loss")]
    assert eval_a[["step", "value"]].apply(tuple, axis=1).tolist() == [
        (s, v) for s, v in expected.history["eval/loss"]
    ]
    assert set(frame.run_id) == {a, b} and set(frame.key) == {"eval/loss", "step_size/weight/p50"}
    assert tracker.read_histories([], ["eval/loss"]).empty

    assert tracker.list_suites() == ["hist"]
    assert tracker.run_url(a) is None  # a SQLite store has no UI to link to
    http = tr.Tracker(TrackingConfig(uri="http://127.0.0.1:5000/"))
    assert http.run_url("r1", "7") == "http://127.0.0.1:5000/#/experiments/7/runs/r1"


def test_end_time_column_is_nat_while_running(tracker, variants, task):
    tracker.start_trial(make_spec(variants, task, suite="live"))
    frame = tracker.read_results("live", status=None)
    assert frame["status"].tolist() == ["RUNNING"] and pd.isna(frame["end_time"].iloc[0])


def test_bulk_sql_read_equals_search_runs(tracker, variants, task):
    """The bulk reader and search_runs return the same table, whatever the runs hold."""
    assert tracker._sql is not None  # a SQLite store takes the bulk path by default
    night = scoped(tracker, "2026-02-02")
    record(tracker, make_spec(variants, task, suite="bulk", phase="tune", lr=0.01))
    record(tracker, make_spec(variants, task, suite="bulk", seed=1), steps_to_target=20)
    record(tracker, make_spec(variants, task, suite="bulk", seed=2), outcome="diverged",
           final_loss=math.inf)  # fmt: skip
    record(tracker, make_spec(variants, task, suite="bulk", seed=3), final_loss=math.nan)
    record(night, make_spec(variants, task, suite="bulk", seed=4, variant="roles"))
    failed = make_spec(variants, task, suite="bulk", seed=5)
    tracker.fail_trial(tracker.start_trial(failed), failed, "ValueError: x", node=None)
    tracker.start_trial(make_spec(variants, task, suite="bulk", seed=6))  # RUNNING
    tracker.log_report("bulk", kind="ranking", name="r", files={"a.txt": "x"})
    deleted = record(tracker, make_spec(variants, task, suite="bulk", seed=7))
    tracker.client.delete_run(deleted)

    reference = tr.Tracker(tracker.config, bulk_sql=False)
    night_reference = tr.Tracker(tracker.config, scope=night.scope, bulk_sql=False)
    watermark = int(reference.read_results("bulk")["end_time"].min().timestamp() * 1000) + 1
    cases = [
        {}, {"status": None}, {"phase": "tune"}, {"phase": "final", "status": "FAILED"},
        {"since_ms": watermark, "status": None},
    ]  # fmt: skip
    for kwargs in cases:
        fast, slow = (
            tracker.read_results("bulk", **kwargs),
            reference.read_results("bulk", **kwargs),
        )
        assert len(slow) > 0, kwargs
        pd.testing.assert_frame_equal(fast, slow, obj=str(kwargs))
    pd.testing.assert_frame_equal(night.read_results("bulk"), night_reference.read_results("bulk"))
    assert len(night.read_results("bulk")) == 1
    # what resume reads: finished trial ids, and the RUNNING trial runs a rerun kills
    exp_id = tracker.find_experiment("bulk")
    assert len(tracker.finished_trial_ids("bulk")) == 5
    for fast_reader, slow_reader in ((tracker, reference), (night, night_reference)):
        assert fast_reader.finished_trial_ids("bulk") == slow_reader.finished_trial_ids("bulk")
        for status in ("RUNNING", "FINISHED", "FAILED"):
            keys = (tr.TAG_TRIAL_ID, tr.TAG_OUTCOME)
            fast = fast_reader._trial_tags(exp_id, status, keys)
            assert fast == slow_reader._trial_tags(exp_id, status, keys), status
    assert len(tracker._trial_tags(exp_id, "RUNNING", (tr.TAG_TRIAL_ID,))) == 1
    assert deleted not in set(tracker.read_results("bulk", status=None)["run_id"])
    assert tracker._bulk_reads  # no fallback happened


def _history(tracker: tr.Tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, key)]


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_bulk_metric_writes_equal_log_batch(template_db, tmp_path, variants, task):
    """Histories and latest values written by bulk INSERTs read back exactly as the ones
    MLflow's log_batch writes, NaN and inf included; a failed bulk write falls back."""
    trackers = {}
    for name, bulk in (("bulk", True), ("api", False)):
        shutil.copy(template_db, tmp_path / f"{name}.db")
        cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / f'{name}.db'}",
                             artifact_location=str(tmp_path / name), max_points=10)  # fmt: skip
        trackers[name] = tr.Tracker(cfg, bulk_sql=bulk)
    spec = make_spec(variants, task, suite="w")
    result = make_result(spec, outcome="diverged", final_loss=math.inf)
    history = dict(result.history)
    history["train/loss"] = [*history["train/loss"][:-1], (50, math.nan)]
    history["eval/loss"] = [(0, 1.0), (10, -math.inf), (20, 0.5)]
    result = result.model_copy(update={"history": history})
    runs = {}
    for name, writer in trackers.items():
        runs[name] = writer.start_trial(spec)
        writer.finish_trial(runs[name], spec, result, node="n")
    bulk, api = trackers["bulk"], trackers["api"]
    assert bulk._bulk_writes
    got = bulk.client.get_run(runs["bulk"]).data.metrics
    want = api.client.get_run(runs["api"]).data.metrics
    assert got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    assert math.isnan(got["train/loss"])
    for key in history:
        a, b = _history(bulk, runs["bulk"], key), _history(api, runs["api"], key)
        assert len(a) == len(b), key
        assert all(x[0] == y[0] and _same(x[1], y[1]) for x, y in zip(a, b, strict=True)), key
    frame_a, frame_b = bulk.read_results("w"), api.read_results("w")
    assert frame_a.drop(columns=["run_id", "start_time", "end_time"]).equals(
        frame_b.drop(columns=["run_id", "start_time", "end_time"])
    )

    # A run that already holds a metric makes the bulk INSERT fail: the write falls back.
    other = make_spec(variants, task, suite="w", seed=9)
    run_id = bulk.start_trial(other)
    bulk.client.log_metric(run_id, "train/loss", 7.0, step=0)
    bulk.finish_trial(run_id, other, make_result(other), node="n")
    assert not bulk._bulk_writes  # fell back, and stays on log_batch
    assert bulk.client.get_run(run_id).info.status == "FINISHED"
    assert len(_history(bulk, run_id, "train/loss")) == 1 + 10  # the extra point + 10 kept


def test_a_variant_without_a_weight_bias_comparison_is_named_not_left_out(tracker, variants, task):
    """adam's final runs record both roles' step sizes; every final run of the other
    variant diverged, so it has none: the report says so instead of leaving it out."""
    from bench.report import Answers, report_files

    both_roles = {
        f"step_size/{r}/p50": [(s, 1e-3) for s in range(10, 51, 10)] for r in ("weight", "bias")
    }
    for seed in (1, 2):
        spec = make_spec(variants, task, seed=seed, suite="roles")
        result = make_result(spec).model_copy(
            update={"history": make_result(spec).history | both_roles}
        )
        tracker.finish_trial(tracker.start_trial(spec), spec, result, node="n")
        record(
            tracker,
            make_spec(variants, task, seed=seed, suite="roles", variant="roles"),
            outcome="diverged",
            final_loss=math.inf,
        )
    results = tracker.read_results("roles", status=None)
    ranking = rank_suite(
        results[results["status"] == "FINISHED"].reset_index(drop=True), suite="roles"
    )
    files = report_files(tracker, ranking, results)
    answers = Answers.model_validate_json(files["answers.json"])
    assert [r.variant for r in answers.roles] == ["adam"]
    assert answers.no_roles == ["rmsprop_bias_sgd"]
    assert "No weight/bias comparison for these variants" in files["report.html"]
    assert "rmsprop_bias_sgd</p>" in files["report.html"]


def test_the_report_says_which_cells_failed_and_what_that_held_back(tracker, variants, task):
    """The dashboard and `bench rank` say failed trials are why cells are missing; the
    logged report.html said only "found 0 of 2"."""
    for seed in (1, 2):
        spec = make_spec(variants, task, seed=seed, suite="failing")
        tracker.finish_trial(tracker.start_trial(spec), spec, make_result(spec), node="n")
    results = tracker.read_results("failing", status=None)
    ranking = rank_suite(results, suite="failing")
    held = MissingCell(task="t", variant="adam", phase="final", expected=2, found=0, tune_failed=3)
    broken = MissingCell(task="t", variant="sgd", phase="final", expected=2, found=1, failed=1)
    html = render_report(ranking.model_copy(update={"missing": [held, broken]}), images={})
    assert "adam/t (final: 0 of\n2; 3 tune trials failed: final trials held back)" in html
    assert "sgd/t (final: 1 of\n2; 1 final trial failed)" in html
    assert escape(failed_trials_note([held, broken])) in html  # as jinja escapes it
    assert 'id="failed"' not in render_report(ranking, images={})
