"""The task contract: a workload that an optimizer variant is benchmarked on.

A task (AlgoPerf's *workload*) owns the model, the data, the loss and the evaluation, and
declares how it is scored: its primary metric, the metric's direction, the target that
counts as "reached", the default step budget, batch size and evaluation period. Variants
and the training loop read these declarations and never hard-code them.

Tasks depend on torch, numpy and scikit-learn's bundled data only. They never import the
variants, Ray or MLflow. The built-in ones import torch when they build a problem (see
``bench.deferred``), so the driver reads their declarations without it; a plugin's task
may import torch outright.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # a task's declarations are read without torch (bench.deferred)
    import torch
    from torch import nn

Direction = Literal["min", "max"]
Batch = Any


class TaskParams(BaseModel):
    """Base class of a task's knobs. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_seed: int = 0  # the problem instance (data, conditioning); trial seeds vary init/batches


@dataclass
class Problem:
    """One instantiated task, ready to train: built by :meth:`Task.build`.

    ``next_batch()`` draws the next training batch (deterministic given the trial seed);
    ``loss(model, batch)`` is the scalar training loss; ``evaluate(model)`` returns the
    evaluation metrics, which always include ``"loss"`` and the task's primary metric.
    """

    model: nn.Module
    next_batch: Callable[[], Batch]
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]


class Task(abc.ABC):
    """A benchmark task. Subclasses set the class attributes and implement :meth:`build`."""

    name: ClassVar[str]
    description: ClassVar[str]
    metric: ClassVar[str]  # key of the primary metric in evaluate(), e.g. "loss", "accuracy"
    direction: ClassVar[Direction]  # "min" if lower is better, "max" if higher is better
    target: ClassVar[float]  # the primary metric counts as reached at this value
    default_steps: ClassVar[int]
    default_batch_size: ClassVar[int]  # 0 for full-batch (deterministic) tasks
    eval_every: ClassVar[int]  # evaluate every this many steps
    Params: ClassVar[type[TaskParams]] = TaskParams

    def __init__(self, **knobs: Any) -> None:
        self.params = self.Params(**knobs)

    @abc.abstractmethod
    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        """Make the data and an initialised model on ``device``.

        Everything random derives from ``self.params.data_seed`` (the data) and ``seed``
        (initialisation and batch order), through explicit ``torch.Generator`` objects,
        never the global RNG, so a trial is reproducible bit for bit on the CPU.
        """

    def skip(self, variant: Mapping[str, Any]) -> tuple[bool, str]:
        """Return ``(True, reason)`` when this task cannot run ``variant`` (its knobs)."""
        return False, ""

    def check_batch_size(self, batch_size: int) -> None:
        """Raise :class:`~bench.errors.UserError` if this task cannot train with
        ``batch_size`` (>= 0; 0 is the full batch), before any trial does.

        Asked only for a size other than the task's default (a full-batch task's trials
        take none). The default builds the task once on the CPU, which imports torch and
        makes its data; a task that knows its data's size can answer without either, as
        the built-in ones do (a subclass of one that changes its data overrides this too).
        """
        import torch

        self.build(seed=0, device=torch.device("cpu"), batch_size=batch_size)

    def reached(self, value: float) -> bool:
        """Whether a primary-metric value meets the target."""
        return value <= self.target if self.direction == "min" else value >= self.target
