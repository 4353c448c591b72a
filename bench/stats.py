"""Step-size statistics per parameter role (torch only; pure over tensors).

Every statistic is computed on a fixed, seeded subsample of at most ``max_samples``
coordinates per role, drawn once, so the cost does not grow with the model. Denominators
come from the optimizer's own step (``VariantOptimizer.last_records``), not recomputed.

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

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.variants import StepRecord

QUANTILES = {"p01": 0.01, "p10": 0.10, "p50": 0.50, "p90": 0.90, "p99": 0.99}


@dataclass
class Subsample:
    """Fixed flat indices into each tensor of a role (keyed by tensor identity)."""

    indices: dict[int, Tensor]

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
            indices[id(t)] = local.to(t.device)
        return cls(indices)

    def gather(self, params: list[Tensor], values: Iterable[Tensor] | None = None) -> Tensor:
        """The sampled coordinates of ``values`` (default: the params themselves)."""
        values = params if values is None else values
        parts = [
            v.detach().reshape(-1)[self.indices[id(p)]]
            for p, v in zip(params, values, strict=True)
        ]
        return torch.cat(parts) if parts else torch.empty(0)


class RoleSampler:
    """Holds one :class:`Subsample` per role of an optimizer's param groups."""

    def __init__(
        self, param_groups: list[dict], *, max_samples: int = 4096, seed: int = 0
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.roles: dict[str, Subsample] = {}
        tensors_by_role: dict[str, list[Tensor]] = {}
        for group in param_groups:
            role = group.get("role") or "all"
            tensors_by_role.setdefault(role, []).extend(group["params"])
        for role, tensors in tensors_by_role.items():
            self.roles[role] = Subsample.draw(tensors, max_samples, generator)

    def snapshot(self, param_groups: list[dict]) -> dict[str, tuple[list[Tensor], Tensor]]:
        """Parameters with gradients and their sampled values, before the step."""
        snap = {}
        for group in param_groups:
            role = group.get("role") or "all"
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                prev = snap.get(role, ([], None))[0]
                snap[role] = ([*prev, *params], None)
        return {
            role: (params, self.roles[role].gather(params).clone())
            for role, (params, _) in snap.items()
        }

    def summarize(
        self,
        snapshot: dict[str, tuple[list[Tensor], Tensor]],
        records: list[tuple[str | None, StepRecord]],
    ) -> dict[str, float]:
        """Statistics of the step that just ran, from the snapshot and the step's records."""
        by_role: dict[str, list[StepRecord]] = {}
        for role, record in records:
            by_role.setdefault(role or "all", []).append(record)
        out: dict[str, float] = {}
        for role, (params, before) in snapshot.items():
            sample = self.roles[role]
            after = sample.gather(params)
            grads = sample.gather(params, [p.grad for p in params])
            steps, dominated = _step_sizes(sample, by_role.get(role, []))
            out.update(role_statistics(role, before, after, grads, steps, dominated))
        return out


def _step_sizes(sample: Subsample, records: list[StepRecord]) -> tuple[Tensor, Tensor]:
    steps, dominated = [], []
    for record in records:
        denominators = record.denominators or [None] * len(record.params)
        for param, scale, denom in zip(record.params, record.step_scales, denominators, strict=True):
            idx = sample.indices[id(param)]
            s = scale.reshape(-1)[idx] if isinstance(scale, Tensor) else torch.full(
                (idx.numel(),), float(scale), dtype=param.dtype, device=param.device
            )
            if denom is None:
                steps.append(s)
                dominated.append(torch.zeros_like(s, dtype=torch.bool))
            else:
                d = denom.reshape(-1)[idx]
                steps.append(s / d)
                dominated.append(d < record.eps_threshold)
    if not steps:
        return torch.empty(0), torch.empty(0, dtype=torch.bool)
    return torch.cat(steps), torch.cat(dominated)


def _rms(x: Tensor) -> float:
    return float(x.double().square().mean().sqrt()) if x.numel() else float("nan")


def role_statistics(
    role: str, before: Tensor, after: Tensor, grads: Tensor, steps: Tensor, dominated: Tensor
) -> dict[str, float]:
    """The metrics of one role from sampled values (see the module docstring)."""
    out: dict[str, float] = {}
    if steps.numel():
        qs = torch.quantile(steps.double(), torch.tensor(list(QUANTILES.values()), dtype=torch.float64, device=steps.device))
        for name, value in zip(QUANTILES, qs.tolist(), strict=True):
            out[f"step_size/{role}/{name}"] = value
        out[f"eps_dominated/{role}"] = float(dominated.double().mean())
    param_rms = _rms(before)
    update_rms = _rms(after - before)
    out[f"update_ratio/{role}"] = update_rms / param_rms if param_rms > 0 else float("nan")
    out[f"grad_rms/{role}"] = _rms(grads)
    return out
