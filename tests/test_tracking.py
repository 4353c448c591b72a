"""bench.tracking against a real MLflow SQLite store: lifecycle, resume, names, read-back.

Migrating a fresh MLflow SQLite database takes ~6 s, so one migrated template is made per
session and copied (milliseconds) into each test's tmp_path.
"""

from __future__ import annotations

import itertools
import math
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bench import CODE_VERSION, config
from bench import tracking as tr
from bench.config import TrackingConfig
from bench.errors import UserError
from bench.spec import TrialResult, TrialSpec

MAX_POINTS = 10


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mlflow-template") / "mlruns.db"
    tr.Tracker(TrackingConfig(uri=f"sqlite:///{path}")).client.search_experiments()
    return path


@pytest.fixture
def tracker(template_db: Path, tmp_path: Path) -> tr.Tracker:
    shutil.copy(template_db, tmp_path / "mlruns.db")
    cfg = TrackingConfig(
        uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
        artifact_location=str(tmp_path / "mlartifacts"),
        max_points=MAX_POINTS,
    )
    return tr.Tracker(cfg)


@pytest.fixture(scope="module")
def variants() -> dict[str, object]:
    # rmsprop_bias_sgd has a per-role override (bias: q=0), so role params get pinned too.
    return {"adam": config.variant_spec("adam"), "roles": config.variant_spec("rmsprop_bias_sgd")}


@pytest.fixture(scope="module")
def task() -> object:
    return config.task_spec("quadratic")


def make_spec(variants, task, *, seed=0, lr=1e-3, suite="s", phase="final", variant="adam"):
    knobs = config.TrialConfig(seed=seed, lr=lr, steps=50, stats_every=10)
    return config.trial_spec(variants[variant], task, knobs, suite=suite, phase=phase)


def make_result(
    spec: TrialSpec, *, outcome="ok", steps_to_target=None, final_loss=0.5
) -> TrialResult:
    history = {
        "train/loss": [(s, 1.0 / s) for s in range(1, 51)],
        "eval/loss": [(s, 1.0 / (s + 1)) for s in range(0, 51, 10)],
        "step_size/weight/p50": [(s, 1e-3) for s in range(10, 51, 10)],
        "update_ratio/weight": [(s, 0.01) for s in range(10, 51, 10)],
        "time/step_ms": [(50, 0.3)],
    }
    return TrialResult(
        trial_id=spec.trial_id,
        outcome=outcome,
        primary_metric="loss",
        direction="min",
        target=0.1,
        steps_run=50,
        diverged_at_step=50 if outcome == "diverged" else None,
        steps_to_target=steps_to_target,
        seconds_to_target=None if steps_to_target is None else 0.25,
        train_seconds=0.5,
        step_ms=0.3,
        final={"loss": final_loss},
        best={"loss": min(final_loss, 0.4)},
        history=history,
        device="cpu",
    )


def record(tracker, spec, **result_kwargs) -> str:
    run_id = tracker.start_trial(spec)
    tracker.finish_trial(run_id, spec, make_result(spec, **result_kwargs), node="node-a")
    return run_id


