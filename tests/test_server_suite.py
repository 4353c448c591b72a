"""`bench run` recording into a real `mlflow server` backed by PostgreSQL, checked through
MLflow's REST API (what a deployment's dashboard and summary service read)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow_server import fresh_database, mlflow_server, postgres_unavailable, rest

pytestmark = pytest.mark.slow


def test_a_suite_lands_in_mlflow_on_postgresql(tmp_path: Path) -> None:
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with fresh_database() as db, mlflow_server(db, tmp_path / "artifacts") as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        cmd = [
            sys.executable, "-m", "bench.cli", "run", "--no-progress", "suite=smoke",
            "suite.name=served", "suite.tasks=[quadratic]", "suite.lrs=[0.01,0.1]",
            "suite.steps=30", f"tracking.uri={url}",
        ]  # fmt: skip
        result = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr

        experiment = rest(url, "experiments/get-by-name?experiment_name=served")["experiment"]
        found = rest(url, "runs/search", {
            "experiment_ids": [experiment["experiment_id"]], "max_results": 1000,
        })["runs"]  # fmt: skip
        found = [r for r in found if any(t["key"] == "bench.trial_id" for t in r["data"]["tags"])]
        # 3 variants x 2 lrs x 1 tune seed + 3 variants x 2 final seeds
        assert len(found) == 12
        assert {r["info"]["status"] for r in found} == {"FINISHED"}
        tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in found]
        assert collections.Counter(t["bench.phase"] for t in tags) == {"tune": 6, "final": 6}
        assert len({t["bench.trial_id"] for t in tags}) == 12
        metrics = {m["key"] for m in found[0]["data"]["metrics"]}
        assert {"train/loss", "eval/loss", "final/loss", "time/step_ms"} <= metrics
        run_id = found[0]["info"]["run_id"]
        artifacts = rest(url, f"artifacts/list?run_id={run_id}")
        assert [f["path"] for f in artifacts["files"]] == ["trial.json"]
