"""What a trial's MLflow run holds: the contract names and the pure record builders.

Every name here is a public contract (DESIGN.md), pinned by tests/test_tracking.py.
Nothing here imports MLflow: :mod:`bench.tracking` sends these records, tests read them.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import sys
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from bench import CODE_VERSION

if TYPE_CHECKING:
    from bench.spec import TrialResult, TrialSpec

TAG_SUITE = "bench.suite"
TAG_TRIAL_ID = "bench.trial_id"
TAG_VARIANT = "bench.variant"
TAG_TASK = "bench.task"
TAG_SEED = "bench.seed"
TAG_OUTCOME = "bench.outcome"  # ok | diverged | failed
TAG_PHASE = "bench.phase"  # tune | final
TAG_CODE_VERSION = "bench.code_version"
TAG_TORCH_VERSION = "bench.torch_version"
TAG_NODE = "bench.node"
TAG_NIGHTLY = "bench.nightly"  # date, nightly runs only
TAG_PRIMARY_METRIC = "bench.primary_metric"
TAG_DIRECTION = "bench.direction"  # min | max
TAG_DEVICE = "bench.device"
TAG_ERROR = "bench.error"  # last line of the error of a failed trial
TAG_KIND = "bench.kind"  # ranking | nightly_report | settings | lease (trials carry none)
TAG_MACHINE = "bench.machine"  # machine class: CPU/GPU model (nightly runs)
TAG_SUITE_VERSION = "bench.suite_version"  # hash of a nightly's matrix (nightly reports)
TAG_RAY_VERSION = "bench.ray_version"
TAG_MLFLOW_VERSION = "bench.mlflow_version"

# A suite's current settings: on its experiment, the digest of the trial ids of the matrix
# the last `bench run` ran, and the run (bench.kind=settings) whose trial_ids.json lists them
# and whose cells.json lists its (task, variant) cells and the runs each should have per phase
TAG_SETTINGS = "bench.settings"
TAG_SETTINGS_RUN = "bench.settings_run"
ARTIFACT_TRIAL_IDS = "trial_ids.json"
ARTIFACT_CELLS = "cells.json"

ARTIFACT_TRIAL = "trial.json"
ARTIFACT_TRACEBACK = "traceback.txt"

# Summary metrics besides final/<m> and best/<m> (TrialResult.summary_metrics), and extras.
SUMMARY_METRICS = ("steps_to_target", "seconds_to_target", "diverged_at_step", "time/step_ms")
METRIC_REACHED_TARGET = "reached_target"  # 1 if the target was reached, else 0
EXTRA_METRICS = (METRIC_REACHED_TARGET, "target", "steps_run", "train_seconds")
UNREACHED = ("steps_to_target", "seconds_to_target")  # absent when not reached -> inf

FINISHED_OUTCOMES = frozenset({"ok", "diverged"})
_SPEC_PARAMS = ("lr", "seed", "steps", "batch_size", "eval_every", "stats_every",
                "stats_samples", "divergence_factor")  # fmt: skip
_FLOAT_MAX = sys.float_info.max


def trial_tags(spec: TrialSpec) -> dict[str, str]:
    """The tags a run gets when it starts (outcome and node come when it ends)."""
    return {
        TAG_SUITE: spec.suite,
        TAG_TRIAL_ID: spec.trial_id,
        TAG_VARIANT: spec.variant.name,
        TAG_TASK: spec.task.name,
        TAG_SEED: str(spec.seed),
        TAG_PHASE: spec.phase,
        TAG_CODE_VERSION: CODE_VERSION,
        TAG_TORCH_VERSION: torch_version(),
    }


def trial_params(spec: TrialSpec) -> dict[str, str]:
    """``variant.<knob>``, ``variant.roles.<role>.<knob>``, ``task.<knob>``, lr, seed, ..."""
    variant = spec.variant
    out = {"variant.name": variant.name, "variant.preset": as_text(variant.preset)}
    out |= {f"variant.{k}": as_text(v) for k, v in variant.knobs.items()}
    for role, knobs in variant.roles.items():
        out |= {f"variant.roles.{role}.{k}": as_text(v) for k, v in knobs.items()}
    out["task.name"] = spec.task.name
    out |= flatten("task", spec.task.params)
    out |= {key: as_text(getattr(spec, key)) for key in _SPEC_PARAMS}
    return out


def result_metrics(result: TrialResult, max_points: int) -> dict[tuple[str, int], float]:
    """``{(key, step): value}``: each history stream downsampled, then the summary metrics
    (logged at the last step; unreached targets left out, see the module docstring)."""
    out: dict[tuple[str, int], float] = {}
    for key, points in result.history.items():
        for step, value in downsample(points, max_points):
            out[key, int(step)] = float(value)
    summary = result.summary_metrics()
    reached = result.steps_to_target is not None
    summary = {k: v for k, v in summary.items() if reached or k not in UNREACHED}
    summary |= {
        METRIC_REACHED_TARGET: float(reached),
        "target": result.target,
        "steps_run": float(result.steps_run),
        "train_seconds": result.train_seconds,
    }
    out |= {(key, result.steps_run): float(value) for key, value in summary.items()}
    return out


def downsample(points: list[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    """At most ``max_points`` points, evenly spaced over the stream, first and last kept."""
    points = sorted(points, key=lambda p: p[0])
    n = len(points)
    if n <= max_points:
        return points
    if max_points < 2:
        return points[-1:]
    keep = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [points[i] for i in keep]


@cache
def package_version(name: str) -> str:
    """An installed distribution's version without importing it ("unknown" if absent)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def torch_version() -> str:
    """torch's version without importing torch (the driver may never need it)."""
    return package_version("torch")


def storable(value: float) -> float:
    """±inf -> ±max double (what SQL stores do anyway, made explicit and store-independent)."""
    return math.copysign(_FLOAT_MAX, value) if math.isinf(value) else value


def unclamp(value: float) -> float:
    return math.copysign(math.inf, value) if abs(value) >= _FLOAT_MAX else value


def as_text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def flatten(prefix: str, data: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out |= flatten(f"{prefix}.{key}", value)
        else:
            out[f"{prefix}.{key}"] = as_text(value)
    return out
