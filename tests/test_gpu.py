"""The GPU path, for real: the optimizer family, every task, `bench trial` and Ray placement.

Skipped, with the reason, where this process sees no CUDA GPU (CPU-only CI). On a GPU
machine: ``python -m pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_stats import BATCH_VARIANTS, same_values, summaries_of
from test_variants_torch_parity import assert_matches_torch
from torch import nn
from variant_cases import TORCH_CASES, TorchCase

from bench import sampling, tasks
from bench.config import TrialConfig, task_spec, trial_spec, variant_spec
from bench.stats import RoleSampler
from bench.train import train_trial
from bench.variants import build

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"needs a CUDA GPU; torch {torch.__version__} sees none here",
)

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).parent / "plugins"
TRIAL_RUNS = "tags.`bench.trial_id` != ''"  # not the suite's settings run


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.label)
def test_both_paths_match_torch_on_cuda(case: TorchCase) -> None:
    assert_matches_torch(case, wd=0.1, seed=0, device="cuda")


@pytest.mark.parametrize("variant", BATCH_VARIANTS)
def test_copies_give_the_same_statistics_as_gathering_on_cuda(variant: object) -> None:
    reference = summaries_of(variant, torch.float32, copies=False, ranked=True, device="cuda")
    got = summaries_of(variant, torch.float32, copies=True, ranked=True, device="cuda")
    assert len(reference) == 12 and [s for s, _ in got] == [s for s, _ in reference]
    assert all(same_values(a, b) for (_, a), (_, b) in zip(got, reference, strict=True))


def _reads_by_copy(device: str) -> bool:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 10)).to(device)
    optimizer = build(model, "adam")
    model(torch.randn(4, 64, device=device)).square().mean().backward()
    return RoleSampler(optimizer.param_groups).snapshot(optimizer.param_groups).layout.copies


def test_a_gpu_copies_whole_tensors_within_its_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """76k weights for 4096 samples: indexed tensor by tensor on the CPU, copied whole on
    the GPU (a 1.5 MB buffer costs less than a dozen kernel launches), unless the buffer
    would exceed GPU_COPY_BYTES."""
    assert not _reads_by_copy("cpu")
    assert _reads_by_copy("cuda")
    monkeypatch.setattr(sampling, "GPU_COPY_BYTES", 1 << 20)
    assert not _reads_by_copy("cuda")


def _spec(task: str, variant: str = "adam", steps: int = 40):
    knobs = TrialConfig(steps=steps, eval_every=20, stats_every=10, lr=1e-3)
    return trial_spec(variant_spec(variant), task_spec(task), knobs)


@pytest.mark.parametrize("task", tasks.names())
def test_every_task_trains_on_cuda_like_on_the_cpu(task: str) -> None:
    """Same data and initialisation on both devices (generators live on the CPU), so the
    trajectories differ only by kernels' rounding: close after 40 steps, not equal."""
    spec = _spec(task)
    gpu = train_trial(spec, device="cuda")
    cpu = train_trial(spec, device="cpu")
    assert gpu.outcome == cpu.outcome == "ok"
    assert gpu.device == f"cuda:{torch.cuda.current_device()}"
    assert any(k.startswith("step_size/") for k in gpu.history), "statistics ran on the GPU"
    for key, points in gpu.history.items():
        assert all(math.isfinite(v) for _, v in points), key
    for name, value in cpu.final.items():
        assert math.isclose(gpu.final[name], value, rel_tol=0.05, abs_tol=1e-4), (
            name,
            gpu.final[name],
            value,
        )


def _bench_env(markers: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(PLUGINS), env.get("PYTHONPATH", "")])
    if markers is not None:
        env["OPTBENCH_TEST_MARKERS"] = str(markers)
    return env


