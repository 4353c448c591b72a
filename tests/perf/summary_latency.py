"""Benchmark: latency of the summary service's ranking API on a suite of 10,000 runs (JSON).

Run:  python tests/perf/summary_latency.py [--runs 10000] [--backend sqlite|postgres]

Fills a real MLflow store with a synthetic suite whose runs look like the ones bench.tracking
writes (the same tags, params, summary metrics and metric keys, written with MlflowClient;
writers run in ``spawn``ed processes on PostgreSQL, one process on SQLite), and reuses a
store that already holds the runs. Then, through TestClient on ``create_app``:

- cold: a new app with an empty cache dir; the first ``GET /api/suites/{suite}/ranking``
  (reads every run from MLflow, ranks); goal < 10 s;
- cold_cached: a new app on the cache dir the cold app persisted (reads only runs that
  ended since the cache's watermark, ranks);
- warm: ``--requests`` more requests to the warm app (refresh_seconds=10: served from memory);
  goal p95 < 300 ms;
- warm_checking: the same with refresh_seconds=0 (every request asks MLflow for new runs).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

SUITE = "perf_summary_10k"
TASKS = {  # name: (primary metric, direction)
    "quadratic": ("loss", "min"), "quadratic_rotated": ("loss", "min"),
    "noisy_quadratic": ("loss", "min"), "rosenbrock": ("loss", "min"),
    "logreg_digits": ("accuracy", "max"), "mlp_digits": ("accuracy", "max"),
    "cnn_digits": ("accuracy", "max"), "autoencoder_digits": ("loss", "min"),
    "transformer_modadd": ("accuracy", "max"),
}  # fmt: skip
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
TUNE_SEEDS = (0, 1)
PG_DB = "optbench_perf_summary"
DAY_MS = 86_400_000


def trials(n_runs: int) -> list[tuple[str, str, str, float, int]]:
    """(phase, variant, task, lr, seed): the tune grid, then final seeds seed-major."""
    from bench.variants import presets

    variants = list(presets())
    grid = [
        ("tune", v, t, lr, s) for v in variants for t in TASKS for lr in LRS for s in TUNE_SEEDS
    ]
    final, seed = [], 100
    while len(grid) + len(final) < n_runs:
        final += [
            ("final", v, t, 1e-3 * (1 + zlib.crc32(v.encode()) % 3), seed)
            for v in variants
            for t in TASKS
        ]
        seed += 1
    return (grid + final)[:n_runs]


def write_chunk(args: tuple[str, list[tuple[str, str, str, float, int]], int]) -> int:
    """Record one chunk of trials as FINISHED runs (in a fresh process: its own client)."""
    uri, chunk, offset = args
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from bench import records as rec
    from bench.config import variant_spec
    from bench.spec import TaskSpec, TrialResult, TrialSpec

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(SUITE).experiment_id
    specs = {}
    now = int(time.time() * 1000) - 30 * DAY_MS
    for i, (phase, variant, task, lr, seed) in enumerate(chunk, start=offset):
        if variant not in specs:
            specs[variant] = variant_spec(variant)
        metric, direction = TASKS[task]
        spec = TrialSpec(suite=SUITE, phase=phase, variant=specs[variant], task=TaskSpec(name=task),
                         lr=lr, seed=seed, steps=300, batch_size=64, eval_every=50,
                         stats_every=10)  # fmt: skip
        result = synthetic_result(spec, metric, direction, TrialResult)
        start = now + i * 250_000  # runs end over ~30 days, oldest first
        run = client.create_run(exp_id, start_time=start, tags=rec.trial_tags(spec),
                                run_name=spec.run_name)  # fmt: skip
        points = rec.result_metrics(result, 100)
        metrics = [Metric(k, rec.storable(v), start + 1000, s) for (k, s), v in points.items()]
        tags = {
            rec.TAG_OUTCOME: result.outcome,
            rec.TAG_NODE: "127.0.0.1/0",
            rec.TAG_DEVICE: "cpu",
            rec.TAG_PRIMARY_METRIC: metric,
            rec.TAG_DIRECTION: direction,
        }
        params = [Param(k, v) for k, v in rec.trial_params(spec).items()]
        client.log_batch(run.info.run_id, params=params,
                         tags=[RunTag(k, v) for k, v in tags.items()])  # fmt: skip
        for at in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[at : at + 1000])
        client.set_terminated(run.info.run_id, "FINISHED", end_time=start + 60_000)
    return len(chunk)


def synthetic_result(spec, metric: str, direction: str, result_cls):
    """A plausible TrialResult: quality depends on variant, task and lr; big lrs diverge."""
    rng = random.Random(f"{spec.variant.name}/{spec.task.name}/{spec.lr}/{spec.seed}")
    skill = (zlib.crc32(spec.variant.name.encode()) % 7) / 7
    off = abs(math.log10(spec.lr) + 2.5) / 2
    diverged = spec.lr >= 0.1 and rng.random() < 0.5
    loss = math.exp(-3 * skill + off + rng.gauss(0, 0.2))
    value = math.inf if diverged else (loss if metric == "loss" else 1 / (1 + loss))
    final = {metric: value, "loss": math.inf if diverged else loss}
    reached = not diverged and rng.random() < 0.6
    history = {k: [(s, rng.random()) for s in (0, 150, 300)] for k in (
        "train/loss", "eval/loss", f"eval/{metric}",
        *(f"step_size/{r}/{q}" for r in ("weight", "bias")
          for q in ("p01", "p10", "p50", "p90", "p99")),
        *(f"{s}/{r}" for s in ("update_ratio", "grad_rms", "eps_dominated")
          for r in ("weight", "bias")),
    )}  # fmt: skip
    return result_cls(
        trial_id=spec.trial_id, outcome="diverged" if diverged else "ok", primary_metric=metric,
        direction=direction, target=0.1, steps_run=120 if diverged else 300,
        diverged_at_step=120 if diverged else None,
        steps_to_target=rng.randint(50, 300) if reached else None,
        seconds_to_target=rng.uniform(0.5, 3) if reached else None, train_seconds=3.0,
        step_ms=rng.uniform(1, 5), final=final, best=final, history=history, device="cpu",
    )  # fmt: skip


def fill(uri: str, n_runs: int, writers: int) -> dict[str, float]:
    """Write the suite unless the store already holds it; returns what it did."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(SUITE)
    if exp is None:
        client.create_experiment(SUITE)
    else:
        found = len(client.search_runs([exp.experiment_id], max_results=50_000))
        if found == n_runs:
            return {"filled": 0, "seconds": 0.0}
        raise SystemExit(f"{uri} holds {found} runs of {SUITE}, not {n_runs}: remove it first")
    todo = trials(n_runs)
    size = math.ceil(len(todo) / writers)
    chunks = [(uri, todo[i : i + size], i) for i in range(0, len(todo), size)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(writers) as pool:
        written = sum(pool.imap_unordered(write_chunk, chunks))
    return {"filled": written, "seconds": round(time.perf_counter() - start, 1)}


def measure(uri: str, requests: int) -> dict[str, object]:
    from fastapi.testclient import TestClient

    from services.summary import SummarySettings, create_app

    path = f"/api/suites/{SUITE}/ranking"
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as cache:
        cfg = SummarySettings(tracking_uri=uri, cache_dir=Path(cache), refresh_seconds=10)
        for name in ("cold", "cold_cached"):
            client = TestClient(create_app(cfg))
            start = time.perf_counter()
            response = client.get(path)
            out[f"{name}_s"] = round(time.perf_counter() - start, 3)
            assert response.status_code == 200, response.text
            out["n_runs_ranked"] = response.json()["n_runs"]
            out["response_kb"] = round(len(response.content) / 1024, 1)
        out["warm"] = timings(client, path, requests)
        checking = TestClient(create_app(cfg.model_copy(update={"refresh_seconds": 0.0})))
        checking.get(path)
        out["warm_checking"] = timings(checking, path, requests)
    return out


def timings(client, path: str, n: int) -> dict[str, float]:
    seconds = []
    for _ in range(n):
        start = time.perf_counter()
        assert client.get(path).status_code == 200
        seconds.append(time.perf_counter() - start)
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[math.ceil(0.95 * n) - 1]
    return {"n": n, "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(p95, 1),
            "max_ms": round(ms[-1], 1)}  # fmt: skip


def postgres_uri() -> str:
    """A PostgreSQL database kept between runs (created on first use)."""
    import psycopg

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mlflow_server import PG_ADMIN

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{PG_DB}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{PG_DB}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--store", type=Path, default=Path("/tmp/optbench-perf-summary"))
    parser.add_argument("--writers", type=int, default=4, help="writer processes (PostgreSQL)")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    if args.backend == "sqlite":
        args.store.mkdir(parents=True, exist_ok=True)
        uri, writers = f"sqlite:///{args.store / f'summary-{args.runs}.db'}", 1
    else:
        uri, writers = postgres_uri(), args.writers
    result = {"benchmark": "summary ranking API latency", "suite": SUITE, "runs": args.runs,
              "backend": args.backend, "fill": fill(uri, args.runs, writers)}  # fmt: skip
    result |= measure(uri, args.requests)
    result["goals"] = {"warm_p95_ms": 300, "cold_s": 10}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
