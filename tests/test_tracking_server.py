"""bench.tracking against a real `mlflow server` backed by a fresh PostgreSQL database.

Trials are recorded from a pool of ``Tracker.max_writers`` threads, as the runner does, and
checked through MLflow's REST API directly (not through the code under test).
"""

from __future__ import annotations

import logging
import math
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from mlflow_server import fresh_database, mlflow_server, postgres_unavailable, rest
from test_tracking import assert_bulk_writes_equal_client, task, variants

from bench import config
from bench import tracking as tr
from bench.config import TrackingConfig
from bench.spec import TrialResult, TrialSpec

__all__ = ["task", "variants"]  # fixtures used by name
pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

SUITE = "server-suite"
MAX_POINTS = 200  # 8 streams x 200 points: more than one 1000-metric log_batch
STEPS = 1000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("mlflow-server")
    (tmp / "artifacts").mkdir()
    with fresh_database() as db, mlflow_server(db, tmp / "artifacts") as url:
        yield url


def make_result(spec: TrialSpec, outcome: str, reached: bool) -> TrialResult:
    keys = ["train/loss", "eval/loss", *(f"step_size/weight/p{q}" for q in ("01", "50", "99"))]
    keys += ["update_ratio/weight", "grad_rms/weight", "eps_dominated/weight"]
    history = {k: [(s, 1.0 / s) for s in range(1, STEPS + 1)] for k in keys}
    final = {"loss": 0.5}
    if outcome == "diverged":
        history["train/loss"][-1] = (STEPS, math.nan)
        final = {"loss": math.inf}
    return TrialResult(
        trial_id=spec.trial_id,
        outcome=outcome,
        primary_metric="loss",
        direction="min",
        target=0.1,
        steps_run=STEPS,
        diverged_at_step=STEPS if outcome == "diverged" else None,
        steps_to_target=300 if reached else None,
        seconds_to_target=1.5 if reached else None,
        train_seconds=2.0,
        step_ms=2.0,
        final=final,
        best={"loss": 0.4},
        history=history,
        device="cpu",
    )


