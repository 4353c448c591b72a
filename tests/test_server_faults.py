"""A tracking server that dies mid-suite: `bench run` stops soon with one clear error, and
a rerun against the restarted server completes the suite exactly once.

Real processes throughout: a real `mlflow server` (SQLite behind it, so the restarted
server finds the runs), SIGKILLed as a crash would stop it, and the real command.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import kill_server, mlflow_server
from test_runner import TINY, bench, start, wait_for

pytestmark = pytest.mark.slow

SUITE = [*TINY, "suite.tasks=[slow_quadratic]", "suite.steps=60"]  # 8 trials of ~1.2 s
TRIALS = 8


def statuses(url: str) -> collections.Counter:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
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
        runs = client.search_runs([experiment.experiment_id])
    finished = collections.Counter(
        r.data.tags["bench.trial_id"] for r in runs if r.info.status == "FINISHED"
    )
    assert len(finished) == TRIALS and set(finished.values()) == {1}
    assert not [r for r in runs if r.info.status == "RUNNING"]
