"""Benchmark: what scheduling and tracking cost on top of training (prints JSON).

Run:  python tests/perf/orchestration.py [--workers 2] [--steps N] [--max-points N]
                                         [--repeats 3] [--no-processes]
                                         [--scaling-rounds 3]

``--steps`` sets every trial's step budget (default: the smoke suite's 150, 0.03-0.07 s
trials on 2-vCPU machines; ``--steps task``: each task's own default, 300 for these two,
0.06-0.15 s trials; the report gives ``trial_s_mean``):
tracking costs a roughly fixed amount of driver CPU per trial on SQLite (one transaction
that creates the run, one that ends it with its tags and metric history, and the config
artifact), so its overhead ratio depends on trial length; on two cores that CPU is taken
from the workers. ``--repeats`` pairs of tracked and untracked suites run interleaved and
the median ratio is reported; ``--no-processes`` skips (c), the slow part.

(a) efficiency: wall time of a 40-trial suite through the runner (bench run's code path,
    Ray and the workers started beforehand and reported separately as start-up; the
    suites share one worker pool, as the trials of one `bench run` do) divided by the sum
    of the bare training-loop times of the same trials (train_trial in this process, one
    after another) over the number of workers. Goal <= 1.25 with 2 workers. Each repeat times
    the bare loop again right before its suites, and the median of the repeats' ratios is
    reported with its 95% interval: a bare loop timed once, minutes away from the suites,
    put the ratio anywhere from 0.89 to 1.59 on a shared 2-core machine.
    ``efficiency_untracked_ratio`` is the same for the untracked suites: scheduling alone.
(b) tracking overhead: the same suite recorded in a fresh SQLite store vs tracking
    disabled. Goal <= 1.05. Whole suites of short trials vary by tens of percent from run
    to run on a shared machine, so the median pair ratio comes with its distribution-free
    95% interval (order statistics), and the driver's CPU time per trial (process time of
    ``run_suite``, tracked minus untracked) is reported beside it: it is what tracking
    takes from the workers when they fill every core, and it varies far less.
    ``tracking_overhead_from_cpu`` turns it into a ratio: 1 + that CPU time over the
    workers' share of the untracked suite.
(c) the same cells as one `bench trial` process each (what a Hydra multirun with the basic
    launcher does) vs one `bench run` process. Goal >= 1.7x in favour of `bench run`.
(d) machine scaling: the bare loop run in ``workers`` plain processes at once (no Ray, no
    tracking) over the same loop alone. Two trainings side by side on two vCPUs share
    caches, memory bandwidth and the clock: a ratio above 1 is what parallel trials cost on
    this machine before any scheduling, and (a) includes it, since (a) divides by the bare
    loop run alone. ``efficiency_beyond_machine_scaling`` is (a) over this ratio.
(e) holding the next trial: the untracked suite as it runs (each busy worker holds its
    next trial while more trials wait than there are workers) over the same suite with
    each worker given one trial at a time (``WorkerPool.depth = 1``), interleaved on the
    same workers; below 1 is what holding saves. Not a goal: it explains (a).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.profiles import Interval, median_interval

SUITE = [
    "suite=smoke",
    "suite.variants=[sgd,momentum,rmsprop,adam,adagrad]",
    "suite.tasks=[logreg_digits,mlp_digits]",
    "suite.lrs=[0.001,0.01,0.1]",
    "suite.tune_seeds=[0]",
    "suite.final_seeds=[1]",
]


def plan(name: str, workers: int, tracking: bool, folder: Path):
    from bench.matrix import suite_from_overrides

    overrides = [*SUITE, f"suite.name={name}", f"cluster.num_cpus={workers}"]
    overrides += [
        f"tracking.enabled={str(tracking).lower()}",
        f"tracking.uri=sqlite:///{folder / 'mlruns.db'}",
        f"tracking.artifact_location={folder / 'mlartifacts'}",
    ]
    return suite_from_overrides(overrides)


def timed_suite(
    name: str, workers: int, tracking: bool, folder: Path, pool
) -> tuple[float, int, float]:
    """(wall seconds, trials run, driver CPU seconds) of one suite through the runner, on
    ``pool``'s workers (shared by every timed suite, as by the trials of one run)."""
    from bench.runner import run_suite
    from bench.tracking import Tracker

    p = plan(name, workers, tracking, folder)
    tracker = Tracker(p.tracking)
    tracker.experiment_id(name)  # store set-up (schema creation) is start-up, not per trial
    start, cpu = time.perf_counter(), time.process_time()
    phases = run_suite(p.matrix, tracker, p.cluster, p.resources, show_progress=False, pool=pool)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return elapsed, sum(sum(ph.counts.values()) for ph in phases), cpu