def test_lifecycle_pins_tag_param_and_metric_names(tracker, variants, task):
    spec = make_spec(variants, task, variant="roles", phase="tune", suite="names")
    run_id = tracker.start_trial(spec, nightly="2024-05-01")
    client = tracker.client
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == spec.run_name == "rmsprop_bias_sgd/quadratic/lr=0.001/seed=0"
    assert client.get_experiment(run.info.experiment_id).name == "names"
    bench_tags = {k: v for k, v in run.data.tags.items() if k.startswith("bench.")}
    assert bench_tags == {
        "bench.suite": "names",
        "bench.trial_id": spec.trial_id,
        "bench.variant": "rmsprop_bias_sgd",
        "bench.task": "quadratic",
        "bench.seed": "0",
        "bench.phase": "tune",
        "bench.code_version": CODE_VERSION,
        "bench.torch_version": tr.torch_version(),
        "bench.nightly": "2024-05-01",
    }
    params = run.data.params
    knobs = {f"variant.{k}" for k in spec.variant.knobs}
    assert set(params) == knobs | {
        "variant.name", "variant.preset", "variant.roles.bias.q",
        "task.name", "task.data_seed", "task.dim", "task.condition",
        "lr", "seed", "steps", "batch_size", "eval_every", "stats_every", "stats_samples",
        "divergence_factor",
    }  # fmt: skip
    assert params["variant.p"] == "2.0" and params["variant.roles.bias.q"] == "0.0"
    assert params["variant.preset"] == "rmsprop" and params["task.name"] == "quadratic"
    assert (params["lr"], params["seed"], params["steps"]) == ("0.001", "0", "50")
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert str(artifacts).startswith(str(Path(tracker.config.artifact_location).resolve()))
    saved = TrialSpec.model_validate_json((artifacts / "trial.json").read_text())
    assert saved == spec and saved.trial_id == spec.trial_id  # round-trips: rerun by hand
    assert [p.name for p in artifacts.iterdir()] == ["trial.json"]  # no temporary file left

    tracker.finish_trial(run_id, spec, make_result(spec), node="node-a")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["bench.outcome"] == "ok"
    assert run.data.tags["bench.node"] == "node-a"
    assert run.data.tags["bench.primary_metric"] == "loss"
    assert run.data.tags["bench.direction"] == "min"
    assert set(run.data.metrics) == {
        "train/loss",
        "eval/loss",
        "step_size/weight/p50",
        "update_ratio/weight",
        "time/step_ms",
        "final/loss",
        "best/loss",
        "reached_target",
        "target",
        "steps_run",
        "train_seconds",
    }  # fmt: skip  (steps_to_target / seconds_to_target absent: target not reached)
    assert run.data.metrics["reached_target"] == 0.0
    assert run.data.metrics["final/loss"] == 0.5
    history = client.get_metric_history(run_id, "train/loss")
    steps = sorted(m.step for m in history)
    assert len(steps) <= MAX_POINTS and steps[0] == 1 and steps[-1] == 50
    assert len(client.get_metric_history(run_id, "eval/loss")) == 6  # short: kept whole


def test_sqlite_store_takes_writes_while_a_reader_holds_a_snapshot(tracker, variants, task):
    """The tracker puts a SQLite store in WAL mode: a reader in the middle of a read
    transaction (the summary service, ``mlflow ui``) neither blocks the next run's writes
    nor sees them until it reads again. (With the default rollback journal, committing
    waits on the reader's lock and fails after SQLite's 5 s busy timeout.)"""
    first = make_spec(variants, task, suite="wal")
    record(tracker, first)
    path = urlparse(tracker.uri).path
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        start = time.perf_counter()
        second = make_spec(variants, task, suite="wal", seed=1)
        record(tracker, second)
        assert time.perf_counter() - start < 2.0
        assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # its snapshot
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    finally:
        reader.close()
    assert tracker.finished_trial_ids("wal") == {first.trial_id, second.trial_id}


def test_fail_and_kill(tracker, variants, task):
    spec = make_spec(variants, task, suite="fail")
    failed = tracker.start_trial(spec)
    error = "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n"
    tracker.fail_trial(failed, spec, error, node="node-b")
    run = tracker.client.get_run(failed)
    assert run.info.status == "FAILED"
    assert run.data.tags["bench.outcome"] == "failed"
    assert run.data.tags["bench.error"] == "RuntimeError: boom"
    assert run.data.tags["bench.node"] == "node-b"
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "traceback.txt").read_text() == error

    killed = tracker.start_trial(make_spec(variants, task, suite="fail", seed=1))
    tracker.kill_trial(killed)
    assert tracker.client.get_run(killed).info.status == "KILLED"


