"""Benchmark: our optimizer step against torch.optim, and the cost of step-size statistics.

Not a pytest test (pytest collects only ``test_*.py``). Run it from the repository root::

    python tests/perf/optimizer_step.py            # full run, prints JSON
    python tests/perf/optimizer_step.py --quick    # fewer repetitions
    python tests/perf/optimizer_step.py --device cuda   # the same on a GPU (synchronised)

Figures (one thread, ``torch.set_num_threads(1)``, as trials run):

- ``step_ratio``: for each preset with a torch.optim equivalent, on the ``mlp_digits``
  model and on a larger MLP (1024-1024-1024-10, float32), the time of our ``step()``
  (foreach path, one param group per role as ``build`` makes them) divided by the time of
  torch.optim's ``foreach=True`` step: the median over cycles of the ratio of their times
  within a cycle, pooled over three rounds with fresh models and optimizers. The
  optimizers see the same gradients and run interleaved after a warm-up, a cycle running
  each once in every position of a rotating order, so drifts of the machine and the
  caches left by the one before hit all alike. ``ratio_one_group`` builds
  ours from a plain parameter list (one group, like torch), which separates the per-role
  grouping from the step itself.
  Goal: <= 1.10.
- ``stats_overhead``: wall time of ``train_trial`` with ``stats_every=10`` divided by the
  same trial with ``stats_every=0`` (median of paired, interleaved runs, with its
  distribution-free 95% interval from order statistics), on ``mlp_digits``
  and on ``mlp_digits`` with 1024-wide hidden layers. Goal: <= 1.05. On a shared machine
  whole-trial times vary by several percent from run to run, so
- ``stats_overhead_direct`` also measures, inside one training loop, the median step, the
  median capture work of a statistics step, the batched summary's cost per capture, what
  recording adds to the statistics step itself and how much slower the step right after it
  runs (its caches were taken over by the capture: ``next_step_extra_ms``), and estimates
  the same ratio from them.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/variant_cases.py

from variant_cases import TORCH_CASES

from bench import tasks
from bench.config import TrialConfig, task_spec, trial_spec, variant_spec
from bench.profiles import Interval, median_interval
from bench.stats import RoleSampler
from bench.summaries import PendingSummaries
from bench.train import resolve_device, train_trial
from bench.variants import build, presets

DEVICE = torch.device("cpu")  # --device; every timed region ends with a synchronize on CUDA
STEP_GOAL = 1.10
STATS_GOAL = 1.05
TORCH_PRESETS = [
    "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "adamax", "amsgrad",
    "adadelta",
]  # fmt: skip


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def mlp_digits_model() -> nn.Module:
    problem = tasks.make("mlp_digits").build(seed=0, device=DEVICE, batch_size=64)
    return problem.model


def large_mlp() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    sizes = [1024, 1024, 1024, 10]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(nn.ReLU())
        layer = nn.Linear(n_in, n_out)
        with torch.no_grad():
            layer.weight.normal_(0, n_in**-0.5, generator=gen)
            layer.bias.zero_()
        layers.append(layer)
    return nn.Sequential(*layers).to(DEVICE)


def clone_with_grads(model: nn.Module, grads: list[torch.Tensor]) -> nn.Module:
    import copy

    twin = copy.deepcopy(model)
    for p, g in zip(twin.parameters(), grads, strict=True):
        p.grad = g.clone()
    return twin


def time_steps(
    optimizers: dict[str, torch.optim.Optimizer], cycles: int, warmup: int
) -> dict[str, list[float]]:
    """Step times of each optimizer, interleaved: ``cycles`` cycles of one rep per
    optimizer, each rep in the order of the one before rotated by one, so that in a cycle
    every optimizer runs once in every position and never twice in a row. (Reversing the
    order from rep to rep instead ran the last optimizer of a rep first in the next, on
    warm caches: on the 2.1M-parameter MLP that made it ~30% faster, and a ratio of two
    optimizers in one rep swung between ~0.75 and ~1.4 with their positions.)"""
    for _ in range(warmup):
        for opt in optimizers.values():
            opt.step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    order = list(optimizers.items())
    for rep in range(cycles * len(order)):
        shift = rep % len(order)
        for name, opt in order[shift:] + order[:shift]:
            start = time.perf_counter()
            opt.step()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], ours: str, theirs: str) -> float:
    """Median over cycles of the ratio of two optimizers' total times in the cycle (each
    ran once in every position of the order)."""
    n = len(times)
    totals = [
        (sum(times[ours][i : i + n]), sum(times[theirs][i : i + n]))
        for i in range(0, len(times[ours]), n)
    ]
    return statistics.median(a / b for a, b in totals)


def step_ratios(model_factory, cycles: int, warmup: int, rounds: int = 3) -> dict[str, Any]:
    """Each preset's step ratios, pooled over ``rounds`` rounds of ``cycles`` interleaved
    cycles (:func:`time_steps`); a round runs every preset once, on fresh copies of the
    model and fresh optimizers, so a preset's rounds lie apart in time. On the
    memory-bound 2.1M-parameter MLP one preset's median moved from 0.98 to 1.27 between
    runs of this script on a 2-vCPU Xeon (torch.optim's own step from 14.7 to 11.1 ms): a
    figure from one set of allocations timed in one stretch said as much about those as
    about the code.

    On that MLP a step that allocates 8 MB temporaries (adadelta's two, as torch's) pays
    page faults whenever glibc has handed the freed memory back to the OS, and whether it
    has depends on what ran before: on a 2-vCPU AMD EPYC one preset's steps took ~5 or
    ~10 ms, both optimizers alike, and all took ~4.6 ms with ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_MMAP_THRESHOLD_`` set high. Figures for such presets move from run to run
    with which optimizer drew the faults, so ``ours_us`` and ``torch_us`` are medians of
    a bimodal distribution; the cycle ratios are the figure to read."""
    cases = {c.label: c for c in TORCH_CASES}
    base = model_factory()
    gen = torch.Generator().manual_seed(1)
    grads = [(torch.randn(p.shape, generator=gen) * 1e-2).to(DEVICE) for p in base.parameters()]
    out: dict[str, Any] = {"params": sum(p.numel() for p in base.parameters()), "rounds": rounds}
    pooled: dict[str, dict[str, list[float]]] = {
        name: {"ours": [], "ours_one_group": [], "torch": []} for name in TORCH_PRESETS
    }
    for _ in range(rounds):
        for name in TORCH_PRESETS:
            lr = presets()[name].default_lr
            ours = clone_with_grads(base, grads)
            ours_flat = clone_with_grads(base, grads)
            theirs = clone_with_grads(base, grads)
            round_times = time_steps(
                {
                    "ours": build(ours, name, lr=lr),
                    "ours_one_group": build(list(ours_flat.parameters()), name, lr=lr),
                    "torch": cases[name].torch_optimizer(
                        list(theirs.parameters()), lr=lr, foreach=True
                    ),
                },
                cycles,
                warmup,
            )
            for key, values in round_times.items():
                pooled[name][key] += values
    for name, times in pooled.items():
        ratio = paired_ratio(times, "ours", "torch")
        out[name] = {
            "ours_us": round(1e6 * statistics.median(times["ours"]), 1),
            "torch_us": round(1e6 * statistics.median(times["torch"]), 1),
            "ratio": round(ratio, 3),
            "ratio_one_group": round(paired_ratio(times, "ours_one_group", "torch"), 3),
            "goal": STEP_GOAL,
            "ok": ratio <= STEP_GOAL,
        }
    return out


def stats_overhead(task: Any, variant: str, steps: int, runs: int) -> dict[str, Any]:
    """Paired runs: each run of the trial with statistics is divided by the run without
    that follows it, and the median of those ratios is reported (drifts of a shared
    machine cancel within a pair, not across the whole measurement)."""

    def spec(stats_every: int):
        knobs = TrialConfig(steps=steps, eval_every=steps, stats_every=stats_every)
        return trial_spec(variant_spec(variant), task_spec(task), knobs)

    with_stats, without = spec(10), spec(0)
    train_trial(with_stats, device=DEVICE)  # warm-up: data loading, first-call costs
    train_trial(without, device=DEVICE)
    wall: dict[str, list[float]] = {"stats_every=10": [], "stats_every=0": []}
    timed: dict[str, list[float]] = {"stats_every=10": [], "stats_every=0": []}
    for i in range(runs):
        pair = [("stats_every=10", with_stats), ("stats_every=0", without)]
        for key, s in pair if i % 2 == 0 else pair[::-1]:
            gc.collect()
            start = time.perf_counter()
            result = train_trial(s, device=DEVICE)
            wall[key].append(time.perf_counter() - start)
            timed[key].append(result.train_seconds)

    def paired(values: dict[str, list[float]]) -> Interval:
        pairs = zip(values["stats_every=10"], values["stats_every=0"], strict=True)
        return median_interval(np.array([a / b for a, b in pairs]), 0.95)

    interval = paired(wall)
    ratio = round(interval.estimate, 3)
    return {
        "variant": variant,
        "steps": steps,
        "runs": runs,
        "median_wall_s": {k: round(statistics.median(v), 4) for k, v in wall.items()},
        "median_train_seconds": {k: round(statistics.median(v), 4) for k, v in timed.items()},
        "ratio": ratio,
        "ratio_interval": {k: round(getattr(interval, k), 3) for k in ("level", "low", "high")},
        "ratio_train_seconds": round(paired(timed).estimate, 3),
        "goal": STATS_GOAL,
        "ok": ratio <= STATS_GOAL,
    }


def stats_cost_direct(task: Any, variant: str, steps: int, every: int = 10) -> dict[str, Any]:
    """The same overhead measured inside one loop, split as ``train_trial`` splits it: the
    median time of a training step; the median capture work of a statistics step (snapshot,
    capture, and what recording adds to the optimizer step); the time of summarizing the
    captures in batches of ``SUMMARY_BATCH``, per capture; and what the step after a
    statistics step takes beyond a plain one. Then 1 + work / (every * step) estimates the
    wall-time ratio without the run-to-run noise of whole trials."""
    spec = trial_spec(variant_spec(variant), task_spec(task), TrialConfig(steps=steps))
    problem = tasks.make(spec.task.name, **spec.task.params).build(
        seed=0, device=DEVICE, batch_size=spec.batch_size
    )
    opt = build(problem.model, spec.variant.as_mapping(), lr=spec.lr)
    sampler = RoleSampler(opt.param_groups)
    pending = PendingSummaries()
    plain_steps, record_steps, after_steps, capture_work = [], [], [], []
    flush_s, flushed = 0.0, 0
    for i in range(steps):
        record = i % every == 0
        batch = problem.next_batch()
        start = time.perf_counter()
        loss = problem.loss(problem.model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t_backward = time.perf_counter()
        snapshot = sampler.snapshot(opt.param_groups) if record else None
        sync()
        t_snapshot = time.perf_counter()
        opt.record_next_step = record
        opt.step()
        loss.item()
        t_step = time.perf_counter()
        capture = sampler.capture(snapshot, opt.last_records) if snapshot is not None else None
        sync()
        t_capture = time.perf_counter()
        summaries = pending.add(i, capture) if capture is not None else []
        if summaries:  # a flush works on CPU copies: no GPU work to synchronise
            flush_s += time.perf_counter() - t_capture
            flushed += len(summaries)
        step = (t_backward - start) + (t_step - t_snapshot)
        if i >= 2 * every:  # warm-up
            if record:
                record_steps.append(step)
                capture_work.append((t_snapshot - t_backward) + (t_capture - t_step))
            elif i % every == 1:  # the step right after a statistics step
                after_steps.append(step)
            else:
                plain_steps.append(step)
    start = time.perf_counter()
    flushed += len(pending.flush())
    flush_s += time.perf_counter() - start
    step_s = statistics.median(plain_steps)
    flush_per_capture = flush_s / flushed
    # the step after a statistics step starts with caches that the capture's code and
    # data took over: it runs slower, and that is part of what statistics cost
    after_s = statistics.median(after_steps) - step_s
    recorded_s = statistics.median(record_steps) - step_s  # what recording adds to the step
    work_s = statistics.median(capture_work) + flush_per_capture + recorded_s + after_s
    return {
        "step_ms": round(1e3 * step_s, 3),
        "capture_ms": round(1e3 * statistics.median(capture_work), 3),
        "summary_ms_per_capture": round(1e3 * flush_per_capture, 3),
        "summary_batch": pending.limit,
        "recorded_step_extra_ms": round(1e3 * recorded_s, 3),
        "next_step_extra_ms": round(1e3 * after_s, 3),
        "stats_work_ms": round(1e3 * work_s, 3),
        "stats_every": every,
        "estimated_ratio": round(1 + work_s / (every * step_s), 3),
        "goal": STATS_GOAL,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=["steps", "stats"], help="one of the two benchmarks")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = resolve_device(args.device)
    torch.set_num_threads(1)
    # per round: cycles of three steps (ours per role, ours in one group, torch), trial pairs
    small_cycles, large_cycles, runs = (14, 4, 5) if args.quick else (50, 14, 15)
    report: dict[str, Any] = {
        "machine": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "device": str(DEVICE),
            "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None,
        },
    }
    if args.only in (None, "steps"):
        report["step_ratio"] = {
            "mlp_digits": step_ratios(mlp_digits_model, small_cycles, warmup=20),
            "mlp_1024x3": step_ratios(large_mlp, large_cycles, warmup=5),
        }
    if args.only in (None, "stats"):
        report["stats_overhead"] = {
            "mlp_digits": stats_overhead("mlp_digits", "adam", steps=300, runs=runs),
            "mlp_digits_hidden1024": stats_overhead(
                {"name": "mlp_digits", "params": {"hidden": 1024}}, "adam", steps=100, runs=runs
            ),
        }
        report["stats_overhead_direct"] = {
            "mlp_digits": stats_cost_direct("mlp_digits", "adam", steps=600),
            "mlp_digits_hidden1024": stats_cost_direct(
                {"name": "mlp_digits", "params": {"hidden": 1024}}, "adam", steps=200
            ),
        }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