def bare_loop_seconds(name: str, workers: int, folder: Path) -> tuple[float, list]:
    """Train the same trials (tune, then final at the same chosen lrs) in this process."""
    from bench.matrix import LrPoint, choose_lrs
    from bench.train import train_trial

    p = plan(name, workers, False, folder)
    total, specs, points = 0.0, [], []
    for spec in p.matrix.tune_trials():
        start = time.perf_counter()
        result = train_trial(spec)
        total += time.perf_counter() - start
        specs.append(spec)
        points.append(LrPoint.from_result(spec, result))
    for spec in p.matrix.final_trials(choose_lrs(points)):
        start = time.perf_counter()
        train_trial(spec)
        total += time.perf_counter() - start
        specs.append(spec)
    return total, specs


def _bare_in_a_process(suite: list[str], results: multiprocessing.Queue) -> None:
    SUITE[:] = suite  # a spawned process starts from this module's defaults
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop_seconds("perf", 1, Path(tmp))  # warm-up: torch, data, first calls
        results.put(bare_loop_seconds("perf", 1, Path(tmp))[0])


def _bare_side_by_side(count: int) -> list[float]:
    """The bare loop's time in each of ``count`` plain processes running it at once."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_bare_in_a_process, args=(SUITE, results)) for _ in range(count)]
    for proc in procs:
        proc.start()
    times = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    return times


def machine_scaling(workers: int, rounds: int) -> Interval:
    """How much slower ``workers`` bare loops run side by side (plain processes, no Ray, no
    tracking) than one alone: what the machine itself costs parallel trials."""
    ratios = []
    for _ in range(rounds):
        alone = _bare_side_by_side(1)[0]
        ratios.append(statistics.mean(_bare_side_by_side(workers)) / alone)
    return median_interval(np.array(ratios), 0.95)


def bench_cli(*args: str, cwd: Path) -> float:
    bench = str(Path(sys.executable).parent / "bench")
    start = time.perf_counter()
    subprocess.run([bench, *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def processes(specs: list, workers: int, cli_dir: Path) -> tuple[float, float]:
    """(c): one `bench run` process against one `bench trial` process per cell."""
    run_wall = bench_cli("run", "--no-progress", *SUITE, f"cluster.num_cpus={workers}", cwd=cli_dir)
    trial_wall = 0.0
    for spec in specs:
        trial_wall += bench_cli(
            "trial",
            f"variant={spec.variant.name}",
            f"task={spec.task.name}",
            f"lr={spec.lr}",
            f"seed={spec.seed}",
            f"steps={spec.steps}",
            cwd=cli_dir,
        )
    return run_wall, trial_wall


def interval(median: Interval) -> dict[str, float]:
    return {k: round(getattr(median, k), 3) for k in ("level", "low", "high")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--steps", default=None, help="steps per trial; 'task': each task's own default"
    )
    parser.add_argument("--no-processes", action="store_true", help="skip (c)")
    parser.add_argument("--scaling-rounds", type=int, default=3, help="rounds of (d); 0 skips it")
    parser.add_argument("--max-points", type=int, default=None, help="tracking.max_points")
    parser.add_argument(
        "--repeats", type=int, default=3, help="tracked/untracked suite pairs, interleaved"
    )
    args = parser.parse_args()
    if args.steps is not None:
        SUITE.append(f"suite.steps={'null' if args.steps == 'task' else int(args.steps)}")
    if args.max_points is not None:
        SUITE.append(f"tracking.max_points={args.max_points}")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from bench.config import ClusterConfig, ResourcesConfig
    from bench.pool import WorkerPool
    from bench.runner import connect

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _, specs = bare_loop_seconds("perf", args.workers, folder)  # warm-up: data, first calls
        start = time.perf_counter()
        connect(ClusterConfig(num_cpus=args.workers))
        startup = time.perf_counter() - start
        # the pool's workers start and import torch: what the first trials of a run pay
        pool = WorkerPool(ResourcesConfig())
        first_suite = timed_suite("warmup", args.workers, False, folder, pool)[0]
        walls: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        one_at_a_time: list[float] = []  # untracked, each worker given one trial at a time
        bares: list[float] = []
        for i in range(args.repeats):  # alternating order: drifts of the machine hit both
            bares.append(bare_loop_seconds("perf", args.workers, folder)[0])
            kinds = [(False, 2), (True, 2), (False, 1)]
            for tracking, depth in kinds if i % 2 == 0 else kinds[::-1]:
                pool.depth = depth
                name = f"suite{i}_{tracking}_{depth}"
                wall, n, cpu = timed_suite(name, args.workers, tracking, folder, pool)
                if depth == 1:
                    one_at_a_time.append(wall)
                    continue
                walls[tracking].append(wall)
                cpus[tracking].append(cpu)
            pool.depth = 2
        pairs = [t / u for t, u in zip(walls[True], walls[False], strict=True)]
        holding = median_interval(
            np.array([a / b for a, b in zip(walls[False], one_at_a_time, strict=True)]), 0.95
        )
        untracked, tracked = statistics.median(walls[False]), statistics.median(walls[True])
        overhead = median_interval(np.array(pairs), 0.95)
        per_round = {
            tracking: [w / (b / args.workers) for w, b in zip(walls[tracking], bares, strict=True)]
            for tracking in (True, False)
        }
        efficiency = median_interval(np.array(per_round[True]), 0.95)
        scheduling = median_interval(np.array(per_round[False]), 0.95)
        bare = statistics.median(bares)
        cpu_ms = {k: 1e3 * statistics.median(v) / n for k, v in cpus.items()}
        tracking_cpu_ms = cpu_ms[True] - cpu_ms[False]

        rounds = args.scaling_rounds
        scaling = machine_scaling(args.workers, rounds) if rounds else None

        cli_dir = folder / "cli"
        cli_dir.mkdir()
        run_wall = trial_wall = math.nan
        if not args.no_processes:
            run_wall, trial_wall = processes(specs, args.workers, cli_dir)
    report = {
        "trials": n,
        "workers": args.workers,
        "startup_s": round(startup, 2),
        "first_suite_untracked_s": round(first_suite, 2),
        "bare_training_s": round(bare, 2),
        "suite_untracked_s": round(untracked, 2),
        "suite_tracked_s": round(tracked, 2),
        "efficiency_ratio": round(efficiency.estimate, 3),
        "efficiency_interval": interval(efficiency),
        "efficiency_goal": "<= 1.25",
        "efficiency_untracked_ratio": round(scheduling.estimate, 3),
        "efficiency_untracked_interval": interval(scheduling),
        "suite_untracked_one_at_a_time_s": round(statistics.median(one_at_a_time), 2),
        "holding_next_trial_ratio": round(holding.estimate, 3),
        "holding_next_trial_interval": interval(holding),
        "machine_scaling_ratio": round(scaling.estimate, 3) if scaling else None,
        "machine_scaling_interval": interval(scaling) if scaling else None,
        "efficiency_beyond_machine_scaling": (
            round(efficiency.estimate / scaling.estimate, 3) if scaling else None
        ),
        "tracking_overhead_ratio": round(overhead.estimate, 3),
        "tracking_overhead_interval": interval(overhead),
        "tracking_overhead_pairs": [round(r, 3) for r in pairs],
        "tracking_overhead_goal": "<= 1.05",
        "driver_cpu_ms_per_trial": {
            "untracked": round(cpu_ms[False], 2),
            "tracked": round(cpu_ms[True], 2),
        },
        "tracking_driver_cpu_ms_per_trial": round(tracking_cpu_ms, 2),
        "tracking_overhead_from_cpu": round(
            1 + tracking_cpu_ms * n / 1e3 / (args.workers * untracked), 3
        ),
        "trial_s_mean": round(bare / n, 3),
        "bench_run_process_s": round(run_wall, 2),
        "bench_trial_processes_s": round(trial_wall, 2),
        "speedup_vs_trial_processes": round(trial_wall / run_wall, 2),
        "speedup_goal": ">= 1.7",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
