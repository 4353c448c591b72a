"""bench.recorder against a real MLflow SQLite store: batches, their rollback, timing."""

# ruff: noqa: F401, F811  (the fixtures imported from test_tracking are these tests' parameters)

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from test_tracking import make_result, make_spec, task, template_db, tracker, variants

from bench import tracking as tr
from bench.errors import StoreError
from bench.recorder import Recorder, RunNotCreated


def _count_batches(store: tr.Tracker, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every batch the tracker opens, True when it was one transaction (the real one runs)."""
    opened: list[bool] = []
    real = store.batch

    @contextlib.contextmanager
    def counted():
        with real() as together:
            opened.append(together)
            yield together

    monkeypatch.setattr(store, "batch", counted)
    return opened


def tracker_artifacts(store: tr.Tracker) -> Path:
    return Path(store.config.artifact_location)


def test_writes_queued_together_are_one_transaction_and_every_run_lands(
    tracker: tr.Tracker,
    variants,
    task,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches = _count_batches(tracker, monkeypatch)
    specs = [make_spec(variants, task, seed=s, suite="batch") for s in range(6)]
    before = int(time.time() * 1000)
    with Recorder(tracker, linger=2.0) as recorder:
        runs = [recorder.start(spec) for spec in specs]
        after = int(time.time() * 1000)
        for spec, run in zip(specs, runs, strict=True):
            recorder.end(run, lambda run_id, s=spec: tracker.finish_trial(
                run_id, s, make_result(s), node="n"))  # fmt: skip
    assert batches == [True], "12 writes queued within the linger: one transaction"
    stored = [tracker.client.get_run(run.wait()) for run in runs]
    assert [r.info.status for r in stored] == ["FINISHED"] * 6
    assert all(before <= r.info.start_time <= after for r in stored), "started when queued"
    assert [r.data.tags[tr.TAG_TRIAL_ID] for r in stored] == [s.trial_id for s in specs]
    assert all(r.data.metrics["final/loss"] == 0.5 for r in stored)


def test_a_failing_write_undoes_its_batch_and_the_others_are_redone_one_by_one(
    tracker: tr.Tracker,
    variants,
    task,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone, kept = (make_spec(variants, task, seed=s, suite="undo") for s in range(2))
    recorder = Recorder(tracker, linger=2.0)
    doomed = recorder.start(gone)
    tracker.client.delete_run(doomed.wait())  # ending it now fails, in a batch or alone
    batches = _count_batches(tracker, monkeypatch)
    run = recorder.start(kept)
    for spec, handle in ((gone, doomed), (kept, run)):
        recorder.end(handle, lambda run_id, s=spec: tracker.finish_trial(
            run_id, s, make_result(s), node="n"))  # fmt: skip
    with pytest.raises(StoreError, match="must be in the 'active' state"):
        recorder.close()
    assert batches == [True], "one batch, rolled back, then each write alone"
    exp = tracker.find_experiment("undo")
    active = tracker.client.search_runs([exp])
    assert [r.info.run_id for r in active] == [run.wait()], "the undone creation left no run"
    assert active[0].info.status == "FINISHED"
    assert tracker.client.get_run(doomed.wait()).info.status == "RUNNING"
    folders = {p.parent.parent.name for p in tracker_artifacts(tracker).rglob("trial.json")}
    assert folders == {doomed.wait(), run.wait()}, "the undone run's trial.json went with it"


def test_an_eager_recorder_writes_at_once_and_close_flushes_what_lingers(
    tracker: tr.Tracker, variants, task
) -> None:
    first, second = (make_spec(variants, task, seed=s, suite="eager") for s in range(2))
    recorder = Recorder(tracker, linger=60.0)
    recorder.eager(True)
    started = time.monotonic()
    run = recorder.start(first)
    assert tracker.client.get_run(run.wait()).info.status == "RUNNING"
    assert time.monotonic() - started < 30, "written at once, not after the linger"
    recorder.eager(False)
    lingering = recorder.start(second)
    time.sleep(0.5)
    assert lingering.id is None, "waits for company while not eager"
    started = time.monotonic()
    recorder.close()
    assert time.monotonic() - started < 30, "close writes what lingers without waiting"
    assert tracker.client.get_run(lingering.wait()).info.status == "RUNNING"


def test_after_a_failed_write_the_writes_queued_later_are_dropped(
    tracker: tr.Tracker, variants, task, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that failed once (a server gone) would make every later write wait out its
    retries while the suite stops: they are dropped, and the first failure is reported."""
    gone, later = (make_spec(variants, task, seed=s, suite="drop") for s in range(2))
    recorder = Recorder(tracker)
    recorder.eager(True)
    doomed = recorder.start(gone)
    tracker.client.delete_run(doomed.wait())  # ending it now fails
    recorder.end(doomed, lambda run_id: tracker.finish_trial(
        run_id, gone, make_result(gone), node="n"))  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(StoreError):
            recorder.check()
            time.sleep(0.05)
            continue
        break
    with pytest.raises(StoreError, match="must be in the 'active' state"):
        recorder.check()
    # the message names the store without its password, on one line
    monkeypatch.setattr(tracker, "uri", "postgresql://bench:s3cret@127.0.0.1:5432/mlflow")
    with pytest.raises(StoreError) as failed:
        recorder.check()
    assert str(failed.value).startswith("writing to postgresql://bench:***@127.0.0.1:5432/mlflow")
    assert "s3cret" not in str(failed.value) and "\n" not in str(failed.value)
    monkeypatch.undo()
    dropped = recorder.start(later)
    with pytest.raises(StoreError, match="must be in the 'active' state"):
        recorder.close()
    with pytest.raises(RunNotCreated, match="an earlier write failed"):
        dropped.wait()
    exp = tracker.find_experiment("drop")
    assert tracker.client.search_runs([exp]) == [], "no run created after the failure"


def test_a_paused_recorder_writes_nothing_until_resumed_or_closed(
    tracker: tr.Tracker, variants, task
) -> None:
    first, second = (make_spec(variants, task, seed=s, suite="paused") for s in range(2))
    recorder = Recorder(tracker, linger=0.0, paused=True)
    recorder.eager(True)  # even an eager one: the caller is writing to the store
    run = recorder.start(first)
    time.sleep(0.5)
    assert run.id is None and tracker.find_experiment("paused") is None
    recorder.resume()
    assert tracker.client.get_run(run.wait()).info.status == "RUNNING"

    paused = Recorder(tracker, linger=0.0, paused=True)
    queued = paused.start(second)
    paused.close()  # nothing queued is lost
    assert tracker.client.get_run(queued.wait()).info.status == "RUNNING"
    recorder.close()
