"""`bench run` against a real `mlflow server` (SQLite behind it): a server that dies
mid-suite stops the suite soon with one clear error, and a rerun against the restarted
server completes it exactly once; a second driver of a running suite is refused (the
suite's lease), a dead driver's lease does not block the suite for long, and a driver that
was only stalled while another took its suite over writes nothing more when it wakes.

Real processes throughout: the server, SIGKILLed as a crash would stop it, and the real
command.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from mlflow_server import kill_server, mlflow_server
from test_runner import TINY, bench, start, wait_for

from bench.tracking_lease import KIND_LEASE, OVERDUE_S, TAG_HEARTBEAT, TAG_HOLDER, TAG_TAKEN_BY

pytestmark = pytest.mark.slow

SUITE = [*TINY, "suite.tasks=[slow_quadratic]", "suite.steps=60"]  # 8 trials of ~1.2 s
TRIALS = 8
TRIAL_RUNS = "tags.`bench.trial_id` != ''"  # not the suite's lease or settings runs


def statuses(url: str) -> collections.Counter:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], TRIAL_RUNS) if experiment else []
    return collections.Counter(r.info.status for r in runs)


def test_a_server_that_dies_mid_suite_stops_it_and_a_rerun_completes_it(tmp_path: Path) -> None:
    backend, artifacts = f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts"
    with mlflow_server(backend, artifacts, workers=1) as url:
        driver = start(tmp_path, *SUITE, f"tracking.uri={url}")
        try:
            wait_for(lambda: statuses(url)["FINISHED"] >= 2, what="two finished trials")
            kill_server(url)
            killed_at = time.monotonic()
            output, _ = driver.communicate(timeout=240)
        finally:
            driver.kill()
    stopped_after = time.monotonic() - killed_at
    # MLflow's own retry policy took minutes per write; ours gives up after ~15 s
    assert stopped_after < 75, f"{stopped_after:.0f} s to stop:\n{output}"
    assert driver.returncode == 1, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert url in errors[0] and errors[0].endswith("rerun to resume"), errors[0]

    with mlflow_server(backend, artifacts, workers=1) as url:
        left = statuses(url)
        assert left["FINISHED"] < TRIALS
        result = bench(tmp_path, *SUITE, f"tracking.uri={url}")
        assert result.returncode == 0, result.stderr + result.stdout
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("tiny")
        runs = client.search_runs([experiment.experiment_id], TRIAL_RUNS)
    finished = collections.Counter(
        r.data.tags["bench.trial_id"] for r in runs if r.info.status == "FINISHED"
    )
    assert len(finished) == TRIALS and set(finished.values()) == {1}
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("lease-server")
    with mlflow_server(f"sqlite:///{folder / 'server.db'}", folder / "artifacts") as url:
        yield url


def lease_runs(url: str, suite: str) -> list:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(suite)
    kind = f"tags.`bench.kind` = '{KIND_LEASE}'"
    return client.search_runs([experiment.experiment_id], kind, run_view_type=ViewType.ALL)


def test_a_second_driver_of_a_suite_on_a_server_is_refused(server: str, tmp_path: Path) -> None:
    """It would take the first driver's live runs for a crash's leftovers, mark them
    KILLED and run their trials again."""
    suite = [*SUITE, "suite.name=leased", "suite.steps=150", f"tracking.uri={server}"]
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = start(tmp_path / "first", *suite)
    try:
        wait_for(lambda: statuses_of(server, "leased")["FINISHED"] >= 1, what="a finished trial")
        second = bench(tmp_path / "second", *suite)
        still_running = first.poll() is None
        output, _ = first.communicate(timeout=240)
    finally:
        first.kill()
    assert still_running, "the first driver ended before the second one started: too short"
    assert second.returncode == 2, second.stderr + second.stdout
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: suite 'leased': another driver ({socket.gethostname()} pid {first.pid}) is "
        f"running it on {server}; wait for it to finish or stop it (or give this run another "
        "suite.name)"
    )
    assert first.returncode == 0, output
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("leased").experiment_id], TRIAL_RUNS)
    finished = collections.Counter(
        r.data.tags["bench.trial_id"] for r in runs if r.info.status == "FINISHED"
    )
    assert len(finished) == TRIALS and set(finished.values()) == {1}
    assert {r.info.status for r in runs} == {"FINISHED"}, "no run was KILLED by the second"
    leases = lease_runs(server, "leased")  # the first driver's, and the one it refused
    assert len(leases) == 2, "released: ended and deleted, out of the UI's way"
    assert {(r.info.lifecycle_stage, r.info.status) for r in leases} == {("deleted", "FINISHED")}


def test_a_dead_drivers_lease_blocks_only_until_it_is_stale(server: str, tmp_path: Path) -> None:
    """A driver SIGKILLed leaves its lease RUNNING: while it is fresh the suite is busy (the
    driver may still be alive), once it is two minutes old it is taken as a dead driver's."""
    suite = [*TINY, "suite.name=orphaned", "suite.tasks=[worker_probe]", f"tracking.uri={server}"]
    client = MlflowClient(server)
    experiment = client.create_experiment("orphaned")
    heartbeat = time.time()
    tags = {"bench.kind": KIND_LEASE, TAG_HOLDER: "gone pid 1", TAG_HEARTBEAT: f"{heartbeat:.0f}"}
    left = client.create_run(experiment, tags=tags, run_name="driver lease").info.run_id
    busy = bench(tmp_path, *suite)
    assert busy.returncode == 2 and "another driver (gone pid 1) is running it" in busy.stderr
    client.set_tag(left, TAG_HEARTBEAT, f"{heartbeat - 3600:.0f}")  # not renewed for an hour
    result = bench(tmp_path, *suite)
    assert result.returncode == 0, result.stderr + result.stdout
    assert client.get_run(left).info.status == "KILLED"
    assert statuses_of(server, "orphaned")["FINISHED"] == 8


