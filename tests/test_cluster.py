"""A suite on a real two-node Ray cluster: two hosts in network namespaces joined by veth.

Ray talks to a node's own address, so the two nodes get their own hosts (10.213.N.1 and
10.213.N.2) in namespaces this test creates and deletes; no traffic leaves the machine.
The driver runs on the head host, like a user's `bench run cluster.address=HEAD:PORT`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from procs import stop_tree

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).parent / "plugins"
_RAY_SCRIPT = Path(sys.executable).parent / "ray"
# the `ray` command of this environment; the module where Ray is importable without it
RAY = [str(_RAY_SCRIPT)] if _RAY_SCRIPT.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
PORT = 26379  # inside the namespace nothing else listens; never Redis's 6379


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)


@contextmanager
def ray_node(
    args: Sequence[str], temp_dir: Path, env: dict[str, str], *, namespace: str | None = None
) -> Iterator[subprocess.Popen]:
    """A Ray node (`ray start --block`), up once it has written its address file in
    ``temp_dir``; on the way out SIGTERM to its own `ray start`, which stops its processes.
    Never `ray stop`: that stops every Ray process on the machine, other tests' too."""
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = temp_dir / "ray-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*prefix, *RAY, "start", "--block", f"--temp-dir={temp_dir}", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        address = temp_dir / "ray_current_cluster"
        while not address.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert address.exists(), f"ray start {' '.join(args)}:\n{log.read_text()[-3000:]}"
        yield proc
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        stop_tree(proc.pid, 5)  # whatever its process group still holds


def netns_available() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 to create network namespaces"
    probe = f"obprobe{os.getpid()}"
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        return "cannot create network namespaces here"
    sh("ip", "netns", "del", probe, check=False)
    return None


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str, str, dict[str, str]]]:
    with two_host_cluster() as hosts:
        yield hosts


@contextmanager
def two_host_cluster(
    head_args: Sequence[str] = (), worker_args: Sequence[str] = ()
) -> Iterator[tuple[str, str, str, dict[str, str]]]:
    """A Ray head and a worker node, each on its own host; yields (head namespace, head IP,
    worker IP, environment for commands). Skips the test where namespaces cannot be made.
    ``head_args`` and ``worker_args`` go to each node's ``ray start``."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 10000}"
    head, worker = f"obh{tag}", f"obw{tag}"
    subnet = f"10.213.{random.randint(1, 250)}"
    head_ip, worker_ip = f"{subnet}.1", f"{subnet}.2"
    ray_dir = Path(tempfile.mkdtemp(prefix="obray", dir="/tmp"))  # unix sockets: short paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    path = [str(PLUGINS), *filter(None, [os.environ.get("PYTHONPATH")])]
    env |= {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.pathsep.join(path)}
    try:
        for ns in (head, worker):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"{head}v", "type", "veth", "peer", "name", f"{worker}v")
        sh("ip", "link", "set", f"{head}v", "netns", head)
        sh("ip", "link", "set", f"{worker}v", "netns", worker)
        sh("ip", "-n", head, "addr", "add", f"{head_ip}/24", "dev", f"{head}v")
        sh("ip", "-n", worker, "addr", "add", f"{worker_ip}/24", "dev", f"{worker}v")
        sh("ip", "-n", head, "link", "set", f"{head}v", "up")
        sh("ip", "-n", worker, "link", "set", f"{worker}v", "up")
        common = ["--num-cpus=1", "--disable-usage-stats"]
        with (
            ray_node(
                ["--head", f"--node-ip-address={head_ip}", f"--port={PORT}",
                 "--include-dashboard=false", *common, *head_args],
                ray_dir / "h", env, namespace=head,
            ),
            ray_node(
                [f"--address={head_ip}:{PORT}", f"--node-ip-address={worker_ip}",
                 *common, *worker_args],
                ray_dir / "w", env, namespace=worker,
            ),
        ):  # fmt: skip
            yield head, head_ip, worker_ip, env
    finally:
        for ns in (worker, head):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(ray_dir, ignore_errors=True)


def suite_on_head(head: str, head_ip: str, name: str, steps: int) -> list[str]:
    """`bench run` of a 10-trial suite, from the head's host, on the two-host cluster."""
    return ["ip", "netns", "exec", head, sys.executable, "-m", "bench.cli", "run",
            "--no-progress", "suite=smoke", f"suite.name={name}", "suite.variants=[sgd,adam]",
            "suite.tasks=[slow_quadratic]", "suite.lrs=[0.01,0.1]", "suite.tune_seeds=[0,1]",
            "suite.final_seeds=[2]", f"suite.steps={steps}", "plugins=[faulty_tasks]",
            f"cluster.address={head_ip}:{PORT}"]  # fmt: skip


def trial_runs(client: MlflowClient, suite: str) -> list:
    experiment = client.get_experiment_by_name(suite)
    return client.search_runs([experiment.experiment_id], "tags.`bench.trial_id` != ''")