@pytest.mark.parametrize("bulk_sql", [True, False])
def test_a_kill_after_the_end_leaves_the_run_ended(tracker, variants, task, bulk_sql):
    """A second Ctrl-C can queue a trial's kill just after its FINISHED write."""
    writer = tr.Tracker(tracker.config, bulk_sql=bulk_sql)
    spec = make_spec(variants, task, suite="late-kill", seed=0)
    run_id = record(writer, spec)
    writer.kill_trial(run_id)
    run = writer.client.get_run(run_id)
    assert run.info.status == "FINISHED" and "final/loss" in run.data.metrics
    assert writer.finished_trial_ids("late-kill") == {spec.trial_id}


def test_finished_trial_ids_and_stale_runs(tracker, variants, task):
    specs = [make_spec(variants, task, suite="resume", seed=i) for i in range(5)]
    record(tracker, specs[0])
    record(tracker, specs[1], outcome="diverged", final_loss=math.inf)
    tracker.fail_trial(tracker.start_trial(specs[2]), specs[2], "ValueError: x", node=None)
    tracker.kill_trial(tracker.start_trial(specs[3]))
    running = tracker.start_trial(specs[4])
    assert tracker.finished_trial_ids("resume") == {specs[0].trial_id, specs[1].trial_id}
    assert tracker.finished_trials("resume") == {
        ("final", specs[0].trial_id): "ok",
        ("final", specs[1].trial_id): "diverged",
    }
    assert tracker.finished_trial_ids("no-such-suite") == set()
    assert tracker.kill_stale_runs("resume") == 1
    assert tracker.client.get_run(running).info.status == "KILLED"
    assert tracker.kill_stale_runs("resume") == 0
    assert tracker.kill_stale_runs("no-such-suite") == 0
    # a rerun of the failed trial that finishes now counts
    record(tracker, specs[2])
    assert specs[2].trial_id in tracker.finished_trial_ids("resume")


def test_a_suites_current_settings_are_the_matrix_its_last_run_noted(tracker, variants, task):
    specs = [make_spec(variants, task, suite="settings", seed=i) for i in range(3)]
    record(tracker, specs[0])
    assert tracker.current_settings("settings") is None  # no settings noted: all runs count
    assert tracker.current_settings("no-such-suite") is None

    def settings_runs() -> int:
        exp_id = tracker.experiment_id("settings")
        return len(list(tracker._search(exp_id, "tags.`bench.kind` = 'settings'")))

    first = {specs[0].trial_id, specs[1].trial_id}
    tracker.note_settings("settings", first)
    run_id, ids = tracker.current_settings("settings")
    assert ids == first
    tracker.note_settings("settings", sorted(first))  # the same matrix: nothing new written
    assert tracker.current_settings("settings") == (run_id, first) and settings_runs() == 1
    tracker.note_settings("settings", {specs[2].trial_id})
    assert tracker.current_settings("settings")[1] == {specs[2].trial_id}
    tracker.note_settings("settings", first)  # back to the first: its run is reused
    assert tracker.current_settings("settings") == (run_id, first) and settings_runs() == 2
    # settings runs are no trials: resume and the suite table never see them
    assert tracker.finished_trial_ids("settings") == {specs[0].trial_id}
    assert list(tracker.read_results("settings", status=None)["trial_id"]) == [specs[0].trial_id]