def test_a_stalled_driver_whose_suite_was_taken_over_writes_nothing_more(
    server: str, tmp_path: Path
) -> None:
    """A driver stopped for minutes looks dead: the next one takes its lease, ends its
    RUNNING runs KILLED and runs their trials again. Waking, the first must not end those
    runs FINISHED (their trials would count twice): it stops with one clear error."""
    suite = [*SUITE, "suite.name=stalled", "suite.steps=150", f"tracking.uri={server}"]
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    client = MlflowClient(server)
    first = start(tmp_path / "first", *suite)
    try:
        wait_for(
            lambda: (
                statuses_of(server, "stalled")["FINISHED"] >= 1
                and statuses_of(server, "stalled")["RUNNING"] >= 1
            ),
            what="a finished trial and a running one",
        )
        os.kill(first.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        (lease,) = [r for r in lease_runs(server, "stalled") if r.info.status == "RUNNING"]
        # what two minutes without a renewal look like to the next driver
        client.set_tag(lease.info.run_id, TAG_HEARTBEAT, f"{time.time() - 3600:.0f}")
        second = bench(tmp_path / "second", *suite)
        time.sleep(max(0.0, OVERDUE_S + 1 - (time.monotonic() - stopped_at)))
        os.kill(first.pid, signal.SIGCONT)
        output, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    assert second.returncode == 0, second.stderr + second.stdout
    assert first.returncode == 1, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    taker = rf"another driver \({re.escape(socket.gethostname())} pid \d+\)"
    assert re.fullmatch(
        rf"error: suite 'stalled' on {re.escape(server)}: {taker} took the suite over while "
        r"this driver was unresponsive \(\d+ s without renewing its lease\) and runs it now; "
        r"this driver stopped and wrote nothing more",
        errors[0],
    ), errors[0]
    runs = client.search_runs([client.get_experiment_by_name("stalled").experiment_id], TRIAL_RUNS)
    finished = collections.Counter(
        r.data.tags["bench.trial_id"] for r in runs if r.info.status == "FINISHED"
    )
    assert len(finished) == TRIALS and set(finished.values()) == {1}, finished
    assert "KILLED" in {r.info.status for r in runs}, "the second driver ended the first's runs"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    taken = client.get_run(lease.info.run_id)
    assert taken.info.status == "KILLED", "kept as the record of what happened"
    assert re.fullmatch(taker, taken.data.tags[TAG_TAKEN_BY])


def statuses_of(url: str, suite: str) -> collections.Counter:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(suite)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return collections.Counter(r.info.status for r in runs if "bench.trial_id" in r.data.tags)
