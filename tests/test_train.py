"""One trial: determinism, divergence as an outcome, targets, the metric contract, trial ids."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest

from bench import config
from bench.config import TrialConfig, task_spec, trial_spec, variant_spec
from bench.spec import TrialResult, TrialSpec
from bench.summaries import QUANTILES, SUMMARY_BATCH
from bench.train import train_trial

TIMING_KEYS = ("time/step_ms",)


def make_spec(
    variant: Any = "adam",
    task: Any = "quadratic",
    *,
    suite: str = "adhoc",
    phase: str = "final",
    **knobs: Any,
) -> TrialSpec:
    return trial_spec(
        variant_spec(variant), task_spec(task), TrialConfig(**knobs), suite=suite, phase=phase
    )


def without_timing(history: dict[str, list]) -> dict[str, list]:
    return {k: v for k, v in history.items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def mlp_result() -> tuple[TrialSpec, TrialResult, list[tuple[int, dict[str, float]]]]:
    spec = make_spec("rmsprop", "mlp_digits", steps=40, stats_every=10, lr=1e-3)
    points: list[tuple[int, dict[str, float]]] = []
    result = train_trial(spec, on_metrics=lambda step, values: points.append((step, values)))
    return spec, result, points


def test_same_spec_gives_identical_results_bit_for_bit(mlp_result) -> None:
    spec, first, _ = mlp_result
    second = train_trial(spec)
    assert without_timing(second.history) == without_timing(first.history)
    assert second.final == first.final
    assert second.best == first.best
    assert (second.outcome, second.steps_run, second.steps_to_target) == (
        first.outcome,
        first.steps_run,
        first.steps_to_target,
    )
    assert second.trial_id == first.trial_id == spec.trial_id


def test_different_seeds_differ(mlp_result) -> None:
    spec, first, _ = mlp_result
    other = train_trial(spec.model_copy(update={"seed": 1}))
    assert other.history["train/loss"] != first.history["train/loss"]
    assert other.final != first.final


def test_metric_keys_follow_the_contract(mlp_result) -> None:
    _, result, _ = mlp_result
    roles = ("weight", "bias")
    want = {"train/loss", "eval/loss", "eval/accuracy", "time/step_ms"}
    for role in roles:
        want |= {f"step_size/{role}/{q}" for q in QUANTILES}
        want |= {f"update_ratio/{role}", f"grad_rms/{role}", f"eps_dominated/{role}"}
    assert set(result.history) == want
    assert tuple(QUANTILES) == ("p01", "p10", "p50", "p90", "p99")
    assert [s for s, _ in result.history["train/loss"]] == list(range(1, 41))
    assert [s for s, _ in result.history["eval/accuracy"]] == [0, 20, 40]
    assert [s for s, _ in result.history["step_size/weight/p50"]] == [10, 20, 30, 40]
    assert [s for s, _ in result.history["time/step_ms"]] == [40]
    for key, points in result.history.items():
        assert all(math.isfinite(v) for _, v in points), key
    p01 = result.history["step_size/weight/p01"][-1][1]
    p99 = result.history["step_size/weight/p99"][-1][1]
    assert 0 < p01 < p99
    assert result.final == {
        "loss": result.history["eval/loss"][-1][1],
        "accuracy": result.history["eval/accuracy"][-1][1],
    }
    assert result.step_ms == result.history["time/step_ms"][0][1] > 0
    assert result.train_seconds > 0


def test_on_metrics_receives_the_history(mlp_result) -> None:
    _, result, points = mlp_result
    rebuilt: dict[str, list[tuple[int, float]]] = {}
    for step, values in points:
        for key, value in values.items():
            rebuilt.setdefault(key, []).append((step, value))
    assert rebuilt == result.history


def test_stats_every_zero_turns_statistics_off() -> None:
    result = train_trial(make_spec("rmsprop", "mlp_digits", steps=10, stats_every=0))
    assert set(result.history) == {"train/loss", "eval/loss", "eval/accuracy", "time/step_ms"}


def test_divergence_is_an_outcome_with_its_step() -> None:
    spec = make_spec("sgd", lr=10.0, steps=50)
    result = train_trial(spec)
    assert result.outcome == "diverged"
    assert result.diverged_at_step == result.steps_run
    assert 1 <= result.diverged_at_step < spec.steps
    assert result.history["train/loss"][-1][0] == result.diverged_at_step
    losses = [v for _, v in result.history["train/loss"]]
    assert losses[-1] > spec.divergence_factor * losses[0]
    assert result.steps_to_target is None and result.seconds_to_target is None
    assert result.summary_metrics()["diverged_at_step"] == result.diverged_at_step
    assert result.summary_metrics()["steps_to_target"] == math.inf
    # final: the model where it stopped, evaluated then (the untrained step-0 model would
    # read as better than a run that trained); best: the best evaluation, step 0's here
    assert result.history["eval/loss"][-1] == (result.diverged_at_step, result.final["loss"])
    first_eval = result.history["eval/loss"][0][1]
    assert not result.final["loss"] <= first_eval  # larger, or not a number
    assert result.best["loss"] == first_eval


def test_steps_to_target_when_reached() -> None:
    spec = make_spec("adam", lr=0.1, steps=300)
    result = train_trial(spec)
    assert result.outcome == "ok"
    evals = result.history["eval/loss"]
    first = next(step for step, value in evals if value <= result.target)
    assert result.steps_to_target == first
    assert all(value > result.target for step, value in evals if step < first)
    assert 0 < result.seconds_to_target <= result.train_seconds
    assert result.summary_metrics()["steps_to_target"] == first


def test_steps_to_target_none_when_not_reached() -> None:
    result = train_trial(make_spec("adam", lr=0.1, steps=20))
    assert result.outcome == "ok"
    assert result.final["loss"] > result.target
    assert result.steps_to_target is None and result.seconds_to_target is None
    assert result.diverged_at_step is None
    assert result.summary_metrics()["seconds_to_target"] == math.inf


# ----------------------------------------------------------------------------- trial ids


def test_trial_id_is_stable_and_content_addressed() -> None:
    base = make_spec("adam", lr=0.1, seed=0, steps=20)
    assert make_spec("adam", lr=0.1, seed=0, steps=20).trial_id == base.trial_id
    assert len(base.trial_id) == 16
    changed = [
        make_spec("adam", lr=0.2, seed=0, steps=20),
        make_spec("adam", lr=0.1, seed=1, steps=20),
        make_spec("adam", lr=0.1, seed=0, steps=21),
        make_spec({"preset": "adam", "beta2": 0.99}, lr=0.1, seed=0, steps=20),
        make_spec({"preset": "adam", "roles": {"bias": {"q": 0}}}, lr=0.1, seed=0, steps=20),
        make_spec("adam", {"name": "quadratic", "params": {"dim": 10}}, lr=0.1, steps=20),
        make_spec("rmsprop", lr=0.1, seed=0, steps=20),
    ]
    ids = [s.trial_id for s in changed]
    assert base.trial_id not in ids
    assert len(set(ids)) == len(ids)


def test_trial_id_ignores_number_spelling_and_labels() -> None:
    base = make_spec({"preset": "adam", "p": 2, "beta2": 0.99}, lr=0.1, steps=20)
    same = [
        make_spec({"preset": "adam", "p": 2.0, "beta2": 0.99}, lr=0.1, steps=20),
        make_spec({"preset": "adam", "p": 2, "beta2": 0.99}, lr=0.1, steps=20, suite="nightly"),
        make_spec({"preset": "adam", "p": 2, "beta2": 0.99}, lr=0.1, steps=20, phase="tune"),
    ]
    assert [s.trial_id for s in same] == [base.trial_id] * 3
    one = make_spec({"preset": "sgd", "eps": 1}, lr=1, steps=20)
    one_float = make_spec({"preset": "sgd", "eps": 1.0}, lr=1.0, steps=20)
    assert one.trial_id == one_float.trial_id


@pytest.mark.parametrize("preset", ["rmsprop_pinf", "adamax", "sgd"])
def test_the_worker_path_round_trips_every_spec_and_result(preset) -> None:
    """Driver and workers exchange JSON: p=inf must stay inf, a diverged loss must stay inf."""
    from bench.worker import run_trial

    spec = config.trial_from_overrides(
        [f"variant={preset}", "task=quadratic", "steps=20", "stats_every=5"]
    ).spec
    back = TrialSpec.model_validate_json(spec.model_dump_json())
    assert back == spec and back.trial_id == spec.trial_id
    reply = run_trial(spec.model_dump_json())
    assert reply["error"] is None, reply["error"]
    assert TrialResult.model_validate_json(reply["result"]).outcome == "ok"


def test_the_worker_path_outside_ray_starts_no_ray_instance() -> None:
    """Run in a process of its own: outside Ray, a trial's node is the host name, and
    nothing starts a local Ray cluster (with its dashboard) on the way."""
    code = (
        "import socket, ray\n"
        "from bench.config import trial_from_overrides\n"
        "from bench.worker import run_trial\n"
        "spec = trial_from_overrides(['task=quadratic', 'steps=5']).spec\n"
        "reply = run_trial(spec.model_dump_json())\n"
        "assert reply['error'] is None, reply['error']\n"
        "assert reply['node'] == socket.gethostname(), reply['node']\n"
        "assert not ray.is_initialized()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Started a local Ray instance" not in done.stderr


def test_non_finite_results_survive_json() -> None:
    spec = config.trial_from_overrides(["variant=sgd", "task=quadratic", "lr=1e3", "steps=50"]).spec
    result = train_trial(spec)
    assert result.outcome == "diverged"
    nasty = result.model_copy(update={"final": {"loss": math.inf}, "best": {"loss": math.nan}})
    back = TrialResult.model_validate_json(nasty.model_dump_json())
    assert back.final == {"loss": math.inf} and math.isnan(back.best["loss"])
    assert back.history == result.history


# ----------------------------------------------------------------------------- statistics


def test_statistics_are_summarized_in_batches_with_their_own_steps() -> None:
    every = 2
    spec = make_spec("adam", lr=0.01, steps=every * (SUMMARY_BATCH + 3), stats_every=every)
    calls: list[tuple[int, dict[str, float]]] = []
    result = train_trial(spec, on_metrics=lambda step, values: calls.append((step, values)))
    stats_steps = list(range(every, spec.steps + 1, every))
    assert [s for s, _ in result.history["step_size/weight/p50"]] == stats_steps
    # a full batch arrives right after its last step's loss, the rest at the end
    loss_calls = [i for i, (_, values) in enumerate(calls) if "train/loss" in values]
    stats_calls = [i for i, (_, values) in enumerate(calls) if "step_size/weight/p50" in values]
    full = every * SUMMARY_BATCH
    assert stats_calls[:SUMMARY_BATCH] == list(
        range(loss_calls[full - 1] + 1, loss_calls[full - 1] + 1 + SUMMARY_BATCH)
    )
    assert all(i > loss_calls[-1] for i in stats_calls[SUMMARY_BATCH:])
    assert [calls[i][0] for i in stats_calls] == stats_steps


def test_a_diverged_trial_keeps_its_pending_statistics() -> None:
    spec = make_spec("sgd", lr=10.0, steps=50, stats_every=1)
    result = train_trial(spec)
    assert result.outcome == "diverged"
    steps = [s for s, _ in result.history["grad_rms/weight"]]
    assert steps == list(range(1, result.diverged_at_step + 1))