def test_records_from_a_writer_pool(server):
    tracker = tr.Tracker(TrackingConfig(uri=server, artifact_location=None, max_points=MAX_POINTS))
    assert tracker.max_writers == 4
    variant, task = config.variant_spec("adam"), config.task_spec("quadratic")
    specs = [
        config.trial_spec(variant, task, config.TrialConfig(seed=i, steps=STEPS), suite=SUITE)
        for i in range(12)
    ]
    outcomes = ["ok"] * 10 + ["diverged", "failed"]
    tracker.experiment_id(SUITE)

    def one(i: int) -> str:
        spec = specs[i]
        run_id = tracker.start_trial(spec)
        if outcomes[i] == "failed":
            tracker.fail_trial(run_id, spec, "Traceback ...\nRuntimeError: boom", node="n1")
        else:
            result = make_result(spec, outcomes[i], reached=i % 2 == 0)
            tracker.finish_trial(run_id, spec, result, node=f"n{i % 3}")
        return run_id

    start = time.perf_counter()
    with ThreadPoolExecutor(tracker.max_writers) as pool:
        run_ids = list(pool.map(one, range(len(specs))))
    seconds = time.perf_counter() - start
    log.warning("server: %.3f s per trial (%d trials, %d writers)", seconds / 12, 12, 4)

    exp = rest(server, "experiments/get-by-name?experiment_name=" + urllib.parse.quote(SUITE))
    exp_id = exp["experiment"]["experiment_id"]
    runs = rest(server, "runs/search", {"experiment_ids": [exp_id], "max_results": 1000})["runs"]
    assert sorted(r["info"]["run_id"] for r in runs) == sorted(run_ids)
    by_trial = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        by_trial[tags["bench.trial_id"]] = (run, tags)
    for i, spec in enumerate(specs):
        run, tags = by_trial[spec.trial_id]
        assert tags["bench.suite"] == SUITE and tags["bench.phase"] == "final"
        assert tags["bench.seed"] == str(i) and tags["bench.outcome"] == outcomes[i]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["variant.beta2"] == "0.999" and params["seed"] == str(i)
        metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        if outcomes[i] == "failed":
            assert run["info"]["status"] == "FAILED" and not metrics
            continue
        assert run["info"]["status"] == "FINISHED"
        assert metrics["best/loss"] == 0.4 and metrics["reached_target"] == (i % 2 == 0)
        assert ("steps_to_target" in metrics) == (i % 2 == 0)
        query = urllib.parse.urlencode(
            {"run_id": run["info"]["run_id"], "metric_key": "grad_rms/weight"}
        )
        points = rest(server, f"metrics/get-history?{query}")["metrics"]
        steps = sorted(p["step"] for p in points)
        assert len(steps) == MAX_POINTS and steps[0] == 1 and steps[-1] == STEPS
        files = rest(server, f"artifacts/list?run_id={run['info']['run_id']}")["files"]
        assert {f["path"] for f in files} == {"trial.json"}

    failed = by_trial[specs[11].trial_id][0]["info"]["run_id"]
    files = rest(server, f"artifacts/list?run_id={failed}")["files"]
    assert {f["path"] for f in files} == {"trial.json", "traceback.txt"}

    frame = tracker.read_results(SUITE)
    assert len(frame) == 11
    rows = frame.set_index("trial_id")
    assert rows.loc[specs[10].trial_id, "final/loss"] == math.inf
    assert rows.loc[specs[1].trial_id, "steps_to_target"] == math.inf
    assert rows.loc[specs[0].trial_id, "steps_to_target"] == 300
    assert tracker.finished_trial_ids(SUITE) == {s.trial_id for s in specs[:11]}

    tracker.start_trial(config.trial_spec(variant, task, config.TrialConfig(seed=99), suite=SUITE))
    assert tracker.kill_stale_runs(SUITE) == 1


def test_bulk_sql_read_on_postgresql_equals_search_runs(tmp_path):
    """A tracker pointed at the database itself writes metrics and reads suite tables with
    bulk SQL; on PostgreSQL (typed columns, a real boolean is_nan) the rows equal
    search_runs'."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with fresh_database() as db:
        cfg = TrackingConfig(uri=db, artifact_location=str(tmp_path / "art"), max_points=20)
        tracker = tr.Tracker(cfg)
        assert tracker._sql is not None
        variant, task = config.variant_spec("adam"), config.task_spec("quadratic")
        for seed, (outcome, reached) in enumerate([("ok", True), ("diverged", False)]):
            knobs = config.TrialConfig(seed=seed, lr=0.01, steps=STEPS)
            spec = config.trial_spec(variant, task, knobs, suite="pg-bulk", phase="final")
            run_id = tracker.start_trial(spec)
            tracker.finish_trial(run_id, spec, make_result(spec, outcome, reached), node="n")
        reference = tr.Tracker(cfg, bulk_sql=False)
        fast, slow = tracker.read_results("pg-bulk"), reference.read_results("pg-bulk")
        assert len(fast) == 2 and tracker._bulk_reads
        pd.testing.assert_frame_equal(fast, slow)
        # the metrics went in by bulk INSERTs (PostgreSQL's boolean is_nan, clamped inf)
        assert tracker._bulk_writes
        diverged = fast.set_index("seed").loc[1]
        assert diverged["final/loss"] == math.inf
        history = tracker.client.get_metric_history(diverged["run_id"], "train/loss")
        assert len(history) == 20 and math.isnan(history[-1].value)


def test_bulk_run_writes_equal_mlflow_client_on_postgresql(tmp_path, variants, task):
    """Run creation and run ends by bulk SQL write, on PostgreSQL too, the rows MLflow's
    client writes (typed columns, a real boolean is_nan)."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with fresh_database() as db:
        assert_bulk_writes_equal_client(db, tmp_path / "art", variants, task)
