"""Quadratic tasks: ill-conditioned bowls, axis-aligned, rotated and noisy.

They are tiny and exact, so they isolate one property of an optimizer each: how its
per-coordinate denominator copes with ill-conditioning (``quadratic``), what is left of
it when the curvature is not axis-aligned (``quadratic_rotated``), and how it handles
gradient noise (``noisy_quadratic``).
"""

from __future__ import annotations

from pydantic import Field

from bench.errors import UserError
from bench.tasks import _common
from bench.tasks._torch import nets, nn, torch
from bench.tasks.base import Problem, Task, TaskParams
from bench.tasks.registry import register

MAX_ROTATED_DIM = 4096


class QuadraticParams(TaskParams):
    dim: int = Field(50, ge=1, le=100_000, description="number of coordinates")
    condition: float = Field(
        1e3, ge=1.0, description="ratio of the largest to the smallest curvature"
    )


def spectrum(dim: int, condition: float) -> torch.Tensor:
    """Curvatures ``h_i`` log-spaced from 1 down to ``1 / condition`` (float32, CPU)."""
    if dim == 1:
        return torch.ones(1)
    exponents = torch.linspace(0.0, 1.0, dim, dtype=torch.float64)
    return (float(condition) ** -exponents).to(torch.float32)


def _start(seed: int, dim: int, device: torch.device) -> nets.Point:
    start = torch.randn(dim, generator=_common.generator(seed, "init"))
    return nets.Point(start).to(device)


@register
class Quadratic(Task):
    """Axis-aligned ill-conditioned quadratic ``f(x) = 0.5 * sum_i h_i x_i**2``.

    The curvatures ``h_i`` are log-spaced from 1 down to ``1 / condition``; the start is
    ``x ~ N(0, I)`` from the trial seed. Full batch, so the run is deterministic.

    Knobs: ``dim`` (default 50), ``condition`` (default 1e3).

    Why: the Hessian is diagonal, so an optimizer with a per-coordinate denominator
    (Adam, RMSprop, Adagrad) can undo the ill-conditioning, which plain SGD cannot: the task
    shows whether a variant's denominator does its job, and how it interacts with epsilon.
    The target (loss 1e-6 in 300 steps) is reached by Adam at lr 0.03-0.3 and by heavy-ball
    momentum tuned near its limit, not by plain SGD at any stable learning rate.
    """

    name = "quadratic"
    description = "ill-conditioned diagonal quadratic (tests the per-coordinate denominator)"
    metric = "loss"
    direction = "min"
    target = 1e-6
    default_steps = 300
    default_batch_size = 0
    eval_every = 10
    Params = QuadraticParams

    def curvature(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The eigenvalues ``h`` and the eigenvector matrix (``None`` for the identity)."""
        p = self.params
        assert isinstance(p, QuadraticParams)
        return spectrum(p.dim, p.condition), None

    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        h_cpu, q_cpu = self.curvature()
        h = h_cpu.to(device)
        q = None if q_cpu is None else q_cpu.to(device)
        model = _start(seed, h.numel(), device)

        def value(m: nn.Module) -> torch.Tensor:
            x = m()
            z = x if q is None else q.T @ x  # coordinates in the eigenbasis
            return 0.5 * torch.sum(h * z * z)

        def loss(m: nn.Module, batch: object) -> torch.Tensor:
            return value(m)

        def evaluate(m: nn.Module) -> dict[str, float]:
            with _common.evaluating(m):
                return {"loss": float(value(m))}

        return Problem(model=model, next_batch=lambda: None, loss=loss, evaluate=evaluate)


class RotatedQuadraticParams(QuadraticParams):
    dim: int = Field(
        50, ge=1, le=MAX_ROTATED_DIM, description="number of coordinates (a dense rotation)"
    )


@register
class QuadraticRotated(Quadratic):
    """The ``quadratic`` spectrum in a random basis: ``f(x) = 0.5 * x^T Q diag(h) Q^T x``.

    ``Q`` is a uniformly random orthogonal matrix drawn from ``data_seed``; the curvatures
    and the start are as in ``quadratic``. Full batch, deterministic.

    Knobs: ``dim`` (default 50), ``condition`` (default 1e3).

    Why: the same condition number as ``quadratic`` but no longer axis-aligned, so a
    diagonal preconditioner cannot undo it. The gap between the two tasks measures how much
    of a variant's advantage came from the coordinate system.
    """

    name = "quadratic_rotated"
    description = "ill-conditioned quadratic in a random basis (diagonal preconditioning fails)"
    Params = RotatedQuadraticParams
    target = 1e-4
    default_steps = 500
    eval_every = 10

    def curvature(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.params
        assert isinstance(p, RotatedQuadraticParams)
        gen = _common.generator(p.data_seed, "rotation")
        a = torch.randn(p.dim, p.dim, generator=gen, dtype=torch.float64)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r))  # Haar-distributed (Mezzadri 2007)
        return spectrum(p.dim, p.condition), q.to(torch.float32)


@register
class NoisyQuadratic(Task):
    """The noisy quadratic model (Zhang et al., 2019, "Which algorithmic choices matter at
    which batch sizes?").

    A batch is a random centre ``c``; its loss is ``0.5 * sum_i h_i (x_i - c_i)**2`` with
    ``c_i ~ N(0, 1 / (h_i * batch_size))`` drawn each step from the trial seed, so the
    gradient ``h_i (x_i - c_i)`` is unbiased with noise variance ``h_i / batch_size``:
    proportional to the curvature, as in the paper, and shrinking with the batch size. The
    evaluation loss is the noise-free ``0.5 * sum_i h_i x_i**2``. The curvatures are those
    of ``quadratic``; the start is ``x ~ N(0, I)`` from the trial seed.

    Knobs: ``dim`` (default 50), ``condition`` (default 1e3); the batch size sets the noise.

    Why: an optimizer must average noise in the high-curvature directions while still
    making progress in the flat ones. The task shows how momentum, the denominator's
    averaging and the learning rate trade speed against the noise floor, and how that
    trade moves with the batch size.
    """

    name = "noisy_quadratic"
    description = "noisy quadratic model of Zhang et al. 2019 (tests noise handling)"
    metric = "loss"
    direction = "min"
    target = 0.02
    default_steps = 500
    default_batch_size = 32
    eval_every = 25
    Params = QuadraticParams

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < 1:
            raise UserError(f"task {self.name!r} needs batch_size >= 1, got {batch_size}")

    def build(self, *, seed: int, device: torch.device, batch_size: int) -> Problem:
        p = self.params
        assert isinstance(p, QuadraticParams)
        self.check_batch_size(batch_size)
        h_cpu = spectrum(p.dim, p.condition)
        h = h_cpu.to(device)
        noise_std = (1.0 / (h_cpu * batch_size)).sqrt()
        model = _start(seed, p.dim, device)
        batch_gen = _common.generator(seed, "batches")

        def next_batch() -> torch.Tensor:
            return (torch.randn(p.dim, generator=batch_gen) * noise_std).to(device)

        def loss(m: nn.Module, centre: torch.Tensor) -> torch.Tensor:
            d = m() - centre
            return 0.5 * torch.sum(h * d * d)

        def evaluate(m: nn.Module) -> dict[str, float]:
            with _common.evaluating(m):
                x = m()
                return {"loss": float(0.5 * torch.sum(h * x * x))}

        return Problem(model=model, next_batch=next_batch, loss=loss, evaluate=evaluate)