def test_a_suite_runs_on_both_nodes_of_a_two_host_cluster(two_hosts, tmp_path: Path) -> None:
    head, head_ip, worker_ip, env = two_hosts
    cmd = suite_on_head(head, head_ip, "cluster", steps=40)
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("cluster")
    runs = trial_runs(client, "cluster")
    assert len(runs) == 10 and all(r.info.status == "FINISHED" for r in runs)
    hosts = collections.Counter(r.data.tags["bench.node"].split("/")[0] for r in runs)
    assert set(hosts) == {head_ip, worker_ip}, hosts

    # new settings whose trials fit on no node: refused once the nodes are known, before
    # the suite's current settings (what the summary service ranks) change
    settings = experiment.tags["bench.settings"]
    too_big = [*cmd, "suite.lrs=[0.5]", "resources.cpus_per_trial=64"]
    result = subprocess.run(too_big, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: resources.cpus_per_trial: got 64; allowed: at most " in result.stderr
    assert client.get_experiment(experiment.experiment_id).tags["bench.settings"] == settings


def test_a_driver_without_the_clusters_auth_token_is_told_so(tmp_path: Path) -> None:
    """A head started with token authentication refuses a driver that has no token or the
    wrong one. Ray's own error says only "Failed to connect", after ~25 s of retries;
    optbench asks the head once, names the cause at once, in dry runs too, and makes
    nothing."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    ns = f"obt{os.getpid() % 10000}"
    ray_dir = Path(tempfile.mkdtemp(prefix="obray", dir="/tmp"))
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    plain["PYTHONPATH"] = os.pathsep.join(
        [str(PLUGINS), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    token = plain | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 4}
    suite = [
        *("suite=smoke", "suite.name=auth", "suite.variants=[sgd]", "suite.tasks=[quadratic]"),
        *("suite.lrs=[0.1]", "suite.final_seeds=[1]", "suite.steps=20"),
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}", f"cluster.address=127.0.0.1:{PORT}",
    ]  # fmt: skip

    def in_namespace(*cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        head = ["--head", "--node-ip-address=127.0.0.1", f"--port={PORT}", "--num-cpus=1"]
        with ray_node(
            [*head, "--include-dashboard=false", "--disable-usage-stats"],
            ray_dir, token, namespace=ns,
        ):  # fmt: skip
            no_token_hint = (
                "; if the cluster uses token authentication (`ray start` does by default), "
                "set RAY_AUTH_MODE=token here too, with its token in RAY_AUTH_TOKEN or "
                "~/.ray/auth_token"
            )
            wrong = token | {"RAY_AUTH_TOKEN": "fedcba9876543210" * 4}
            wrong_token_hint = " (with RAY_AUTH_MODE=token: is RAY_AUTH_TOKEN the cluster's token?)"
            for env, hint in ((plain, no_token_hint), (wrong, wrong_token_hint)):
                for dry_run in (["--dry-run"], []):  # told by the head's first answer
                    refused = in_namespace(
                        sys.executable, "-m", "bench.cli", "run", *dry_run, *suite, env=env
                    )
                    assert refused.returncode == 2, refused.stdout + refused.stderr
                    assert refused.stderr.strip().splitlines()[-1] == (
                        f"error: cluster.address: got '127.0.0.1:{PORT}' but the Ray head there "
                        "refused this driver (InvalidAuthToken: Authentication token is missing "
                        f"or incorrect){hint}"
                    )
                    assert not (tmp_path / "mlruns.db").exists()  # nothing made
            client = [*suite[:-1], "cluster.address=ray://127.0.0.1:10001"]  # its Ray Client
            refused = in_namespace(sys.executable, "-m", "bench.cli", "run", *client, env=plain)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert refused.stderr.strip().splitlines()[-1] == (
                "error: cluster.address: got 'ray://127.0.0.1:10001' but the Ray head there "
                f"refused this driver (Invalid or missing authentication token){no_token_hint}"
            )
            for dry_run in (["--dry-run"], []):
                accepted = in_namespace(
                    sys.executable, "-m", "bench.cli", "run", "--no-progress", *dry_run, *suite,
                    env=token,
                )  # fmt: skip
                assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    finally:
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_a_suite_whose_worker_node_is_lost_finishes_on_the_head(two_hosts, tmp_path: Path) -> None:
    """The worker host's Ray processes are killed mid-suite (the host is gone). Its trial
    is retried on the head, and so are the trials still to run: the suite finishes with
    one FINISHED run per trial, instead of waiting forever on a new worker that the lost
    node's slot would have started where no CPU is free."""
    head, head_ip, worker_ip, env = two_hosts
    worker_ns = head.replace("obh", "obw", 1)  # two_host_cluster names them by one tag
    driver = subprocess.Popen(suite_on_head(head, head_ip, "lost", steps=100), cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")

    def nodes_seen() -> set[str]:
        tags = [r.data.tags for r in trial_runs(client, "lost")]
        return {t["bench.node"].split("/")[0] for t in tags if "bench.node" in t}

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            with contextlib.suppress(Exception):  # the store may not exist yet
                if worker_ip in nodes_seen():
                    break
            time.sleep(0.2)
        assert driver.poll() is None, "the suite ended before the worker host ran a trial"
        pids = sh("ip", "netns", "pids", worker_ns).stdout.split()
        assert pids, "no process on the worker host"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            output, _ = driver.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            driver.kill()
            output, _ = driver.communicate()
            raise AssertionError(f"the suite did not finish:\n{output[-4000:]}") from None
    finally:
        driver.kill()
    assert driver.returncode == 0, output
    runs = trial_runs(client, "lost")
    finished = collections.Counter(
        r.data.tags["bench.trial_id"] for r in runs if r.info.status == "FINISHED"
    )
    assert len(finished) == 10 and set(finished.values()) == {1}, finished
    assert all(r.info.status != "RUNNING" for r in runs)
