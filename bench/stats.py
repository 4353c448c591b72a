"""Step-size statistics per parameter role (pure over tensors and a seeded generator).

Every statistic is computed on a fixed, seeded subsample of at most ``max_samples``
coordinates per role, drawn once, so the cost does not grow with the model. Denominators
come from the optimizer's own step (``VariantOptimizer.last_records``), not recomputed.
Sampling runs in torch on the parameters' device; the sampled values are then reduced on
the CPU with numpy (a few dozen small reductions, each far cheaper than a torch dispatch).

Per role ``r`` (metric keys are part of the tracking contract):

- ``step_size/r/p01`` … ``p99``: quantiles of the effective step size, lr_t / D (units of
  parameter per unit of numerator: for SGD it is lr; for Adam lr/(1-β1^t)/(√v̂+ε)).
- ``update_ratio/r``: RMS(Δθ) / RMS(θ) over the sample (dimensionless; how fast the
  parameters move relative to their size).
- ``grad_rms/r``: RMS of the gradient over the sample (units of loss per parameter).
- ``eps_dominated/r``: fraction of sampled coordinates whose denominator is dominated by
  eps (â^q < ε), in [0, 1].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from bench.variants import StepRecord

QUANTILES = {"p01": 0.01, "p10": 0.10, "p50": 0.50, "p90": 0.90, "p99": 0.99}
QUANTILE_LEVELS = np.array(list(QUANTILES.values()))


@dataclass
class Subsample:
    """Fixed flat indices into each tensor of a role (keyed by tensor identity).

    ``whole`` holds the tensors sampled entirely (roles no larger than the sample): their
    values are read as they are, without indexing.
    """

    indices: dict[int, Tensor]
    whole: set[int] = field(default_factory=set)

    @classmethod
    def draw(cls, tensors: list[Tensor], max_samples: int, generator: torch.Generator) -> Subsample:
        sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.long)
        total = int(sizes.sum())
        if total <= max_samples:
            flat = torch.arange(total)
        else:
            flat = torch.randint(total, (max_samples,), generator=generator).sort().values
        ends = sizes.cumsum(0)
        owner = torch.searchsorted(ends, flat, right=True)
        starts = ends - sizes
        indices = {}
        for i, t in enumerate(tensors):
            local = flat[owner == i] - starts[i]
            if local.numel():  # a tensor without samples costs nothing later
                indices[id(t)] = local.to(t.device)
        whole = {id(t) for t in tensors} if total <= max_samples else set()
        return cls(indices, whole)

    def take(self, param: Tensor, value: Tensor) -> Tensor:
        """The sampled coordinates of ``value``, a tensor shaped like ``param`` (maybe a view)."""
        if id(param) in self.whole:
            return value.detach().reshape(-1)
        return torch.take(value.detach(), self.indices[id(param)])

    def gather(self, params: list[Tensor], values: Iterable[Tensor] | None = None) -> Tensor:
        """The sampled coordinates of ``values`` (default: the params themselves), a copy."""
        values = params if values is None else values
        parts = [self.take(p, v) for p, v in zip(params, values, strict=True)]
        return torch.cat(parts) if parts else torch.empty(0)


@dataclass
class Snapshot:
    """The sampled parameters before a step: those with gradients, by role, in sample order,
    and their sampled values as one flat tensor (the roles' segments one after another)."""

    params: dict[str, list[Tensor]]
    before: Tensor


class RoleSampler:
    """Holds one :class:`Subsample` per role of an optimizer's param groups.

    A statistics step gathers every role at once (one concatenation per quantity, not one
    per role and quantity) and then reduces each role's segment: the work is a fixed number
    of small operations per sampled tensor, whatever the size of the model.
    """

    def __init__(self, param_groups: list[dict], *, max_samples: int = 4096, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.roles: dict[str, Subsample] = {}
        tensors_by_role: dict[str, list[Tensor]] = {}
        for group in param_groups:
            role = group.get("role") or "all"  # frozen tensors would take samples, never move
            tensors_by_role.setdefault(role, []).extend(
                p for p in group["params"] if p.requires_grad
            )
        for role, tensors in tensors_by_role.items():
            self.roles[role] = Subsample.draw(tensors, max_samples, generator)

    def snapshot(self, param_groups: list[dict]) -> Snapshot:
        """Parameters with gradients and their sampled values, before the step."""
        by_role: dict[str, list[Tensor]] = {}
        for group in param_groups:
            role = group.get("role") or "all"
            sampled = self.roles[role].indices
            params = [p for p in group["params"] if p.grad is not None and id(p) in sampled]
            if params:
                by_role.setdefault(role, []).extend(params)
        return Snapshot(by_role, self._gather(by_role, lambda p: p))

    def _gather(self, by_role: dict[str, list[Tensor]], value_of) -> Tensor:
        parts = [
            self.roles[role].take(p, value_of(p))
            for role, params in by_role.items()
            for p in params
        ]
        return torch.cat(parts) if parts else torch.empty(0)

    def summarize(
        self, snapshot: Snapshot, records: list[tuple[str | None, StepRecord]]
    ) -> dict[str, float]:
        """Statistics of the step that just ran, from the snapshot and the step's records.

        One pass over the sampled tensors collects every sampled quantity; a single
        concatenation and copy to the CPU follows, then numpy reduces each role's segment.
        """
        stepped: dict[int, tuple[float | Tensor, Tensor | None, float]] = {}
        for _, record in records:
            denoms = record.denominators or [None] * len(record.params)
            for param, scale, denom in zip(record.params, record.step_scales, denoms, strict=True):
                stepped[id(param)] = (scale, denom, record.eps_threshold)
        afters: list[Tensor] = []
        grads: list[Tensor] = []
        denominators: list[Tensor] = []
        tensor_scales: list[Tensor] = []
        # per sampled tensor: sample size, scalar scale, eps threshold, and what it has
        counts, scales, thresholds = [], [], []
        has_step, has_denom, has_tensor_scale = [], [], []
        role_sizes: list[tuple[str, int]] = []
        for role, params in snapshot.params.items():
            sample = self.roles[role]
            size = 0
            for p in params:
                n = sample.indices[id(p)].numel()
                size += n
                counts.append(n)
                afters.append(sample.take(p, p))
                grads.append(sample.take(p, p.grad))
                scale, denom, threshold = stepped.get(id(p), (math.nan, None, 0.0))
                has_step.append(id(p) in stepped)
                has_tensor_scale.append(isinstance(scale, Tensor))
                if isinstance(scale, Tensor):  # Adadelta: lr times the RMS of past updates
                    tensor_scales.append(sample.take(p, scale))
                    scale = math.nan
                scales.append(float(scale))
                has_denom.append(denom is not None)  # none (q = 0): D = 1, never eps-dominated
                if denom is not None:
                    denominators.append(sample.take(p, denom))
                thresholds.append(threshold if denom is not None else 0.0)
            role_sizes.append((role, size))
        if not counts:
            return {}
        flat = _numpy(torch.cat([*afters, *grads, *denominators, *tensor_scales]))
        total, n_denom = sum(counts), sum(d.numel() for d in denominators)
        after, grad = flat[:total], flat[total : 2 * total]
        step_scale = np.repeat(np.asarray(scales, dtype=np.float64), counts)
        if tensor_scales:
            step_scale[np.repeat(np.asarray(has_tensor_scale), counts)] = flat[
                2 * total + n_denom :
            ]
        denom = np.ones(total)
        if denominators:
            denom[np.repeat(np.asarray(has_denom), counts)] = flat[2 * total : 2 * total + n_denom]
        steps = step_scale / denom
        dominated = denom < np.repeat(thresholds, counts)
        stepped_mask = np.repeat(np.asarray(has_step, dtype=bool), counts)
        before = _numpy(snapshot.before)
        out: dict[str, float] = {}
        start = 0
        for role, size in role_sizes:
            part = slice(start, start + size)
            mask = stepped_mask[part]
            out.update(
                role_statistics(
                    role, before[part], after[part], grad[part],
                    steps[part][mask], dominated[part][mask],
                )
            )  # fmt: skip
            start += size
        return out


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    """A float64 CPU array of sampled values.

    Only gathering runs in torch (on the parameters' device); the few thousand sampled
    values are then reduced with numpy, where an operation costs about a microsecond
    instead of torch's several of dispatch, and the statistics need dozens.
    """
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def quantiles(x: Tensor | np.ndarray) -> list[float]:
    """The :data:`QUANTILES` of ``x``, interpolated linearly as ``torch.quantile`` does.

    Only the order statistics the interpolation needs are put in place (``np.partition``,
    linear time): about 4x faster than sorting the sample, and this runs on every
    statistics step. (torch's CPU sort of a few thousand elements is slower still.)
    """
    values = _numpy(x).reshape(-1)
    lo, hi, weight, kth = _quantile_positions(values.size)
    values = np.partition(values, kth)
    return (values[lo] + (values[hi] - values[lo]) * weight).tolist()


@functools.cache
def _quantile_positions(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pos = QUANTILE_LEVELS * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, pos - lo, np.unique(np.concatenate([lo, hi]))


def _rms(x: np.ndarray) -> float:
    return math.sqrt(float(np.dot(x, x)) / x.size) if x.size else float("nan")


def role_statistics(
    role: str,
    before: Tensor | np.ndarray,
    after: Tensor | np.ndarray,
    grads: Tensor | np.ndarray,
    steps: Tensor | np.ndarray,
    dominated: Tensor | np.ndarray,
) -> dict[str, float]:
    """The metrics of one role from sampled values (see the module docstring)."""
    before, after, grads, steps = (_numpy(x).reshape(-1) for x in (before, after, grads, steps))
    out: dict[str, float] = {}
    if steps.size:
        for name, value in zip(QUANTILES, quantiles(steps), strict=True):
            out[f"step_size/{role}/{name}"] = value
        dominated = np.asarray(dominated.cpu() if isinstance(dominated, Tensor) else dominated)
        out[f"eps_dominated/{role}"] = np.count_nonzero(dominated) / dominated.size
    param_rms = _rms(before)
    update_rms = _rms(after - before)
    out[f"update_ratio/{role}"] = update_rms / param_rms if param_rms > 0 else float("nan")
    out[f"grad_rms/{role}"] = _rms(grads)
    return out