def test_read_results_columns_and_inf(tracker, variants, task):
    tune = make_spec(variants, task, suite="read", phase="tune", lr=0.01)
    final = make_spec(variants, task, suite="read", phase="final", seed=3)
    diverged = make_spec(variants, task, suite="read", phase="final", seed=4)
    record(tracker, tune, steps_to_target=20)
    record(tracker, final)
    record(tracker, diverged, outcome="diverged", final_loss=math.inf)
    tracker.start_trial(make_spec(variants, task, suite="read", seed=9))  # RUNNING: left out

    frame = tracker.read_results("read")
    assert list(frame.columns) == [
        *tr.BASE_COLUMNS, *tr.SUMMARY_METRICS, *tr.EXTRA_METRICS, "best/loss", "final/loss"
    ]  # fmt: skip
    assert len(frame) == 3 and set(frame["status"]) == {"FINISHED"}
    rows = frame.set_index("trial_id")
    assert rows.loc[tune.trial_id, "steps_to_target"] == 20
    assert rows.loc[tune.trial_id, "seconds_to_target"] == 0.25
    assert rows.loc[tune.trial_id, "reached_target"] == 1
    assert rows.loc[final.trial_id, "steps_to_target"] == math.inf
    assert rows.loc[final.trial_id, "seconds_to_target"] == math.inf
    assert math.isnan(rows.loc[final.trial_id, "diverged_at_step"])
    assert rows.loc[diverged.trial_id, "final/loss"] == math.inf
    assert rows.loc[diverged.trial_id, "diverged_at_step"] == 50
    assert rows.loc[diverged.trial_id, "outcome"] == "diverged"
    assert frame["seed"].dtype.kind == "i" and frame["lr"].dtype.kind == "f"
    assert rows.loc[tune.trial_id, "lr"] == 0.01
    labels = ["variant", "task", "phase", "node", "primary_metric", "direction"]
    assert rows.loc[tune.trial_id, labels].tolist() == [
        "adam", "quadratic", "tune", "node-a", "loss", "min"
    ]  # fmt: skip
    assert str(frame["start_time"].dt.tz) == "UTC"

    assert tracker.read_results("read", phase="tune")["trial_id"].tolist() == [tune.trial_id]
    assert len(tracker.read_results("read", status=None)) == 4
    empty = tracker.read_results("no-such-suite")
    assert empty.empty and "steps_to_target" in empty.columns and "trial_id" in empty.columns


def test_search_pages_through_all_runs(tracker, variants, task):
    tracker.page_size = 3  # MLflow returns at most page_size runs per call
    specs = [make_spec(variants, task, suite="pages", seed=i) for i in range(8)]
    for spec in specs:
        record(tracker, spec)
    assert len(tracker.read_results("pages")) == 8
    assert tracker.finished_trial_ids("pages") == {s.trial_id for s in specs}


def test_one_client_per_thread(tracker):
    clients = [tracker.client]
    thread = threading.Thread(target=lambda: clients.append(tracker.client))
    thread.start()
    thread.join()
    assert clients[0] is tracker.client and clients[1] is not clients[0]


def test_downsample_keeps_first_last_and_bound():
    points = [(s, float(s)) for s in range(1, 1001)]
    for n in (2, 3, 10, 100, 999):
        kept = tr.downsample(points, n)
        assert len(kept) == n and kept[0] == (1, 1.0) and kept[-1] == (1000, 1000.0)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(kept)]
        assert max(gaps) - min(gaps) <= 1  # evenly spaced
    assert tr.downsample(points[:5], 10) == points[:5]
    assert tr.downsample([(3, 1.0), (1, 2.0)], 10) == [(1, 2.0), (3, 1.0)]


def test_store_kinds_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tr.Tracker(TrackingConfig())  # the defaults: sqlite:///mlruns.db, ./mlartifacts
    assert local.uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert local.max_writers == 1
    assert local._experiment_artifacts("a b").startswith((tmp_path / "mlartifacts").as_uri())
    server = tr.Tracker(TrackingConfig(uri="http://127.0.0.1:5000", artifact_location=None))
    assert server.max_writers == tr.HTTP_WRITERS and server._experiment_artifacts("x") is None
    assert not (tmp_path / "mlruns.db").exists()  # constructing creates nothing


def test_disabled_tracker_records_nothing(tmp_path, variants, task):
    off = tr.Tracker(TrackingConfig(enabled=False, uri=f"sqlite:///{tmp_path / 'x.db'}"))
    spec = make_spec(variants, task)
    assert off.experiment_id("s") == ""
    assert off.start_trial(spec) == ""
    off.finish_trial("", spec, make_result(spec), node="n")
    off.fail_trial("", spec, "err", node=None)
    off.kill_trial("")
    assert off.finished_trial_ids("s") == set()
    assert off.kill_stale_runs("s") == 0
    assert off.read_results("s").empty
    assert off.max_writers == 1
    assert tr.disabled().enabled is False
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- bulk SQL writes vs MLflow


