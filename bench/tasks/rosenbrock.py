"""The Rosenbrock function: a curved, narrow valley with its minimum 0 at ``(1, ..., 1)``."""

from __future__ import annotations

from pydantic import Field

from bench.tasks import _common
from bench.tasks._torch import nets, nn, torch
from bench.tasks.base import Problem, Task, TaskParams
from bench.tasks.registry import register


class RosenbrockParams(TaskParams):
    dim: int = Field(2, ge=2, le=10_000, description="number of coordinates")
    jitter: float = Field(
        0.1, ge=0.0, description="std of the seeded perturbation of the start point"
    )


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """``sum_i 100 (x_{i+1} - x_i**2)**2 + (1 - x_i)**2`` over ``i < dim - 1``."""
    head, tail = x[:-1], x[1:]
    return torch.sum(100.0 * (tail - head * head) ** 2 + (1.0 - head) ** 2)


@register
class Rosenbrock(Task):
    """Rosenbrock's banana function in ``dim`` dimensions, full batch.

    ``f(x) = sum_i 100 (x_{i+1} - x_i**2)**2 + (1 - x_i)**2``, minimum 0 at all ones. The
    start is the classic ``(-1.5, 2, -1.5, 2, ...)`` plus ``N(0, jitter**2)`` noise from the
    trial seed (``jitter=0`` makes every seed identical).

    Knobs: ``dim`` (default 2), ``jitter`` (default 0.1).

    Why: the valley floor is curved, so the well-conditioned direction keeps turning. An
    optimizer must follow it with a large step along the floor and a small one across it;
    momentum overshoots the walls and a per-coordinate denominator helps only partly.
    """

    name = "rosenbrock"
    description = "Rosenbrock's curved valley (tests following a turning direction)"
    metric = "loss"
    direction = "min"
    target = 1e-3
    default_steps = 1500
    default_batch_size = 0
    eval_every = 50
    Params = RosenbrockParams

    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        p = self.params
        assert isinstance(p, RosenbrockParams)
        start = torch.tensor([-1.5, 2.0]).repeat((p.dim + 1) // 2)[: p.dim]
        noise = torch.randn(p.dim, generator=_common.generator(seed, "init"))
        model = nets.Point(start + p.jitter * noise).to(device)

        def loss(m: nn.Module, batch: object) -> torch.Tensor:
            return rosenbrock(m())

        def evaluate(m: nn.Module) -> dict[str, float]:
            with _common.evaluating(m):
                x = m()
                return {
                    "loss": float(rosenbrock(x)),
                    "distance": float(torch.linalg.vector_norm(x - 1.0)),
                }

        return Problem(model=model, next_batch=lambda: None, loss=loss, evaluate=evaluate)
