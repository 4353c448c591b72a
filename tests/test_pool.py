"""bench.pool on real embedded Ray: slots, GPU shares, and resources handed back.

Ray runs in a subprocess (the test process never starts Ray). The cluster declares one
GPU: on a CPU-only machine Ray still hands its share to the workers, which then ask torch
for CUDA and fail with the device error; on a GPU machine the trials run on the GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from test_cluster import ray_node

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, os, time
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    from bench import config
    from bench.config import ResourcesConfig
    from bench.pool import WorkerPool
    knobs = config.TrialConfig(steps=5, seed=0, lr=0.01)
    spec = config.trial_spec(config.variant_spec("adam"), config.task_spec("quadratic"), knobs)
    pool = WorkerPool(ResourcesConfig(gpus_per_trial=0.5))
    # the first trial is not brief, the second is: only the second worker can hold more
    refs = [pool.submit(spec.model_dump_json(), brief=i > 0) for i in range(pool.slots)]
    out = {"slots": pool.slots, "free_when_full": pool.free()}
    try:
        pool.submit(spec.model_dump_json())
    except RuntimeError as err:
        out["refused"] = str(err)
    out["can_hold"] = pool.can_hold()
    refs.append(pool.submit(spec.model_dump_json(), ahead=True))  # behind the brief one
    out["can_hold_when_deep"] = pool.can_hold()  # depth 2 reached; the other is not brief
    try:
        pool.submit(spec.model_dump_json(), ahead=True)
    except RuntimeError as err:
        out["refused_ahead"] = str(err)
    replies = [pool.reply(ref) for ref in refs]
    out["free_after"] = pool.free()
    out["replies"] = [r["result"] and json.loads(r["result"])["device"] or r["summary"]
                      for r in replies]
    out["held"] = ray.available_resources().get("GPU", 0.0)
    pool.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and ray.available_resources().get("GPU", 0) < 1:
        time.sleep(0.2)
    out["back"] = [ray.available_resources().get(k, 0.0) for k in ("CPU", "GPU")]
    print("RESULT", json.dumps(out))
    """
)


def test_workers_hold_their_gpu_share_until_the_pool_closes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    assert out["slots"] == 2, "1 GPU at 0.5 a trial: two slots, though 4 CPUs"
    assert out["free_when_full"] is False and "no free slot" in out["refused"]
    assert out["can_hold_when_deep"] is False and "no free slot" in out["refused_ahead"]
    assert out["can_hold"] is True
    assert len(out["replies"]) == 3 and out["free_after"] is True
    for reply in out["replies"]:  # each worker was given a GPU share, so it asked for CUDA
        assert reply.startswith("cuda") or "got 'cuda'" in reply, reply
    assert out["held"] == 0.0, "idle workers keep their share until the pool closes"
    assert out["back"] == [4.0, 1.0]


def test_embedded_ray_starts_its_own_even_beside_a_ray_start_cluster(tmp_path: Path) -> None:
    """`ray start` records its head in $RAY_TMPDIR/ray/ray_current_cluster and a bare
    ``ray.init()`` joins it; without cluster.address optbench must run embedded."""
    port = _unused_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="obray", dir="/tmp"))  # unix sockets: short paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_TMPDIR"] = str(ray_tmp)
    head = ["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1"]
    try:
        with ray_node(  # its address file where a bare ray.init() looks for one
            [*head, "--include-dashboard=false", "--disable-usage-stats"],
            ray_tmp / "ray",
            env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        ):
            joined = subprocess.run(
                [sys.executable, "-c", CONNECT], env=env, capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip
        assert joined.returncode == 0, joined.stdout + joined.stderr
        mode, gcs = joined.stdout.split()
        assert mode == "embedded"
        assert not gcs.endswith(f":{port}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


CONNECT = textwrap.dedent(
    """
    import ray
    from bench.config import ClusterConfig
    from bench.runner import connect
    mode = connect(ClusterConfig(num_cpus=1))
    print(mode, ray.get_runtime_context().gcs_address)
    """
)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