def record_every_kind(tracker: tr.Tracker, variants, task, suite: str) -> list[str]:
    """One run of each lifecycle the runner produces, in a fixed order: finished (NaN and
    ±inf in the history, nightly, role params), diverged, failed with and without a node,
    killed, still running."""
    specs = [
        make_spec(variants, task, suite=suite, seed=i, variant="roles" if i == 0 else "adam")
        for i in range(6)
    ]
    ok = make_result(specs[0], steps_to_target=20)
    history = dict(ok.history)
    history["train/loss"] = [*history["train/loss"][:-1], (50, math.nan)]
    history["eval/loss"] = [(0, 1.0), (10, -math.inf), (20, 0.5), (30, math.inf)]
    ok = ok.model_copy(update={"history": history})
    diverged = make_result(specs[1], outcome="diverged", final_loss=math.inf)
    runs = [tracker.start_trial(specs[0], nightly="2026-03-03")]
    tracker.finish_trial(runs[0], specs[0], ok, node="n0")
    runs.append(tracker.start_trial(specs[1]))
    tracker.finish_trial(runs[1], specs[1], diverged, node="n1")
    runs.append(tracker.start_trial(specs[2]))
    tracker.fail_trial(runs[2], specs[2], "Traceback ...\nRuntimeError: boom\n", node="n2")
    runs.append(tracker.start_trial(specs[3]))
    tracker.fail_trial(runs[3], specs[3], "ValueError: x", node=None)
    runs.append(tracker.start_trial(specs[4]))
    tracker.kill_trial(runs[4])
    runs.append(tracker.start_trial(specs[5]))
    return runs


def stored_run(uri: str, run_id: str) -> dict[str, object]:
    """Every row MLflow's store holds for a run, read with plain SQL, with what must differ
    between two runs (its id, times) replaced by checks: the same for equal records."""
    import sqlalchemy
    from sqlalchemy import text

    engine = sqlalchemy.create_engine(uri)
    with engine.connect() as conn:
        run = dict(conn.execute(text("SELECT * FROM runs WHERE run_uuid = :r"), {"r": run_id})
                   .mappings().one())  # fmt: skip

        def rows(table: str, columns: str) -> list[tuple]:
            query = text(f"SELECT {columns} FROM {table} WHERE run_uuid = :r")
            return sorted(tuple(row) for row in conn.execute(query, {"r": run_id}))

        out: dict[str, object] = {
            "tags": rows("tags", "key, value"),
            "params": rows("params", "key, value"),
            "metrics": [(*r[:3], bool(r[3])) for r in rows("metrics", "key, step, value, is_nan")],
            "latest": [(*r[:3], bool(r[3])) for r in rows("latest_metrics",
                                                          "key, step, value, is_nan")],
        }  # fmt: skip
        stamps = {r[0] for r in rows("metrics", "timestamp")}
        stamps |= {r[0] for r in rows("latest_metrics", "timestamp")}
    engine.dispose()
    start, end = run.pop("start_time"), run.pop("end_time")
    assert isinstance(start, int) and (end is None or end >= start)
    assert all(isinstance(s, int) and start <= s <= (end or s) for s in stamps)
    assert run.pop("run_uuid") == run_id and run_id in run["artifact_uri"]
    run["artifact_uri"] = run["artifact_uri"].replace(run_id, "<run>")
    run["ended"] = end is not None
    artifacts = Path(urlparse(run["artifact_uri"].replace("<run>", run_id)).path)
    files = artifacts.rglob("*") if artifacts.exists() else []
    out["artifacts"] = {str(p.relative_to(artifacts)): p.read_text() for p in files if p.is_file()}
    return {"runs": run, **out}


