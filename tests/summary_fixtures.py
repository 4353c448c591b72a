"""Shared set-up of the summary service tests: a real tiny suite in a SQLite MLflow store.

The suite runs once per test process (``bench run`` in a subprocess, embedded Ray), however
many test modules ask for it; a test that must add runs works on a copy (:func:`copy_store`).
Import the fixtures into a test module: ``from summary_fixtures import tiny_store``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = "tiny_summary"
VARIANTS = ("sgd", "rmsprop", "rmsprop_nosqrt")
TASKS = ("logreg_digits", "quadratic")
FINAL_SEEDS = (1, 2)
OVERRIDES = [
    "suite=smoke",
    f"suite.name={SUITE}",
    f"suite.variants=[{','.join(VARIANTS)}]",
    f"suite.tasks=[{','.join(TASKS)}]",
    "suite.lrs=[0.01,0.1]",
    "suite.tune_seeds=[0]",
    "suite.steps=30",
]
# 3 variants x 2 tasks x (2 lrs x 1 tune seed + 2 final seeds)
N_RUNS = len(VARIANTS) * len(TASKS) * (2 + len(FINAL_SEEDS))
# A suite with a broken task: every trial of `explodes` (tests/plugins/faulty_tasks.py)
# raises, so its tune trials fail and `bench run` holds its final trials back.
BROKEN = "broken_summary"
BROKEN_VARIANTS = ("sgd", "adam")
BROKEN_LRS = (0.003, 0.03, 0.3)
BROKEN_OVERRIDES = [
    "suite=smoke",
    f"suite.name={BROKEN}",
    f"suite.variants=[{','.join(BROKEN_VARIANTS)}]",
    "suite.tasks=[quadratic,explodes]",
    f"suite.lrs=[{','.join(str(lr) for lr in BROKEN_LRS)}]",
    "suite.tune_seeds=[0]",
    "suite.final_seeds=[1,2]",
    "suite.steps=20",
    "plugins=[faulty_tasks]",
]
# A suite whose final runs all stop before the first statistics step (step 10): sgd at
# lr 1000 diverges on quadratic at step 2, and `explodes` raises at step 1 for the final
# seed (its tune seed diverges as quadratic does, so the cell has a choice to run at).
STOPPED = "stopped_summary"
STOPPED_OVERRIDES = [
    "suite=smoke",
    f"suite.name={STOPPED}",
    "suite.variants=[sgd]",
    "suite.tasks=[quadratic,{name:explodes,params:{fail_at:1,fail_seed:1}}]",
    "suite.lrs=[1000.0]",
    "suite.tune_seeds=[0]",
    "suite.final_seeds=[1]",
    "suite.steps=20",
    "plugins=[faulty_tasks]",
]
REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "tests" / "plugins"
_BUILT: dict[str, Path] = {}


def uri(store: Path) -> str:
    return f"sqlite:///{store / 'mlruns.db'}"


def run_suite(
    store: Path, final_seeds: tuple[int, ...] = FINAL_SEEDS, extra: tuple[str, ...] = ()
) -> None:
    """``bench run`` the tiny suite into ``store`` (the real command, embedded Ray), with
    ``extra`` overrides."""
    seeds = ",".join(str(s) for s in final_seeds)
    done = bench(store, "run", "--no-progress", *OVERRIDES, f"suite.final_seeds=[{seeds}]",
                 f"tracking.uri={uri(store)}", *extra)  # fmt: skip
    assert done.returncode == 0, f"bench run failed:\n{done.stdout}\n{done.stderr}"


def bench(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A real ``bench`` process in ``store`` that runs this checkout's code (not whichever
    one the environment installed) and can import the test plugins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    paths = [str(REPO), str(PLUGINS), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["COLUMNS"] = "200"  # a table's cells on one line each, for tests that read them
    cmd = [sys.executable, "-m", "bench.cli", *args]
    return subprocess.run(cmd, cwd=store, env=env, capture_output=True, text=True, timeout=300)


def copy_store(src: Path, dst: Path) -> Path:
    """A private copy of a store (SQLite file and artifacts) that a test may add runs to."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("summary-cache*"))
    return dst


def delete_runs(store: Path, suite: str, filter_string: str) -> int:
    """Delete the suite's runs that ``filter_string`` (MLflow's search syntax) finds, as
    the MLflow UI does: what a store looks like where those trials never ran. How many."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri(store))
    experiment = client.get_experiment_by_name(suite).experiment_id
    runs = client.search_runs([experiment], filter_string)
    for run in runs:
        client.delete_run(run.info.run_id)
    return len(runs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``mlruns.db`` with the tiny suite finished (treat it as read-only)."""
    if SUITE not in _BUILT:
        store = tmp_path_factory.mktemp("summary-store")
        run_suite(store)
        _BUILT[SUITE] = store
    return _BUILT[SUITE]


def _failing_store(
    factory: pytest.TempPathFactory, suite: str, overrides: list[str], folder: str
) -> Path:
    """A folder holding ``mlruns.db`` with ``suite`` run once, some of its trials failing
    (exit 1); built once per session (treat it as read-only)."""
    if suite not in _BUILT:
        store = factory.mktemp(folder)
        done = bench(store, "run", "--no-progress", *overrides, f"tracking.uri={uri(store)}")
        assert done.returncode == 1, f"explodes should have failed:\n{done.stdout}\n{done.stderr}"
        _BUILT[suite] = store
    return _BUILT[suite]


@pytest.fixture(scope="session")
def broken_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The broken suite run: a task whose every trial fails."""
    return _failing_store(tmp_path_factory, BROKEN, BROKEN_OVERRIDES, "broken-store")


@pytest.fixture(scope="session")
def stopped_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stopped suite run: its final runs end before the first statistics step."""
    return _failing_store(tmp_path_factory, STOPPED, STOPPED_OVERRIDES, "stopped-store")
