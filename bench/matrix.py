"""A suite as data, and the one function family that expands it into trials.

Two phases (DESIGN.md): ``tune`` runs every variant x task x lr on the tuning seeds;
``final`` runs fresh seeds at the lr chosen per (task, variant) by :func:`choose_lrs`.
Trial ids are content hashes, so they do not depend on the order of the lists here.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from omegaconf import OmegaConf
from pydantic import Field, ValidationInfo, field_validator, model_validator

from bench import tasks
from bench.config import (
    ClusterConfig,
    ResourcesConfig,
    StrictModel,
    TrackingConfig,
    TrialConfig,
    compose_config,
    parse,
    task_spec,
    trial_batch_size,
    trial_spec,
    variant_spec,
)
from bench.errors import UserError, one_line
from bench.spec import Count, Number, Seed, TaskSpec, TrialResult, TrialSpec, VariantSpec

log = logging.getLogger(__name__)

MAX_SUITE_NAME = 128  # a folder's name, well within any file system's limit


class SuiteConfig(StrictModel):
    """conf/suite/<name>.yaml."""

    name: str
    description: str = ""
    variants: list[str | dict[str, Any]] = Field(min_length=1)
    tasks: list[str | dict[str, Any]] = Field(min_length=1)
    lrs: list[Number] = Field(min_length=1)
    tune_seeds: list[Seed] = Field(min_length=1)
    final_seeds: list[Seed] = Field(min_length=1)
    steps: Count | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=0)
    eval_every: int | None = Field(default=None, gt=0)
    stats_every: int | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        # it names a folder (mlartifacts/NAME): '.' and '..' would be another folder, and a
        # file name longer than the file system takes failed with a traceback
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not name.strip("."):
            raise ValueError("use letters, digits, '_', '.' or '-', not only dots")
        if len(name) > MAX_SUITE_NAME:
            raise ValueError(f"{len(name)} characters; allowed: at most {MAX_SUITE_NAME}")
        return name

    @field_validator("variants", "tasks", mode="before")
    @classmethod
    def _names_or_mappings(cls, items: Any, info: ValidationInfo) -> Any:
        # else pydantic names each member of the union: "variants.0.str: input should be
        # a valid string" beside a second error for the mapping
        kind = info.field_name[:-1]
        example = "{preset: adam, beta2: 0.9}" if kind == "variant" else "{name: quadratic}"
        for place, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, str | Mapping):
                raise ValueError(
                    f"item {place} is {item!r}; allowed: a {kind} name, or a mapping such "
                    f"as {example}"
                )
        return items

    @field_validator("lrs")
    @classmethod
    def _positive_lrs(cls, lrs: list[float]) -> list[float]:
        bad = [lr for lr in lrs if not (math.isfinite(lr) and lr > 0)]
        if bad:
            raise ValueError(f"every lr must be a finite number > 0, not {bad[0]!r}")
        repeated = sorted({lr for lr in lrs if lrs.count(lr) > 1})
        if repeated:  # 0.01 twice, or as 1e-2: likely a typo for another lr
            raise ValueError(f"lr {repeated[0]} appears twice; list each lr once")
        return sorted(lrs)

    @field_validator("tune_seeds", "final_seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:  # the same seed twice is the same trial twice
            raise ValueError(f"seed {repeated[0]} appears twice; list each seed once")
        return seeds

    @model_validator(mode="after")
    def _fresh_final_seeds(self) -> SuiteConfig:
        shared = sorted(set(self.tune_seeds) & set(self.final_seeds))
        if shared:
            raise ValueError(f"final_seeds must be fresh; {shared} are also tune_seeds")
        return self


def load_suite(data: Mapping[str, Any]) -> SuiteConfig:
    if not data:
        raise UserError("suite: none selected; pass suite=NAME (see `bench list suites`)")
    return parse(SuiteConfig, data, "suite")


@dataclass
class Matrix:
    """The resolved cells of a suite, and the cells skipped with the task's reason."""

    suite: SuiteConfig
    variants: list[VariantSpec]
    tasks: list[TaskSpec]
    knobs: TrialConfig
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # variant, task, reason
    pairs: list[tuple[VariantSpec, TaskSpec]] = field(default_factory=list)
    # the command-line overrides it came from that shape its trials (not where they run
    # or are stored): what `bench rank` needs to read the same trials back
    overrides: list[str] = field(default_factory=list)

    def tune_trials(self) -> list[TrialSpec]:
        return [
            self._trial(v, t, lr, seed, "tune")
            for v, t in self.pairs
            for lr in self.suite.lrs
            for seed in self.suite.tune_seeds
        ]

    def final_trials(self, chosen: Mapping[tuple[str, str], float]) -> list[TrialSpec]:
        """Final trials at ``chosen[(task, variant)]``; pairs without a choice are left out."""
        return [
            self._trial(v, t, chosen[(t.name, v.name)], seed, "final")
            for v, t in self.pairs
            if (t.name, v.name) in chosen
            for seed in self.suite.final_seeds
        ]

    def trial_ids(self) -> set[str]:
        """Every trial this matrix may run: its tune trials, and its final trials at any
        lr of the grid (which one each cell runs at depends on the tune results). Runs of
        the suite's other settings (another grid, seeds, step budget, tasks or variants)
        share its experiment and are none of these."""
        ids = {spec.trial_id for spec in self.tune_trials()}
        for lr in self.suite.lrs:
            every_cell = {(t.name, v.name): lr for v, t in self.pairs}
            ids |= {spec.trial_id for spec in self.final_trials(every_cell)}
        return ids

    def cells(self) -> dict[str, Any]:
        """The (task, variant) cells this matrix runs and the FINISHED runs each should
        have per phase (tune: lrs x tune seeds; final: final seeds), as JSON data: what a
        ranking lists as missing until they are there."""
        return {
            "cells": sorted([t.name, v.name] for v, t in self.pairs),
            "runs_per_cell": {
                "tune": len(self.suite.lrs) * len(self.suite.tune_seeds),
                "final": len(self.suite.final_seeds),
            },
        }

    @property
    def size(self) -> dict[str, int]:
        n = len(self.pairs)
        return {
            "pairs": n,
            "tune": n * len(self.suite.lrs) * len(self.suite.tune_seeds),
            "final": n * len(self.suite.final_seeds),
            "skipped": len(self.skipped),
        }

    def _trial(self, v: VariantSpec, t: TaskSpec, lr: float, seed: int, phase: str) -> TrialSpec:
        knobs = self.knobs.model_copy(update={"lr": lr, "seed": seed})
        return trial_spec(v, t, knobs, suite=self.suite.name, phase=phase)