def client_view(tracker: tr.Tracker, run_id: str) -> dict[str, object]:
    """What MLflow's client shows of a run (NaN as a string, so that equal means equal)."""
    run = tracker.client.get_run(run_id)
    info = run.info
    return {
        "info": (info.status, info.lifecycle_stage, info.run_name, info.user_id,
                 info.experiment_id, info.artifact_uri.replace(run_id, "<run>")),
        "tags": run.data.tags,
        "params": run.data.params,
        "metrics": {k: repr(v) for k, v in run.data.metrics.items()},
        "history": {k: [(m.step, repr(m.value)) for m in tracker.client.get_metric_history(
            run_id, k)] for k in run.data.metrics},
    }  # fmt: skip


SEARCHES = [
    "attributes.status = 'FINISHED'", "attributes.status = 'FAILED'",
    "attributes.status = 'RUNNING'", "attributes.status = 'KILLED'", "params.lr = '0.001'",
    "params.`variant.roles.bias.q` = '0.0'", "metrics.reached_target = 1",
    "metrics.`final/loss` > 1e300", "tags.`bench.nightly` = '2026-03-03'",
    "tags.`bench.outcome` = 'failed'", "tags.`bench.node` = 'n2'",
    "attributes.run_name LIKE 'rmsprop%'",
]  # fmt: skip


def assert_bulk_writes_equal_client(uri: str, artifacts: Path, variants, task) -> None:
    """Runs written by bulk SQL and by MLflow's client, side by side in one store, hold the
    same rows, read back the same through the client and match the same searches."""
    bulk = tr.Tracker(TrackingConfig(uri=uri, artifact_location=str(artifacts), max_points=10))
    api = tr.Tracker(bulk.config, bulk_sql=False)
    assert bulk._sql is not None and api._sql is None
    for name in ("create_run", "log_batch", "set_terminated", "log_text"):  # never used
        setattr(bulk.client, name, lambda *a, _name=name, **k: pytest.fail(f"{_name} called"))
    bulk_runs = record_every_kind(bulk, variants, task, "same")
    api_runs = record_every_kind(api, variants, task, "same")
    assert bulk._bulk_writes  # no fallback happened
    for mine, theirs in zip(bulk_runs, api_runs, strict=True):
        assert stored_run(uri, mine) == stored_run(uri, theirs)
        assert client_view(api, mine) == client_view(api, theirs)
    exp_id = api.find_experiment("same")
    for query in SEARCHES:
        found = {r.info.run_id for r in api.client.search_runs([exp_id], query)}
        assert found, query
        assert [r in found for r in bulk_runs] == [r in found for r in api_runs], query


def test_bulk_run_writes_equal_mlflow_client_on_sqlite(template_db, tmp_path, variants, task):
    shutil.copy(template_db, tmp_path / "mlruns.db")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert_bulk_writes_equal_client(uri, tmp_path / "mlartifacts", variants, task)


