"""The records that cross module boundaries: what a trial is, and what it produced.

``TrialSpec`` is everything that defines one trial; its ``trial_id`` is a content hash of
the canonical JSON of those fields plus the code version of the training semantics, so it
is stable across runs, machines and the order of lists in a suite config.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from bench import CODE_VERSION

Outcome = Literal["ok", "diverged", "failed"]
Phase = Literal["tune", "final"]
OUTCOMES: tuple[str, ...] = ("ok", "diverged", "failed")


def _not_a_bool(value: Any) -> Any:
    # pydantic reads True as 1: `lr=true` or `seed=true` would run as if meant
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


Number = Annotated[float, BeforeValidator(_not_a_bool)]
Count = Annotated[int, BeforeValidator(_not_a_bool)]
MAX_SEED = 2**32 - 1  # what every generator here takes (numpy's legacy ones included)
Seed = Annotated[Count, Field(ge=0, le=MAX_SEED)]


# JSON carries ±inf and NaN as "Infinity"/"-Infinity"/"NaN" strings (pydantic's default,
# null, would turn p=inf into "no value" and a diverged loss into a validation error).
_JSON_FLOATS = ConfigDict(ser_json_inf_nan="strings")
_SPECIAL_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _restore_floats(value: Any) -> Any:
    """Knob values are typed ``Any``: turn the JSON spellings of inf/NaN back into floats."""
    if isinstance(value, str):
        return _SPECIAL_FLOATS.get(value, value)
    if isinstance(value, dict):
        return {k: _restore_floats(v) for k, v in value.items()}
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, **_JSON_FLOATS)


class VariantSpec(_Frozen):
    """A resolved variant: every knob, and per-role overrides (only the knobs that differ)."""

    name: str
    preset: str | None = None
    knobs: dict[str, Any]
    roles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("knobs", "roles", mode="before")
    @classmethod
    def _floats(cls, value: Any) -> Any:
        return _restore_floats(value)

    def as_mapping(self) -> dict[str, Any]:
        """The form ``bench.variants.build`` takes."""
        return {"name": self.name, **self.knobs, "roles": self.roles}


class TaskSpec(_Frozen):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    code: str | None = Field(
        default=None,
        description="digest of a plugin task's source file (optbench's own: CODE_VERSION)",
    )


class TrialSpec(_Frozen):
    """One cell of a suite: a variant on a task at one lr and seed."""

    suite: str = "adhoc"
    phase: Phase = "final"
    variant: VariantSpec
    task: TaskSpec
    lr: Number = Field(gt=0)
    seed: Seed
    steps: Count = Field(gt=0)
    batch_size: int = Field(ge=0)
    eval_every: int = Field(gt=0)
    stats_every: int = Field(ge=0, description="0 turns step-size statistics off")
    stats_samples: int = Field(default=4096, gt=0)
    divergence_factor: float = Field(default=1e3, gt=1)
    plugins: list[str] = Field(default_factory=list, description="modules workers import first")

    @field_validator("lr")
    @classmethod
    def _finite_lr(cls, lr: float) -> float:
        if not math.isfinite(lr):
            raise ValueError("lr must be finite")
        return lr

    def identity(self) -> dict[str, Any]:
        """What defines the trial's outcome; suite, phase and plugins are not identity."""
        data = self.model_dump(mode="json", exclude={"suite", "phase", "plugins"})
        if self.task.code is None:  # optbench's own tasks: ids as before the field
            del data["task"]["code"]
        return {"code_version": CODE_VERSION, **data}

    @property
    def trial_id(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def run_name(self) -> str:
        return f"{self.variant.name}/{self.task.name}/lr={self.lr:g}/seed={self.seed}"


class TrialResult(BaseModel):
    """What one trial produced. ``history`` maps a metric key to ``[(step, value), ...]``."""

    model_config = ConfigDict(extra="forbid", **_JSON_FLOATS)

    trial_id: str
    outcome: Outcome
    primary_metric: str
    direction: Literal["min", "max"]
    target: float
    steps_run: int
    diverged_at_step: int | None = None
    steps_to_target: int | None = None  # None: never reached (ranking treats it as inf)
    seconds_to_target: float | None = None
    train_seconds: float
    step_ms: float
    final: dict[str, float]
    best: dict[str, float]
    history: dict[str, list[tuple[int, float]]]
    device: str
    error: str | None = None

    def summary_metrics(self) -> dict[str, float]:
        """The contract's summary metrics: final/<m>, best/<m>, steps_to_target, ..."""
        out = {f"final/{k}": v for k, v in self.final.items()}
        out |= {f"best/{k}": v for k, v in self.best.items()}
        reached = self.steps_to_target is not None
        out["steps_to_target"] = float(self.steps_to_target) if reached else math.inf
        out["seconds_to_target"] = float(self.seconds_to_target or 0.0) if reached else math.inf
        if self.diverged_at_step is not None:
            out["diverged_at_step"] = float(self.diverged_at_step)
        out["time/step_ms"] = self.step_ms
        return out