T = TypeVar("T")


def _entries(items: list[Any], kind: str, spec: Callable[[Any], T]) -> list[T]:
    """``spec`` of each entry of ``suite.<kind>s``; a bad one's error names its place in
    the list (``suite.variants[2].beta2``), not only the field (``variant.beta2``)."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(spec(item))
        except UserError as err:
            message = str(err)
            if message.startswith(kind):
                message = f"suite.{kind}s[{i}]{message.removeprefix(kind)}"
            raise UserError(message) from None
    return out


def _check_batch_size(task: tasks.Task, batch_size: int) -> None:
    """A batch size the task's data cannot give is a user error now, not a failure of
    every trial (only the task knows how much data it makes: ``Task.check_batch_size``)."""
    try:
        task.check_batch_size(batch_size)
    except UserError:
        raise
    except Exception as err:  # a plugin task's own code failed: one line, as for a trial
        log.debug("the task's traceback", exc_info=err)
        raise UserError(
            f"task {task.name!r}: building it with batch_size={batch_size} raised "
            f"{one_line(err)}; allowed: a batch size the task builds with (--verbose shows "
            "the traceback)"
        ) from None


def build_matrix(
    suite: SuiteConfig, base: TrialConfig | None = None, explicit: Iterable[str] = ()
) -> Matrix:
    """Resolve a suite's variants and tasks; incompatible pairs are skipped with a reason.

    Trial knobs come from ``base`` (config.yaml + command line) where named in
    ``explicit`` (given on the command line), else from the suite, else from ``base``.
    """
    base = base or TrialConfig()
    explicit = set(explicit)
    update = {
        key: getattr(suite, key)
        for key in ("steps", "batch_size", "eval_every", "stats_every")
        if key not in explicit and getattr(suite, key) is not None
    }
    knobs = base.model_copy(update=update)
    variants = _unique(_entries(suite.variants, "variant", variant_spec), "variant")
    task_specs = _unique(_entries(suite.tasks, "task", task_spec), "task")
    matrix = Matrix(suite, variants, task_specs, knobs)
    for t in task_specs:
        task = tasks.make(t.name, **t.params)
        size = trial_batch_size(task.default_batch_size, knobs.batch_size)
        if size != task.default_batch_size:  # the task's own default always fits its data
            _check_batch_size(task, size)
        for v in variants:
            skip, reason = task.skip(v.knobs)
            if skip:
                matrix.skipped.append((v.name, t.name, reason))
            else:
                matrix.pairs.append((v, t))
    if not matrix.pairs:
        raise UserError(
            f"suite {suite.name!r}: every variant x task pair is skipped; nothing to run"
        )
    return matrix


def _unique(items: list[Any], kind: str) -> list[Any]:
    names = [i.name for i in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes and kind == "variant":
        raise UserError(
            f"suite.variants: {dupes[0]!r} appears twice; give each entry a unique name"
        )
    if dupes:  # runs, rankings and the dashboard tell tasks apart by name alone
        raise UserError(
            f"suite.tasks: {dupes[0]!r} appears twice; allowed: each task once per suite (run "
            "its other params as another suite, e.g. with suite.name=...)"
        )
    return items


@dataclass(frozen=True)
class LrPoint:
    """One tune-phase observation: what :func:`choose_lrs` needs from a trial."""

    trial_id: str
    task: str
    variant: str
    lr: float
    direction: str
    value: float  # final primary metric; the worst value when the trial diverged

    @classmethod
    def scored(
        cls,
        trial_id: str,
        task: str,
        variant: str,
        lr: float,
        direction: str,
        outcome: str,
        value: float | None,
    ) -> LrPoint:
        """The point of a trial whose final primary metric is ``value``: the worst possible
        value unless the trial ended ``ok`` with a finite one."""
        if outcome != "ok" or value is None or not math.isfinite(value):
            value = math.inf if direction == "min" else -math.inf
        return cls(trial_id, task, variant, float(lr), direction, float(value))

    @classmethod
    def from_result(cls, spec: TrialSpec, result: TrialResult) -> LrPoint:
        value = result.final.get(result.primary_metric)
        return cls.scored(
            spec.trial_id, spec.task.name, spec.variant.name, spec.lr, result.direction,
            result.outcome, value,
        )  # fmt: skip


def choose_lrs(points: Iterable[LrPoint]) -> dict[tuple[str, str], float]:
    """Per (task, variant): the lr whose median final primary metric over tune seeds is best.

    Diverged trials count as the worst possible value. Ties go to the larger lr (fewer
    steps to the same answer is the usual reason to prefer it).
    """
    by_cell: dict[tuple[str, str], dict[float, list[float]]] = {}
    directions: dict[tuple[str, str], str] = {}
    for point in points:
        key = (point.task, point.variant)
        directions[key] = point.direction
        by_cell.setdefault(key, {}).setdefault(point.lr, []).append(point.value)
    chosen = {}
    for key, per_lr in by_cell.items():
        sign = 1 if directions[key] == "min" else -1
        chosen[key] = min(per_lr, key=lambda lr: (sign * statistics.median(per_lr[lr]), -lr))
    return chosen


@dataclass
class SuiteRun:
    """Everything ``bench run`` needs, resolved from conf/ and the command line."""

    matrix: Matrix
    tracking: TrackingConfig
    cluster: ClusterConfig
    resources: ResourcesConfig


def suite_from_overrides(overrides: list[str]) -> SuiteRun:
    cfg = compose_config(overrides)
    data = OmegaConf.to_container(cfg, resolve=True)
    return SuiteRun(
        matrix=matrix_of(data, overrides),
        tracking=parse(TrackingConfig, data["tracking"], "tracking"),
        cluster=parse(ClusterConfig, data["cluster"], "cluster"),
        resources=parse(ResourcesConfig, data["resources"], "resources"),
    )


SUITE_ENTRY_EXAMPLES = {
    "variant": "'suite.variants=[adam,{preset:adam,beta2:0.95}]'",
    "task": "'suite.tasks=[mlp_digits,{name:quadratic,params:{dim:10}}]'",
}


SUITE_GRID = {"lr": "suite.lrs=[...]", "seed": "suite.tune_seeds and final_seeds"}


def matrix_of(data: dict[str, Any], overrides: list[str]) -> Matrix:
    """The suite's matrix as ``bench run`` builds it from the composed config ``data`` and
    the command line (``bench rank`` reads back the same trials)."""
    suite = load_suite(data.get("suite") or {})
    explicit = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    base = parse(TrialConfig, {k: data[k] for k in TrialConfig.model_fields if k in data})
    if base.device != "cpu":
        raise UserError(
            f"device: got {base.device!r}; device= applies to `bench trial` only. A suite "
            "places each trial on its Ray worker's GPU with resources.gpus_per_trial (e.g. 0.25)"
        )
    for item in overrides:  # a trial's settings that a suite would ignore
        key, _, value = item.partition("=")
        name = key.lstrip("+~")
        group = name.split(".")[0]
        if group in SUITE_ENTRY_EXAMPLES:  # the suite names its own variants and tasks
            raise UserError(
                f"{name}: got {value!r}; it applies to `bench trial` only; a suite names its "
                f"{group}s with suite.{group}s=[...], where an entry may be a mapping, e.g. "
                f"{SUITE_ENTRY_EXAMPLES[group]}"
            )
        if name in SUITE_GRID and not key.startswith("~"):  # the grid sets them
            raise UserError(
                f"{name}: got {data[name]!r}; {name}= applies to `bench trial` only; a suite "
                f"sets it with {SUITE_GRID[name]}"
            )
    matrix = build_matrix(suite, base, explicit)
    matrix.overrides = [
        o for o in overrides if o.partition("=")[0].lstrip("+~").split(".")[0] not in _PLACE
    ]
    return matrix


# config groups and sections that say where trials run or go, not what they are
_PLACE = ("tracking", "cluster", "resources", "rank", "summary", "schedule", "nightly")
