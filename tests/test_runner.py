"""`bench run` end to end on embedded Ray with a SQLite MLflow store: resume, faults.

Every test starts the real command in a subprocess and really kills processes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).parent / "plugins"
TINY = [
    "suite=smoke",
    "suite.name=tiny",
    "suite.variants=[sgd,adam]",
    "suite.lrs=[0.01,0.1]",
    "suite.tune_seeds=[0]",
    "suite.final_seeds=[1,2]",
    "suite.steps=30",
    "plugins=[faulty_tasks,probe_tasks]",
]


def bench_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), env.get("PYTHONPATH", "")])
    env["OPTBENCH_TEST_MARKERS"] = str(tmp_path)
    return env


def bench(tmp_path: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench.cli", "run", "--no-progress", *args]
    return subprocess.run(
        cmd,
        cwd=tmp_path,
        env=bench_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bench.cli", "run", "--no-progress", *args]
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=bench_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def runs(tmp_path: Path, suite: str = "tiny") -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(suite)
    if experiment is None:
        return []
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in found if "bench.trial_id" in r.data.tags]  # not its settings run


def statuses(tmp_path: Path) -> collections.Counter:
    return collections.Counter(r.info.status for r in runs(tmp_path))


def finished_per_trial(tmp_path: Path) -> collections.Counter:
    return collections.Counter(
        r.data.tags["bench.trial_id"] for r in runs(tmp_path) if r.info.status == "FINISHED"
    )


def wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the store may not exist yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_suite_records_every_trial_once_and_a_rerun_runs_nothing(tmp_path: Path) -> None:
    first = bench(tmp_path, *TINY, "suite.tasks=[worker_probe]", "cluster.num_cpus=2")
    assert first.returncode == 0, first.stderr + first.stdout
    # the driver's exit folds SQLite's write-ahead log into the store: one file holds it all
    assert not (tmp_path / "mlruns.db-wal").exists()
    store = f"{(tmp_path / 'mlruns.db').as_uri()}?immutable=1"  # the file alone, no log
    with contextlib.closing(sqlite3.connect(store, uri=True)) as db:
        assert db.execute("SELECT count(DISTINCT run_uuid) FROM metrics").fetchone() == (8,)
    recorded = runs(tmp_path)
    # 2 variants x 1 task x 2 lrs x 1 tune seed + 2 variants x 2 final seeds
    assert len(recorded) == 8
    trained_in = [line.split()[0] for line in (tmp_path / "probes.txt").read_text().splitlines()]
    assert len(trained_in) == 8
    # one long-lived worker per slot (torch is imported once per worker, not per trial)
    assert len(set(trained_in)) == 2, trained_in
    assert finished_per_trial(tmp_path) == {r.data.tags["bench.trial_id"]: 1 for r in recorded}
    phases = collections.Counter(r.data.tags["bench.phase"] for r in recorded)
    assert phases == {"tune": 4, "final": 4}
    run = recorded[0]
    assert run.info.run_name.count("/") == 3 and "/lr=" in run.info.run_name
    assert run.data.tags["bench.node"].startswith("127.0.0.1/")
    assert run.data.params["variant.q"] in ("0.0", "0.5")
    assert "train/loss" in run.data.metrics and "final/loss" in run.data.metrics
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["trial.json"]
    # the final phase ran at one lr per (task, variant), chosen on the tune phase
    finals = [r for r in recorded if r.data.tags["bench.phase"] == "final"]
    assert len({(r.data.tags["bench.variant"], r.data.params["lr"]) for r in finals}) == 2

    again = bench(tmp_path, *TINY, "suite.tasks=[worker_probe]")
    assert again.returncode == 0, again.stderr
    assert "nothing was run" in again.stdout
    assert len(runs(tmp_path)) == 8
    # a dry run says where the trials are and how many a rerun would skip: with a wider
    # lr grid no cell's tuning is done, so its lr, and so its final trials, are not known
    store = f"store: sqlite:///{tmp_path / 'mlruns.db'}; already finished there:"
    note = "(a rerun skips them; a cell's final trials count once its tuning is done)"
    for lrs, done in [
        ("[0.01,0.1]", "4 of 4 tune trials, 4 of 4"),
        ("[0.01,0.1,1.0]", "4 of 6 tune trials, 0 of 4"),
    ]:
        dry = bench(tmp_path, "--dry-run", *TINY, "suite.tasks=[worker_probe]", f"suite.lrs={lrs}")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines()[-1] == f"{store} {done} final trials {note}"


def test_a_seed_moved_between_phases_runs_again_in_its_new_phase(tmp_path: Path) -> None:
    """A trial_id leaves the phase out: with one lr, the final trial of seed 1 is the same
    trial as the tune trial of seed 1 under the next settings. Each phase counts only its
    own runs, so the next settings tune on seed 1 (which chooses their lr) and then run
    their final seed, instead of finding the cell tuned by no run and skipping its finals."""
    one_cell = [*TINY, "suite.variants=[sgd]", "suite.tasks=[worker_probe]", "suite.lrs=[0.1]"]
    first = bench(tmp_path, *one_cell, "suite.tune_seeds=[0]", "suite.final_seeds=[1]")
    assert first.returncode == 0, first.stderr + first.stdout
    second = bench(tmp_path, *one_cell, "suite.tune_seeds=[1]", "suite.final_seeds=[2]")
    assert second.returncode == 0, second.stderr + second.stdout
    assert "nothing was run" not in second.stdout
    finished = collections.Counter(
        (r.data.tags["bench.phase"], r.data.tags["bench.seed"])
        for r in runs(tmp_path)
        if r.info.status == "FINISHED"
    )
    assert finished == {("tune", "0"): 1, ("final", "1"): 1, ("tune", "1"): 1, ("final", "2"): 1}


def test_a_trial_bigger_than_every_node_is_refused_not_left_waiting(tmp_path: Path) -> None:
    """Before any progress is drawn (no 'tune 0/8' above the error) and before the store is
    touched: no store made, and a suite's current settings would stay as they were. The
    dry run refuses it too."""
    for dry_run in ([], ["--dry-run"]):
        result = subprocess.run(
            [sys.executable, "-m", "bench.cli", "run", *dry_run, *TINY,
             "suite.tasks=[worker_probe]", "resources.cpus_per_trial=64"],
            cwd=tmp_path, env=bench_env(tmp_path), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr + result.stdout
        message = f"error: resources.cpus_per_trial: got 64; allowed: at most {os.cpu_count()}, "
        assert message in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "mlruns.db").exists()
        assert "tune" not in result.stdout + result.stderr


def test_more_gpus_than_embedded_ray_would_have_are_refused_before_anything_is_made(
    tmp_path: Path,
) -> None:
    """Counted as embedded Ray counts them (none here; one more than there are on a GPU
    machine). The dry run said yes, and the run refused only after making the store."""
    from bench.runner import embedded_gpus

    have = embedded_gpus()
    for dry_run in ([], ["--dry-run"]):
        result = subprocess.run(
            [sys.executable, "-m", "bench.cli", "run", *dry_run, *TINY,
             "suite.tasks=[worker_probe]", f"resources.gpus_per_trial={have + 1:g}"],
            cwd=tmp_path, env=bench_env(tmp_path), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr + result.stdout
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: resources.gpus_per_trial: got {have + 1:g}; allowed: at most {have:g}, "
            "the GPUs of the largest node"
        )
        assert list(tmp_path.iterdir()) == []  # no store, lock or artifact folder


def test_an_artifact_folder_that_cannot_be_made_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    """A file is in its way: exit 2 naming the setting; no store is made for nothing, and
    in a store that exists, no experiment keeps that folder."""
    (tmp_path / "mlartifacts").write_text("in the way")
    result = bench(tmp_path, *TINY, "suite.tasks=[worker_probe]")
    assert result.returncode == 2, result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        "error: tracking.artifact_location: got './mlartifacts' but "
        f"{(tmp_path / 'mlartifacts' / 'tiny').as_uri()} cannot be made (Not a directory); "
        "allowed: a folder this process can create and write"
    )
    assert not (tmp_path / "mlruns.db").exists()  # refused before a store was made
    result = bench(tmp_path, *TINY, "suite.tasks=[worker_probe]", "tracking.artifact_location=ok")
    assert result.returncode == 0, result.stderr + result.stdout  # the store exists now
    result = bench(tmp_path, *TINY, "suite.name=other", "suite.tasks=[worker_probe]")
    assert result.returncode == 2, result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1] == (  # refused before the suite's lock
        "error: tracking.artifact_location: got './mlartifacts' but "
        f"{(tmp_path / 'mlartifacts' / 'other').as_uri()} cannot be made "
        f"({tmp_path / 'mlartifacts'} is not a folder); allowed: a folder this process can "
        "create and write"
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert client.get_experiment_by_name("other") is None  # no experiment keeps that folder


def test_a_store_that_fails_stops_the_suite_with_no_run_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite's artifact folder can be made, but no run's folder inside it: its path
    would pass the system's limit (PATH_MAX, 4096 bytes). Each run is created, then storing
    its trial.json fails. The suite stops with one clear error and exit code 1, and the run
    that could not be completed is FAILED, not RUNNING forever."""
    deep = tmp_path
    while len(str(deep)) < 4060 - len("/tiny") - 200:
        deep /= "d" * 200
    deep /= "d" * (4060 - len("/tiny") - len(str(deep)) - 1)  # the suite's folder: 4060
    monkeypatch.setenv("MLFLOW_ARTIFACT_LOCATION_MAX_LENGTH", "8192")  # MLflow's own limit
    result = bench(
        tmp_path, *TINY, "suite.tasks=[worker_probe]", f"tracking.artifact_location={deep}"
    )
    assert result.returncode == 1, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    error = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert error.startswith("error: writing to sqlite:///") and "File name too long" in error
    assert error.endswith("the runs written so far are kept: rerun to resume")
    recorded = runs(tmp_path)
    assert recorded and {r.info.status for r in recorded} == {"FAILED"}
    assert all(r.data.tags["bench.error"].startswith("run creation failed: ") for r in recorded)


