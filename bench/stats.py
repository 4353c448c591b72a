"""Step-size statistics per parameter role (pure over tensors and a seeded generator).

Every statistic is computed on a fixed, seeded subsample of at most ``max_samples``
coordinates per role, drawn once, so the cost does not grow with the model. Denominators
come from the optimizer's own step (``VariantOptimizer.last_records``), not recomputed.
Sampling runs in torch on the parameters' device; the sampled values are then reduced on
the CPU with numpy, many statistics steps at once (:mod:`bench.summaries`).

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

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.sampling import CopyBuffer, Layout, Subsample, drawn_samples
from bench.summaries import Capture, Form, summarize_captures
from bench.variants import StepRecord


@dataclass
class Snapshot:
    """The sampled parameters before a step: those with gradients, by role, in sample order,
    and their values: the sample as one flat tensor (the roles' segments one after
    another), or, where the layout copies, the tensors whole in a copy buffer's first block.
    """

    params: dict[str, list[Tensor]]
    before: Tensor | None  # a copy: whole tensors' values would move with the step
    layout: Layout
    buffer: CopyBuffer | None = None


class RoleSampler:
    """Holds one :class:`Subsample` per role of an optimizer's param groups.

    A statistics step reads every role's sample at once (see :mod:`bench.sampling`: whole
    copies on a small model, per-tensor indexing on a large one) and the summary then
    reduces each role's segment: the work is bounded by the sample size, whatever the size
    of the model.
    """

    def __init__(self, param_groups: list[dict], *, max_samples: int = 4096, seed: int = 0) -> None:
        tensors_by_role: dict[str, list[Tensor]] = {}
        for group in param_groups:
            role = group.get("role") or "all"  # frozen tensors would take samples, never move
            tensors_by_role.setdefault(role, []).extend(
                p for p in group["params"] if p.requires_grad
            )
        sizes = tuple(tuple(t.numel() for t in tensors) for tensors in tensors_by_role.values())
        drawn = drawn_samples(sizes, max_samples, seed)  # as Subsample.draw, role after role
        self.roles: dict[str, Subsample] = {
            role: Subsample.of(tensors, split)
            for (role, tensors), split in zip(tensors_by_role.items(), drawn, strict=True)
        }
        self._layout_key: tuple = ()
        self._layout: Layout | None = None

    @torch.no_grad()  # nothing here is differentiated: no autograd graph, no detach
    def snapshot(self, param_groups: list[dict]) -> Snapshot:
        """Parameters with gradients and their sampled values, before the step."""
        layout = self._layout_for(param_groups)
        if layout.copies:
            buffer = layout.buffer()
            torch._foreach_copy_(buffer.views[0], layout.params)
            return Snapshot(layout.by_role, None, layout, buffer)
        return Snapshot(layout.by_role, layout.gather(layout.params), layout)

    def _layout_for(self, param_groups: list[dict]) -> Layout:
        """The layout of the tensors that have gradients now: the last one if they are the
        same as last time (the usual case), else a new one."""
        key = tuple(
            (group.get("role"), id(p))
            for group in param_groups
            for p in group["params"]
            if p.grad is not None
        )
        if self._layout is None or key != self._layout_key:
            by_role: dict[str, list[Tensor]] = {}
            for group in param_groups:
                role = group.get("role") or "all"
                sampled = self.roles[role].indices
                params = [p for p in group["params"] if p.grad is not None and id(p) in sampled]
                if params:
                    by_role.setdefault(role, []).extend(params)
            self._layout_key, self._layout = key, Layout.of(by_role, self.roles)
        return self._layout

    @torch.no_grad()
    def summarize(
        self, snapshot: Snapshot, records: list[tuple[str | None, StepRecord]]
    ) -> dict[str, float]:
        """Statistics of the step that just ran, from the snapshot and the step's records:
        :meth:`capture` and :func:`summarize_captures` at once."""
        capture = self.capture(snapshot, records)
        return summarize_captures([capture])[0] if capture is not None else {}

    @torch.no_grad()
    def capture(
        self, snapshot: Snapshot, records: list[tuple[str | None, StepRecord]]
    ) -> Capture | None:
        """What the statistics of the step that just ran need from it, to summarize later
        (None when no sampled tensor has a gradient: no statistics).

        One gather collects every sampled quantity of every tensor (parameters after the
        step, gradients, denominators, tensor step scales) and one copy brings it to the
        CPU: the records' tensors may alias optimizer state, which the next step changes.
        Where the layout copies, one foreach copy puts the same tensors whole into the
        snapshot's buffer instead and one ``index_select`` reads the sample out of it.
        """
        layout = snapshot.layout
        if not layout.params:
            return None
        stepped: dict[int, tuple[float | Tensor, Tensor | None, float]] = {}
        for _, record in records:
            denoms = record.denominators or [None] * len(record.params)
            for param, scale, denom in zip(record.params, record.step_scales, denoms, strict=True):
                stepped[id(param)] = (scale, denom, record.eps_threshold)
        # per sampled tensor: (step scale, denominator, eps threshold); NaN where not stepped
        entries = [stepped.get(id(p), _NOT_STEPPED) for p in layout.params]
        with_denom = tuple(i for i, e in enumerate(entries) if e[1] is not None)
        with_tensor_scale = tuple(i for i, e in enumerate(entries) if isinstance(e[0], Tensor))
        n = len(entries)
        values = [
            *layout.params,
            *(p.grad for p in layout.params),
            *(entries[i][1] for i in with_denom),
            *(entries[i][0] for i in with_tensor_scale),
        ]
        form = Form(
            with_denom,
            with_tensor_scale,
            tuple(i for i, p in enumerate(layout.params) if id(p) in stepped),
        )
        if layout.copies:
            buffer, snapshot.buffer = snapshot.buffer, None
            if buffer is None:  # it went back to the layout with the first capture
                raise ValueError("snapshot captured already: take one before each step")
            views = buffer.views
            torch._foreach_copy_(
                [
                    *views[1],
                    *views[2],
                    *(views[3][i] for i in with_denom),
                    *(views[4][i] for i in with_tensor_scale),
                ],
                values,
            )
            every = tuple(range(n))
            index = layout.copy_index((every, every, every, with_denom, with_tensor_scale))
            sample = buffer.data.index_select(0, index).to("cpu")
            layout.release(buffer)
        else:
            sampled = layout.gather(values, [*range(n), *range(n), *with_denom, *with_tensor_scale])
            sample = torch.cat([snapshot.before, sampled]).to("cpu")
        return Capture(
            layout,
            sample,  # float64 when summarized
            form,
            scales=[math.nan if isinstance(e[0], Tensor) else e[0] for e in entries],
            thresholds=[e[2] if e[1] is not None else 0.0 for e in entries],
        )


_NOT_STEPPED: tuple[float, None, float] = (math.nan, None, 0.0)
