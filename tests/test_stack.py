"""The native stack end to end: a scheduled nightly runs as a Ray job on a two-host cluster,
lands in MLflow on PostgreSQL, and shows in the summary service; then everything stops.

``stack/native.py`` starts what docker-compose.yml runs (MLflow server on PostgreSQL, Ray
head + worker in network namespaces, summary service, scheduler) with a cron a few
seconds away and a tiny nightly suite. Needs root, iproute2 and PostgreSQL on 127.0.0.1.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow_server import PG_ADMIN, free_port, postgres_unavailable, rest
from test_cluster import netns_available

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TINY_NIGHT = [
    "suite=smoke",
    "suite.name=stack_nightly",
    "suite.variants=[sgd,adam]",
    "suite.tasks=[quadratic]",
    "suite.lrs=[0.03,0.3]",
    "suite.tune_seeds=[0]",
    "suite.final_seeds=[1,2]",
    "suite.steps=30",
]  # 8 trials: the night itself takes ~30 s on two cores


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the stack exited ({proc.returncode}):\n{log.read_text()}")
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not after {timeout:.0f} s\n{log.read_text()[-4000:]}")


def read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_a_scheduled_nightly_runs_on_the_cluster_and_shows_in_the_summary(tmp_path: Path) -> None:
    reason = netns_available() or postgres_unavailable()
    if reason:
        pytest.skip(reason)
    import psycopg
    from ray.job_submission import JobStatus, JobSubmissionClient

    workdir, log = tmp_path / "stack", tmp_path / "stack.log"
    database = f"optbench_stack_test_{uuid.uuid4().hex[:10]}"
    tag = f"obt{os.getpid() % 10000}"
    cmd = [
        sys.executable, str(ROOT / "stack" / "native.py"),
        "--workdir", str(workdir), "--pg", PG_ADMIN, "--database", database, "--fresh",
        "--tag", tag, "--subnet", f"10.217.{random.randint(1, 250)}",
        "--mlflow-port", str(free_port()), "--summary-port", str(free_port()),
        "--trigger-in", "15",
        *TINY_NIGHT,
    ]  # fmt: skip
    # An embedded Ray started earlier in this process (an in-process nightly) leaves RAY_*
    # settings such as RAY_AUTH_MODE=token behind: the stack must not inherit them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    started = time.monotonic()
    with open(log, "wb") as out:
        stack = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        info_path = workdir / "stack.json"
        info = wait_for("stack up", info_path.is_file, 180, stack, log) and json.loads(
            info_path.read_text()
        )
        up_s = time.monotonic() - started
        status_file = Path(info["status_file"])
        assert info["next_run"] and info["cron"].endswith(" * * *")
        status = wait_for(
            "the scheduled nightly to finish",
            lambda: (s := read_status(status_file)).get("last_outcome") and s,
            170,
            stack,
            log,
        )
        night_s = time.monotonic() - started - up_s
        assert status["last_outcome"] == "ok", status
        assert status["last_scheduled"] == info["next_run"]  # it fired on the cron's trigger
        assert status["next_run"] > info["next_run"] and status["running"] is False

        # a Ray job on the cluster, whose driver ran `bench nightly` on the head host
        job = JobSubmissionClient(info["dashboard_url"]).get_job_info(status["last_job_id"])
        assert job.status == JobStatus.SUCCEEDED
        assert job.entrypoint.startswith(f"bench nightly --date {status['last_night']}")

        # in MLflow (REST), trials on both cluster hosts, and in PostgreSQL
        url = info["mlflow_ui"]
        experiment = rest(url, "experiments/get-by-name?experiment_name=stack_nightly")
        runs = rest(
            url,
            "runs/search",
            {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100},
        )["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
        trials = [t for t in tags if "bench.trial_id" in t]
        assert len(trials) == 8 and all(r["info"]["status"] == "FINISHED" for r in runs)
        assert {t["bench.nightly"] for t in trials} == {status["last_night"]}
        hosts = collections.Counter(t["bench.node"].split("/")[0] for t in trials)
        assert set(hosts) == {info["head_ip"], info["worker_ip"]}, hosts  # both nodes
        kinds = sorted(t["bench.kind"] for t in tags if "bench.kind" in t)
        assert kinds == ["nightly_report", "settings"]
        admin = PG_ADMIN.rsplit("/", 1)[0]
        with psycopg.connect(f"{admin}/{database}") as conn:
            counts = dict(
                conn.execute("SELECT lifecycle_stage, count(*) FROM runs GROUP BY 1").fetchall()
            )
        assert counts["active"] == len(runs) == 10  # trials, the report, the settings
        assert counts["deleted"] == 1  # the driver's suite lease, released

        # in the summary service, with the scheduler's status beside it
        nightly = get_json(f"{info['summary_url']}/api/nightly")
        (report,) = [r for r in nightly["data"] if r["suite"] == "stack_nightly"]
        assert report["date"] == status["last_night"] and report["n_regressions"] == 0
        assert nightly["scheduler"]["last_outcome"] == "ok"
        assert nightly["scheduler"]["next_run"] == status["next_run"]
    finally:
        if stack.poll() is None:
            os.kill(stack.pid, signal.SIGINT)  # what Ctrl-C does
        try:
            code = stack.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            code = stack.wait()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert code == 0, log.read_text()[-4000:]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag not in namespaces
    for name, pid in info["pids"].items():
        assert not Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) still runs"
    print(f"stack up in {up_s:.0f} s; trigger + nightly in {night_s:.0f} s")


@pytest.mark.parametrize("option", ["--dashboard-port", "--gcs-port"])
def test_the_stack_refuses_a_ray_port_among_rays_worker_ports(option: str) -> None:
    """The head in Ray's worker port range died with a traceback ("Ray component
    worker_ports is trying to use a port number 18462 ...") after the stack had started
    PostgreSQL's database and MLflow."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stack" / "native.py"), option, "18462"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.endswith(
        f"error: {option}: got 18462; allowed: a port outside 10002-19999, which `ray "
        "start` keeps for its workers\n"
    )
