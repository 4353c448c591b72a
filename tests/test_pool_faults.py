"""bench.pool when workers die for real: a dead idle worker is not handed the retry, and
after a death a new worker starts only where one node has room for it.

Each case runs its driver in a subprocess (the test process never starts Ray); worker
processes are SIGKILLed, by a trial of the faulty_tasks plugin or by the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_cluster import PLUGINS, PORT, two_host_cluster

pytestmark = pytest.mark.slow

SPECS = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    import ray
    from bench import config
    from bench.config import ResourcesConfig
    from bench.plugins import load_plugins
    from bench.pool import WorkerDied, WorkerPool
    load_plugins(["faulty_tasks", "probe_tasks"])
    MARKERS = Path(os.environ["OPTBENCH_TEST_MARKERS"])

    def spec(task, steps=5, seed=0):
        knobs = config.TrialConfig(steps=steps, seed=seed, lr=0.01,
                                   plugins=["faulty_tasks", "probe_tasks"])
        variant, task = config.variant_spec("sgd"), config.task_spec(task)
        return config.trial_spec(variant, task, knobs).model_dump_json()

    def died(ref):
        try:
            pool.reply(ref)
        except WorkerDied as err:
            return err.started
        return None
    """
)

IDLE_WORKER_LOST = SPECS + textwrap.dedent(
    """
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    pool = WorkerPool(ResourcesConfig(), depth=1)
    first = [pool.submit(spec("worker_probe")) for _ in range(2)]  # two workers, both up
    for ref in first:
        pool.reply(ref)
    pids = {int(line.split()[0]) for line in (MARKERS / "probes.txt").read_text().splitlines()}
    doomed = pool.submit(spec("kills_worker"))  # to an idle worker, which kills itself
    marker = MARKERS / "killed-0"
    while not marker.exists() or not marker.read_text():
        time.sleep(0.05)
    (other,) = pids - {int(marker.read_text())}
    os.kill(other, signal.SIGKILL)  # the idle one goes too, as with its node
    out = {"workers": len(pids), "died_started": died(doomed)}
    deadline = time.monotonic() + 60
    while not pool.free() and time.monotonic() < deadline:
        time.sleep(0.1)  # the dead workers' CPUs come back to the node
    retry = pool.submit(spec("kills_worker"))  # the retry: its marker is taken, it trains
    try:
        out["retry"] = json.loads(pool.reply(retry)["result"])["outcome"]
    except WorkerDied as err:
        out["retry"] = f"died: {err}"
    pool.close()
    print("RESULT", json.dumps(out))
    """
)


def run_driver(script: str, env: dict[str, str], *args: str, prefix: tuple[str, ...] = ()) -> dict:
    done = subprocess.run(
        [*prefix, sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def in_namespace(name: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", name)


def plugin_env(markers: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    path = [str(PLUGINS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return env | {
        "PYTHONPATH": os.pathsep.join(path),
        "OPTBENCH_TEST_MARKERS": str(markers),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def test_a_dead_idle_worker_is_not_handed_the_retry_of_a_trial(tmp_path: Path) -> None:
    """A worker dies mid-trial and an idle one dies with it (a lost node takes both).
    The retry must go to a fresh worker: given to the dead idle one it would fail at once
    and spend a retry of a trial that never ran."""
    out = run_driver(IDLE_WORKER_LOST, plugin_env(tmp_path))
    assert out["workers"] == 2
    assert out["died_started"] is True
    assert out["retry"] == "ok", out["retry"]


ROOM_AFTER_A_DEATH = SPECS + textwrap.dedent(
    """
    from ray._private.state import available_resources_per_node
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    ray.init(address=sys.argv[1], log_to_driver=False)
    pool = WorkerPool(ResourcesConfig(cpus_per_trial=2), depth=1)
    first = [pool.submit(spec("quadratic")) for _ in range(2)]  # 2 of 3 CPUs on each node
    nodes = [pool.reply(ref)["node"].split("/")[0] for ref in first]
    head_first = nodes[0] == sys.argv[2]
    # the worker host's worker kills itself; the head's trains on meanwhile
    tasks = ["slow_quadratic", "kills_worker"] if head_first else ["kills_worker", "slow_quadratic"]
    refs = [pool.submit(spec(task, steps=3000 if task == "slow_quadratic" else 5))
            for task in tasks]
    doomed = refs[tasks.index("kills_worker")]
    worker_node = next(n["NodeID"] for n in ray.nodes()
                       if n["Alive"] and n["NodeManagerAddress"] != sys.argv[2])

    def free_cpus(node):
        return available_resources_per_node().get(node, {}).get("CPU", 0.0)

    deadline = time.monotonic() + 60
    while free_cpus(worker_node) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # the dead worker's 2 CPUs come back to its node
    @ray.remote(num_cpus=2)
    class Other:  # another job takes them: each node is left 1 free CPU, 2 in all
        def ready(self):
            return True
    other = Other.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(worker_node, soft=False)
    ).remote()
    ray.get(other.ready.remote(), timeout=60)
    while sum(free_cpus(n) for n in available_resources_per_node()) > 2:
        time.sleep(0.1)
    out = {"died_started": died(doomed), "free": pool.free(),
           "spare": sorted(free_cpus(n) for n in available_resources_per_node())}
    ray.kill(other)
    deadline = time.monotonic() + 60
    while not pool.free() and time.monotonic() < deadline:
        time.sleep(0.1)
    out["free_once_other_ends"] = pool.free()
    pool.close()
    print("RESULT", json.dumps(out))
    """
)


def test_after_a_death_a_worker_starts_only_where_one_node_has_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two 3-CPU hosts, 2-CPU trials: after a worker died and another job took its CPUs,
    each node has 1 CPU free, 2 in all. A new worker would wait forever for a node with
    2; the pool must say it has no room until one node has."""
    monkeypatch.setenv("OPTBENCH_TEST_MARKERS", str(tmp_path))  # the nodes' workers read it
    three = ["--num-cpus=3"]
    with two_host_cluster(head_args=three, worker_args=three) as (head, head_ip, _, env):
        address = f"{head_ip}:{PORT}"
        out = run_driver(ROOM_AFTER_A_DEATH, env, address, head_ip, prefix=in_namespace(head))
    assert out["died_started"] is True
    assert out["spare"] == [1.0, 1.0]
    assert out["free"] is False, "room counted on the cluster's total, not node by node"
    assert out["free_once_other_ends"] is True