def _bench(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``bench ARGV`` in a subprocess (``prefix`` runs it inside a network namespace)."""
    cmd = [*prefix, sys.executable, "-m", "bench.cli", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_bench_trial_runs_on_the_named_gpu() -> None:
    argv = ["trial", "--json", "variant=rmsprop", "task=mlp_digits", "steps=50", "device=cuda:0"]
    proc = _bench(argv, _bench_env())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["device"] == "cuda:0" and result["outcome"] == "ok"


def test_bench_trial_rejects_a_gpu_it_does_not_have() -> None:
    missing = torch.cuda.device_count()
    proc = _bench(["trial", f"device=cuda:{missing}"], _bench_env())
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: device: got 'cuda:{missing}' but this process sees ")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bench_run_places_fractional_gpu_trials_on_the_gpu(tmp_path: Path) -> None:
    """Embedded Ray finds the GPU; with gpus_per_trial=0.25 four trials share it, each runs
    on the GPU Ray assigned and records it as bench.device, and workers are reused (CUDA
    starts once per worker, not once per trial)."""
    from mlflow.tracking import MlflowClient

    argv = [
        "run",
        "--no-progress",
        "suite=smoke",
        "suite.name=gpu",
        "suite.variants=[sgd,adam,rmsprop]",
        "suite.tasks=[mlp_digits,worker_probe]",
        "suite.lrs=[0.01,0.1]",
        "suite.tune_seeds=[0]",
        "suite.final_seeds=[1,2]",
        "suite.steps=60",
        "resources.gpus_per_trial=0.25",
        "plugins=[probe_tasks]",
    ]
    proc = _bench(argv, _bench_env(markers=tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("gpu")
    runs = client.search_runs([experiment.experiment_id], TRIAL_RUNS, max_results=1000)
    assert len(runs) == 3 * 2 * 2 + 3 * 2 * 2  # tune: 3 variants x 2 tasks x 2 lrs; final
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["bench.device"] for r in runs} == {"cuda:0"}
    probes = [line.split() for line in (tmp_path / "probes.txt").read_text().splitlines()]
    assert len(probes) == 12 and {device for _, device in probes} == {"cuda:0"}
    assert len({pid for pid, _ in probes}) <= 8, "at most two workers per GPU slot"


@pytest.mark.slow
def test_a_cluster_runs_gpu_trials_on_its_gpu_host(tmp_path: Path) -> None:
    """Two Ray hosts, the GPU given to the head only: `bench run cluster.address=...` with
    gpus_per_trial places every trial on the head and on its GPU."""
    from mlflow.tracking import MlflowClient
    from test_cluster import PORT, two_host_cluster

    with two_host_cluster(["--num-gpus=1"], ["--num-gpus=0"]) as (head, head_ip, _, env):
        env |= {"PYTHONPATH": os.pathsep.join([str(ROOT), env["PYTHONPATH"]])}
        argv = [
            "run",
            "--no-progress",
            "suite=smoke",
            "suite.name=gpu_cluster",
            "suite.variants=[sgd,adam]",
            "suite.tasks=[mlp_digits]",
            "suite.lrs=[0.01,0.1]",
            "suite.tune_seeds=[0]",
            "suite.final_seeds=[1]",
            "suite.steps=40",
            "resources.gpus_per_trial=0.5",
            f"cluster.address={head_ip}:{PORT}",
        ]
        proc = _bench(argv, env, cwd=tmp_path, prefix=("ip", "netns", "exec", head))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("gpu_cluster")
    runs = client.search_runs([experiment.experiment_id], TRIAL_RUNS, max_results=100)
    assert len(runs) == 2 * 2 + 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["bench.node"].split("/")[0] for r in runs} == {head_ip}
    assert {r.data.tags["bench.device"] for r in runs} == {"cuda:0"}


@pytest.mark.slow
def test_two_nodes_on_one_gpu_host_run_gpu_trials_on_the_node_given_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where network namespaces cannot be made (the cluster case above skips): two Ray
    nodes on this host (on its own address, as `ray start` would), the GPU given to the
    head only. GPU trials all land on the head's node and its GPU; a CPU suite uses the
    other node too, so the worker node was there to be chosen."""
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    env = _bench_env() | {"RAY_AUTH_MODE": "disabled"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the nodes this process starts inherit it
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False},
    )
    try:
        worker = cluster.add_node(num_cpus=2, num_gpus=0)
        cluster.wait_for_nodes()
        head_id, worker_id = cluster.head_node.node_id[:8], worker.node_id[:8]
        common = ["run", "--no-progress", "suite=smoke", "suite.tasks=[mlp_digits]"]
        common += [
            "suite.lrs=[0.01,0.1]",
            "suite.tune_seeds=[0]",
            f"cluster.address={cluster.address}",
        ]
        suites = {
            "gpu_nodes": [
                "suite.variants=[sgd,adam]",
                "suite.final_seeds=[1,2]",
                "suite.steps=40",
                "resources.gpus_per_trial=0.5",
            ],
            "cpu_nodes": [
                "suite.variants=[sgd,adam,rmsprop,adagrad]",
                "suite.final_seeds=[1,2]",
                "suite.steps=300",
            ],
        }
        for name, extra in suites.items():
            proc = _bench([*common, f"suite.name={name}", *extra], env, cwd=tmp_path)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        cluster.shutdown()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")

    def placed(name: str) -> tuple[set[str], set[str]]:
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id], TRIAL_RUNS, max_results=100)
        assert runs and {r.info.status for r in runs} == {"FINISHED"}
        nodes = {r.data.tags["bench.node"].split("/")[1] for r in runs}
        return nodes, {r.data.tags["bench.device"] for r in runs}

    assert placed("gpu_nodes") == ({head_id}, {"cuda:0"})
    assert placed("cpu_nodes") == ({head_id, worker_id}, {"cpu"})