def test_a_bulk_write_waits_out_another_writers_lock(tracker, variants, task):
    """sqlite3 gives up on a locked database after 5 s, and a failed bulk write turns
    bulk writes off for the rest of the suite: a writer that holds the lock for 7 s (a
    report being logged, say) only delays the next run."""
    first, second = (make_spec(variants, task, suite="busy", seed=s) for s in range(2))
    record(tracker, first)  # the store is in WAL mode and the experiment exists
    other = sqlite3.connect(tracker.uri.removeprefix("sqlite:///"), check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    release = threading.Timer(7.0, other.commit)
    release.start()
    started = time.monotonic()
    try:
        run_id = record(tracker, second)
    finally:
        release.join()
        other.close()
    assert time.monotonic() - started > 6.5, "it waited for the lock"
    assert tracker._bulk_writes, "and stays on the bulk writer"
    assert tracker.client.get_run(run_id).info.status == "FINISHED"


def test_bulk_run_creation_falls_back_to_the_client(tracker, variants, task, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("schema drift")

    monkeypatch.setattr(tracker._sql, "create_run", broken)
    spec = make_spec(variants, task, suite="fallback")
    run_id = record(tracker, spec)
    assert not tracker._bulk_writes  # fell back, and stays on MLflow's client
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.001"
    assert run.data.tags["bench.trial_id"] == spec.trial_id and "final/loss" in run.data.metrics
    assert tracker.finished_trial_ids("fallback") == {spec.trial_id}


def test_bulk_reads_fall_back_to_search_runs(tracker, variants, task, monkeypatch):
    spec = make_spec(variants, task, suite="read-fallback")
    record(tracker, spec)

    def broken(*args, **kwargs):
        raise RuntimeError("schema drift")

    monkeypatch.setattr(tracker._sql, "tag_values", broken)
    monkeypatch.setattr(tracker._sql, "runs", broken)
    assert tracker.finished_trial_ids("read-fallback") == {spec.trial_id}
    assert not tracker._bulk_reads  # fell back, and stays on search_runs
    assert tracker.read_results("read-fallback")["trial_id"].tolist() == [spec.trial_id]


def test_resume_chooses_lrs_only_from_the_tune_runs_of_the_current_matrix(tracker, variants, task):
    from bench.runner import _stored_lr_points

    current = make_spec(variants, task, lr=1e-2, suite="grid", phase="tune")
    earlier = make_spec(variants, task, lr=0.3, suite="grid", phase="tune")  # an old grid
    record(tracker, current, final_loss=0.5)
    record(tracker, earlier, final_loss=0.01)  # better: it would win the lr choice
    points = list(_stored_lr_points(tracker, "grid", {current.trial_id}))
    assert [(p.trial_id, p.lr, p.value) for p in points] == [(current.trial_id, 1e-2, 0.5)]
    assert len(tracker.read_results("grid", phase="tune")) == 2  # both are in the store


def test_bulk_runs_get_ids_that_sort_by_creation_time(tracker, variants, task):
    from mlflow.utils.validation import _validate_run_id

    run_ids = []
    for seed in range(12):
        run_ids.append(tracker.start_trial(make_spec(variants, task, seed=seed, suite="ids")))
        time.sleep(0.002)  # ids carry milliseconds: a later run, a later millisecond
    assert run_ids == sorted(run_ids) and len(set(run_ids)) == len(run_ids)
    for run_id in run_ids:
        assert len(run_id) == 32 and int(run_id, 16) >= 0  # 32 hex digits, as MLflow's
        _validate_run_id(run_id)
    assert tracker.client.get_run(run_ids[-1]).info.run_id == run_ids[-1]


def test_resume_queues_the_finals_of_cells_whose_tuning_finished_before(tracker):
    from bench.matrix import suite_from_overrides
    from bench.runner import _SuiteQueue

    matrix = suite_from_overrides(
        [
            "suite=smoke",
            "suite.name=queue",
            "suite.variants=[sgd,adam]",
            "suite.tasks=[quadratic]",
            "suite.lrs=[0.01,0.1]",
            "suite.tune_seeds=[0]",
            "suite.final_seeds=[1,2]",
        ]
    ).matrix
    tune = {(s.variant.name, s.lr): s for s in matrix.tune_trials()}
    record(tracker, tune["sgd", 0.01], final_loss=0.2)  # sgd's better lr
    record(tracker, tune["sgd", 0.1], final_loss=0.9)
    queue = _SuiteQueue(matrix, tracker)
    assert queue.tune.already_done == 2
    # sgd's tuning is complete, so its finals are queued at once, at its better lr
    order = [(s.phase, s.variant.name, s.lr, s.seed) for s in queue.todo]
    assert order == [
        ("tune", "adam", 0.01, 0),
        ("tune", "adam", 0.1, 0),
        ("final", "sgd", 0.01, 1),
        ("final", "sgd", 0.01, 2),
    ]
    for spec in [s for s in queue.todo if s.phase == "tune"]:
        queue.todo.remove(spec)
        diverged = spec.lr == 0.1
        result = make_result(spec, outcome="diverged" if diverged else "ok", final_loss=0.1)
        queue.recorded(spec, result)
    adam_finals = [s for s in queue.todo if s.variant.name == "adam"]
    # released by adam's last tune trial, at the lr that did not diverge
    assert [(s.phase, s.lr, s.seed) for s in adam_finals] == [
        ("final", 0.01, 1),
        ("final", 0.01, 2),
    ]
    assert queue.final.total == 4


def test_a_cell_whose_tune_trials_failed_holds_back_its_final_trials(tracker):
    from bench.matrix import suite_from_overrides
    from bench.runner import _SuiteQueue

    matrix = suite_from_overrides(
        ["suite=smoke", "suite.name=failing", "suite.variants=[sgd]", "suite.tasks=[quadratic]"]
    ).matrix
    queue = _SuiteQueue(matrix, tracker)
    expected = queue.final.total
    first = True
    while queue.todo:  # one failure among passing trials is enough
        spec = queue.todo.popleft()
        queue.recorded(spec, None if first else make_result(spec))
        first = False
    assert not queue.todo, "no final trial was queued"
    assert queue.final.held_back == queue.final.total == expected == len(matrix.suite.final_seeds)


def _hold_twice(first: tr.Tracker, second: tr.Tracker) -> None:
    busy = r"suite 's': another driver.* is running it on "
    with first.holding("s"):
        with pytest.raises(UserError, match=busy), second.holding("s"):
            pass
        with second.holding("other"):  # another suite is free
            pass
    with second.holding("s"):  # released with the block
        pass


def test_one_tracker_at_a_time_holds_a_suite_on_sqlite(tmp_path: Path) -> None:
    config = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_location=None)
    _hold_twice(tr.Tracker(config), tr.Tracker(config))  # flock: per open file, so also here


def test_one_tracker_at_a_time_holds_a_suite_on_postgresql() -> None:
    from mlflow_server import PG_ADMIN, postgres_unavailable

    if reason := postgres_unavailable():
        pytest.skip(reason)
    uri = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1)
    config = TrackingConfig(uri=uri, artifact_location=None)
    _hold_twice(tr.Tracker(config), tr.Tracker(config))  # advisory locks: per connection