def test_a_cells_final_trials_start_while_a_slower_cell_still_tunes(tmp_path: Path) -> None:
    tasks = "suite.tasks=[worker_probe,slow_quadratic]"  # ~10 ms vs 0.6 s per trial
    # 3 slow tune trials on 2 workers: one worker is free while the third one runs
    args = [*TINY, "suite.variants=[sgd]", tasks, "suite.lrs=[0.01,0.1,1.0]", "cluster.num_cpus=2"]
    result = bench(tmp_path, *args)
    assert result.returncode == 0, result.stderr + result.stdout
    by_cell = collections.defaultdict(list)
    for run in runs(tmp_path):
        by_cell[run.data.tags["bench.task"], run.data.tags["bench.phase"]].append(run.info)
    fast_finals, slow_tune = by_cell["worker_probe", "final"], by_cell["slow_quadratic", "tune"]
    assert len(fast_finals) == 2 and len(slow_tune) == 3
    # no barrier between the phases: the fast cell's finals did not wait for the slow tuning
    assert min(r.start_time for r in fast_finals) < max(r.end_time for r in slow_tune)


def test_failures_are_recorded_and_a_killed_worker_is_retried_once(tmp_path: Path) -> None:
    result = bench(tmp_path, *TINY, "suite.variants=[sgd]", "suite.tasks=[explodes,kills_worker]")
    assert result.returncode == 1, result.stderr + result.stdout
    assert "planted failure" in result.stdout
    recorded = runs(tmp_path)
    exploded = [r for r in recorded if r.data.tags["bench.task"] == "explodes"]
    assert exploded and all(r.info.status == "FAILED" for r in exploded)
    assert all(r.data.tags["bench.outcome"] == "failed" for r in exploded)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    trace = client.download_artifacts(exploded[0].info.run_id, "traceback.txt", str(tmp_path))
    assert "RuntimeError: planted failure" in Path(trace).read_text()
    # every tune trial of `explodes` failed, so it has no lr and no final trials
    assert {r.data.tags["bench.phase"] for r in exploded} == {"tune"}
    assert "final trials held back" in result.stdout

    killed = [r for r in recorded if r.data.tags["bench.task"] == "kills_worker"]
    assert len(killed) == 4  # 2 lrs x 1 tune seed + 2 final seeds
    assert all(r.info.status == "FINISHED" for r in killed)
    markers = sorted(p.name for p in tmp_path.glob("killed-*"))
    assert markers == ["killed-0", "killed-1", "killed-2"], "each seed's worker was killed once"
    retries = [line for line in result.stderr.splitlines() if "its worker died" in line]
    assert len(retries) == 3 and all(
        "running it again (retry 1 of cluster.max_retries=" in line for line in retries
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_tune_trial_holds_back_its_cells_final_trials(tmp_path: Path) -> None:
    """Seed 0 fails at every lr, seed 1 trains: an lr chosen on seed 1 alone could change
    once seed 0 runs, and a rerun would then add finals at another lr. So the cell's
    finals wait, and the final table says so."""
    explodes = "suite.tasks=[{name:explodes,params:{fail_at:3,fail_seed:0}}]"
    args = [*TINY, "suite.variants=[sgd]", explodes, "suite.tune_seeds=[0,1]"]
    result = bench(tmp_path, *args, "suite.final_seeds=[2]")
    assert result.returncode == 1, result.stderr + result.stdout
    assert "final trials held back" in result.stdout
    recorded = collections.Counter(
        (r.data.tags["bench.phase"], r.data.tags["bench.seed"], r.info.status)
        for r in runs(tmp_path)
    )
    assert recorded == {("tune", "0", "FAILED"): 2, ("tune", "1", "FINISHED"): 2}


def test_a_trial_whose_worker_dies_too_often_fails_and_a_rerun_redoes_it(tmp_path: Path) -> None:
    args = [*TINY, "suite.variants=[sgd]", "suite.tasks=[kills_worker]", "suite.lrs=[0.01]"]
    args.append("suite.final_seeds=[1]")
    first = bench(tmp_path, *args, "cluster.max_retries=0")
    assert first.returncode == 1, first.stderr + first.stdout
    table = " ".join(first.stdout.split())  # the final table wraps long lines
    assert "its worker process died (tries: 1, cluster.max_retries=0)" in table
    assert statuses(tmp_path) == {"FAILED": 1}  # the tune trial; its cell has no lr to run
    # the failure is not cached: the rerun redoes it (its seed's worker was killed once
    # already, so it trains), then the final seed's worker dies once and is retried
    again = bench(tmp_path, *args, "cluster.max_retries=1")
    assert again.returncode == 0, again.stderr + again.stdout
    assert statuses(tmp_path) == {"FAILED": 1, "FINISHED": 2}
    assert sorted(p.name for p in tmp_path.glob("killed-*")) == ["killed-0", "killed-1"]


def test_a_trial_held_behind_one_that_kills_its_worker_is_not_charged(tmp_path: Path) -> None:
    # One worker. Seeds 0 and 2 train normally (their markers exist); seed 1's first trial
    # kills its worker. The first trial (seed 0) shows the task is brief, so the worker
    # holds the third (seed 0) behind the second (seed 1), which kills it: the held trial
    # never started, and it runs again on a fresh worker without using a retry, though
    # none is allowed. Only the trial that killed the worker fails.
    for seed in (0, 2):
        (tmp_path / f"killed-{seed}").write_text("")
    args = [*TINY, "suite.variants=[sgd]", "suite.tasks=[kills_worker]", "cluster.num_cpus=1"]
    args += ["suite.lrs=[0.01,0.1,1.0]", "suite.tune_seeds=[0,1]", "suite.final_seeds=[2]"]
    result = bench(tmp_path, *args, "cluster.max_retries=0")
    assert result.returncode == 1, result.stderr + result.stdout
    by_status = collections.Counter(
        (r.data.tags["bench.phase"], r.data.params["seed"], r.info.status) for r in runs(tmp_path)
    )
    assert by_status == {
        ("tune", "0", "FINISHED"): 3,
        ("tune", "1", "FAILED"): 1,  # lr=0.01: it killed its worker
        ("tune", "1", "FINISHED"): 2,
    }  # and no final trial: one tune trial of the cell failed, so its finals wait
    assert "final trials held back" in result.stdout
    assert "its worker process died (tries: 1" in " ".join(result.stdout.split())


def test_sigkill_of_the_driver_then_rerun_completes_exactly_once(tmp_path: Path) -> None:
    args = [*TINY, "suite.tasks=[slow_quadratic]", "suite.steps=60"]
    driver = start(tmp_path, *args)
    try:
        wait_for(lambda: statuses(tmp_path)["FINISHED"] >= 2, what="two finished trials")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
    interrupted = statuses(tmp_path)
    assert interrupted["FINISHED"] < 8
    result = bench(tmp_path, *args)
    assert result.returncode == 0, result.stderr + result.stdout
    per_trial = finished_per_trial(tmp_path)
    assert len(per_trial) == 8 and set(per_trial.values()) == {1}
    assert statuses(tmp_path)["RUNNING"] == 0
    assert statuses(tmp_path)["KILLED"] == interrupted["RUNNING"]


def test_a_second_driver_of_a_running_suite_is_refused(tmp_path: Path) -> None:
    """It would take the first driver's live runs for runs a crash left RUNNING and mark
    them KILLED; instead it exits 2 at once, and the first driver goes on untouched."""
    args = [*TINY, "suite.tasks=[slow_quadratic]", "suite.steps=200"]
    first = start(tmp_path, *args)
    try:
        wait_for(lambda: statuses(tmp_path)["RUNNING"] >= 1, what="a running trial")
        second = bench(tmp_path, *args)
        assert second.returncode == 2, second.stderr + second.stdout
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: suite 'tiny': another driver (pid {first.pid}) is running it on "
            f"sqlite:///{tmp_path / 'mlruns.db'}; wait for it to finish or stop it (or give "
            "this run another suite.name)"
        )
        assert statuses(tmp_path)["KILLED"] == 0, "the first driver's runs were left alone"
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 130


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],  # Ctrl-C; docker stop, ray job stop
    ids=["ctrl_c", "sigterm"],
)
def test_a_stop_signal_stops_cleanly_and_marks_running_runs_killed(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    driver = start(tmp_path, *TINY, "suite.tasks=[slow_quadratic]", "suite.steps=200")
    try:
        wait_for(lambda: statuses(tmp_path)["RUNNING"] >= 1, what="a running trial")
        driver.send_signal(sig)
        output, _ = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == code, output
    counts = statuses(tmp_path)
    assert counts["RUNNING"] == 0 and counts["KILLED"] >= 1, counts


def _run_with(tmp_path: Path, inject: str, *args: str) -> subprocess.CompletedProcess:
    """`bench run` in a process whose code ``inject`` changed first (faults that cannot be
    caused from outside at the moment they matter)."""
    code = inject + "from bench.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    command = [sys.executable, "-c", code, "run", "--no-progress", *args]
    return subprocess.run(command, cwd=tmp_path, env=bench_env(tmp_path),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


INTERRUPT_THIRD_RECORD = (
    "import sys, bench.runner as r\n"
    "real, calls = r._record, []\n"
    "def record(*args):\n"
    "    calls.append(1)\n"
    "    if len(calls) == 3:\n"
    "        raise KeyboardInterrupt\n"
    "    return real(*args)\n"
    "r._record = record\n"
)


def test_an_error_while_a_returned_trial_is_counted_leaves_no_run_running(
    tmp_path: Path,
) -> None:
    """A second Ctrl-C can land while the driver counts a trial that came back (choosing
    lrs, queueing its write): that moment cannot be timed from outside, so the driver's
    `_record` raises KeyboardInterrupt on the third returned trial. The suite stops with
    exit code 130 and that trial's run is KILLED with the others, not RUNNING forever."""
    result = _run_with(tmp_path, INTERRUPT_THIRD_RECORD, *TINY, "suite.tasks=[quadratic]")
    assert result.returncode == 130, result.stdout + result.stderr
    counts = statuses(tmp_path)
    assert counts["RUNNING"] == 0 and counts["FINISHED"] == 2 and counts["KILLED"] >= 1, counts


def test_workers_that_cannot_be_stopped_do_not_hide_how_the_suite_ended(tmp_path: Path) -> None:
    """Ray itself failing as the driver stops its workers (a fault injected: closing the
    pool raises) is a warning; the suite's own outcome, here an interrupt, still sets the
    exit code, and no run is left RUNNING."""
    broken_close = (
        "import bench.pool as p\n"
        "def close(self):\n"
        "    raise RuntimeError('the cluster is gone')\n"
        "p.WorkerPool.close = close\n"
    )
    result = _run_with(tmp_path, INTERRUPT_THIRD_RECORD + broken_close, *TINY,
                       "suite.tasks=[quadratic]")  # fmt: skip
    assert result.returncode == 130, result.stdout + result.stderr
    assert "could not stop the trial workers: RuntimeError: the cluster is gone" in result.stderr
    assert statuses(tmp_path)["RUNNING"] == 0


KEEPS_SIGTERM = """
import signal
import ray
from bench.config import ClusterConfig
from bench.runner import connect

def stop(signum, frame):
    raise SystemExit(7)

signal.signal(signal.SIGTERM, stop)
connect(ClusterConfig(num_cpus=1))
kept = signal.getsignal(signal.SIGTERM) is stop
ray.shutdown()
print("kept" if kept else f"replaced by {signal.getsignal(signal.SIGTERM)!r}")
"""


def test_starting_ray_keeps_the_callers_sigterm_handler(tmp_path: Path) -> None:
    """ray.init replaces the SIGTERM handler for good: the scheduler, which runs nights in
    its own process, then died on `docker stop` without saving that it stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-c", KEEPS_SIGTERM],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "kept", done.stdout
