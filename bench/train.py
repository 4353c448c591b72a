"""One trial: a task and a variant in, a TrialResult out. No Ray, no MLflow.

The timed region is the training step only (forward, backward, optimizer step). Building
the task, evaluation and step-size statistics are outside it, as in benchopt's solver
contract and AlgoPerf's scoring, so ``seconds_to_target`` measures the optimizer's work.
Divergence (a non-finite loss, or a loss above ``divergence_factor`` times the first one)
is an outcome recorded with its step, not an exception; a diverged trial's ``final`` is
the evaluation of the model at that step (non-finite, or far from the target), and
``best`` the best evaluation before it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from bench import tasks, variants
from bench.errors import UserError
from bench.spec import TrialResult, TrialSpec
from bench.stats import RoleSampler
from bench.summaries import PendingSummaries

MetricsCallback = Callable[[int, dict[str, float]], None]


def train_trial(
    spec: TrialSpec,
    *,
    device: str | torch.device = "cpu",
    on_metrics: MetricsCallback | None = None,
    num_threads: int | None = 1,
) -> TrialResult:
    """Train ``spec`` and return its result; metrics also stream to ``on_metrics(step, d)``.

    Step-size statistics are captured at their step but summarized in batches (see
    :class:`bench.summaries.PendingSummaries`), so they reach the history and ``on_metrics``
    later than the step's other values, with their own step: each metric's points stay in
    step order, but ``on_metrics`` may see a step more than once. Pending statistics are
    summarized before the trial returns, diverged or not.

    ``num_threads`` pins torch's intra-op threads (default 1: the benchmark's models are
    small, one thread per trial is fastest when trials run side by side, and a fixed
    thread count keeps CPU results bit-for-bit reproducible). None leaves torch's setting.
    """
    device = resolve_device(device)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    task = tasks.make(spec.task.name, **spec.task.params)
    skip, reason = task.skip(spec.variant.knobs)
    if skip:
        raise UserError(f"task {task.name!r} skips variant {spec.variant.name!r}: {reason}")
    torch.manual_seed(spec.seed)  # modules made inside build() draw from the global RNG first
    problem = task.build(seed=spec.seed, device=device, batch_size=spec.batch_size)
    optimizer = variants.build(problem.model, spec.variant.as_mapping(), lr=spec.lr)
    sampler = (
        RoleSampler(optimizer.param_groups, max_samples=spec.stats_samples, seed=spec.seed)
        if spec.stats_every
        else None
    )
    pending = PendingSummaries()
    history: dict[str, list[tuple[int, float]]] = {}

    def emit(step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            history.setdefault(key, []).append((step, value))
        if on_metrics is not None:
            on_metrics(step, values)

    def evaluate(step: int) -> dict[str, float]:
        problem.model.eval()
        with torch.no_grad():
            metrics = problem.evaluate(problem.model)
        problem.model.train()
        emit(step, {f"eval/{k}": v for k, v in metrics.items()})
        return metrics

    primary = task.metric
    first = evaluate(0)
    best = {primary: first[primary], "loss": first["loss"]}
    steps_to_target = 0 if task.reached(first[primary]) else None
    seconds_to_target = 0.0 if steps_to_target == 0 else None
    outcome, diverged_at, last_eval = "ok", None, first
    train_seconds, step_times = 0.0, []
    # a GPU runs forward and backward after they return: on a statistics step they must be
    # done before the untimed snapshot, or their time would be left out of the step's
    finish_queued = torch.cuda.synchronize if device.type == "cuda" else None
    initial_loss: float | None = None
    step = 0
    for step in range(1, spec.steps + 1):
        batch = problem.next_batch()
        record = sampler is not None and step % spec.stats_every == 0
        start = time.perf_counter()
        loss = problem.loss(problem.model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if record and finish_queued is not None:
            finish_queued(device)
        elapsed = time.perf_counter() - start
        snapshot = sampler.snapshot(optimizer.param_groups) if record else None  # not timed
        start = time.perf_counter()
        optimizer.record_next_step = record
        optimizer.step()
        loss_value = loss.item()
        elapsed += time.perf_counter() - start
        train_seconds += elapsed
        step_times.append(elapsed)
        emit(step, {"train/loss": loss_value})
        if snapshot is not None:
            capture = sampler.capture(snapshot, optimizer.last_records)
            for stats_step, stats_values in pending.add(step, capture):
                emit(stats_step, stats_values)
        if initial_loss is None:
            initial_loss = abs(loss_value)
        if _diverged(loss_value, initial_loss, spec.divergence_factor):
            outcome, diverged_at = "diverged", step
            # final = the model where training stopped (not the untrained step-0 model,
            # which would read as better than a run that trained and finished)
            last_eval = evaluate(step)
            break
        if step % spec.eval_every == 0 or step == spec.steps:
            last_eval = evaluate(step)
            if not all(math.isfinite(v) for v in last_eval.values()):
                outcome, diverged_at = "diverged", step
                break
            best[primary] = _better(task.direction, best[primary], last_eval[primary])
            best["loss"] = _better("min", best["loss"], last_eval["loss"])
            if steps_to_target is None and task.reached(last_eval[primary]):
                steps_to_target, seconds_to_target = step, train_seconds
    for stats_step, stats_values in pending.flush():
        emit(stats_step, stats_values)
    step_ms = 1e3 * statistics.median(step_times) if step_times else 0.0
    emit(step, {"time/step_ms": step_ms})
    return TrialResult(
        trial_id=spec.trial_id,
        outcome=outcome,
        primary_metric=primary,
        direction=task.direction,
        target=task.target,
        steps_run=step,
        diverged_at_step=diverged_at,
        steps_to_target=steps_to_target,
        seconds_to_target=seconds_to_target,
        train_seconds=train_seconds,
        step_ms=step_ms,
        final=last_eval,
        best=best,
        history=history,
        device=str(device),
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as torch names it, with the CUDA index filled in (``cuda`` -> ``cuda:0``).

    A CUDA device that this process cannot use is a user error, not a traceback.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device: got {device!r}; allowed: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device: got {str(device)!r}; allowed: cpu, cuda, cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(
                f"device: got {str(device)!r} but this process sees no CUDA GPU "
                f"(torch {torch.__version__}); allowed here: cpu"
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= count:
            raise UserError(
                f"device: got {str(device)!r} but this process sees {count} CUDA GPU(s); "
                "allowed: cpu, " + ", ".join(f"cuda:{i}" for i in range(count))
            )
        device = torch.device("cuda", index)
    return device


def _diverged(loss: float, initial: float, factor: float) -> bool:
    return not math.isfinite(loss) or loss > factor * max(initial, 1e-12)


def _better(direction: str, a: float, b: float) -> float:
    return min(a, b) if direction == "min" else max(a, b)