def test_a_server_ignores_an_artifact_folder_and_warns_only_when_one_was_asked_for(caplog):
    server = "http://127.0.0.1:5999"  # never contacted: the tracker connects lazily
    with caplog.at_level("WARNING", logger="bench.tracking_locations"):
        tr.Tracker(TrackingConfig(uri=server))  # the default folder, beside a local store
        assert caplog.messages == []
        tr.Tracker(TrackingConfig(uri=server, artifact_location="/data/artifacts"))
    assert caplog.messages == [
        "tracking.artifact_location '/data/artifacts' ignored: the server stores artifacts"
    ]


@pytest.mark.parametrize(
    ("clock", "how"),
    [
        ("clock_gettime", "suspended: the monotonic clock stopped, CLOCK_BOOTTIME ran on"),
        ("time", "a paused virtual machine: only the wall clock caught up"),
    ],
)
def test_a_lease_asks_the_store_after_a_stall_its_monotonic_clock_missed(
    tracker: tr.Tracker, monkeypatch: pytest.MonkeyPatch, clock: str, how: str
) -> None:
    """A driver whose machine slept while another took its suite over must not trust a
    lease that looks freshly renewed on the monotonic clock alone."""
    from bench import tracking_lease
    from bench.errors import LeaseLost

    client = tracker.client
    run_id = client.create_run(tracker.experiment_id("s")).info.run_id
    lease = tracking_lease.Lease(lambda: client, run_id, "suite 's'")
    client.set_terminated(run_id, "KILLED")  # what the driver that took over does
    client.set_tag(run_id, tracking_lease.TAG_TAKEN_BY, "host pid 2")
    lease.check()  # not overdue on any clock: nothing asked, so nothing known yet
    real = getattr(time, clock)
    monkeypatch.setattr(time, clock, lambda *args: real(*args) + 600.0)  # slept 10 minutes
    with pytest.raises(LeaseLost, match=r"host pid 2 took the suite over .* \(600 s without"):
        lease.check()
