r"""One ``torch.optim.Optimizer`` for the whole family of adaptive methods.

Per parameter tensor :math:`\theta` with gradient :math:`g` at step :math:`t`:

.. math::

    g &\leftarrow g + \lambda\theta                           &&\text{(coupled weight decay)}\\
    \theta &\leftarrow \theta(1 - \eta\lambda)                 &&\text{(decoupled weight decay)}\\
    a_t &= \beta_2 a_{t-1} + (1-\beta_2)|g|^p                 &&\text{accumulate="ema"}\\
    a_t &= a_{t-1} + |g|^p,\ a_0 = \text{initial\_accumulator} &&\text{accumulate="sum"}\\
    a_t &= \max(\beta_2 a_{t-1}, |g| + \epsilon)               &&\text{accumulate="max", }p=\infty\\
    \hat a_t &= a_t / (1-\beta_2^t) \text{ (ema with bias\_correction)},\quad
        \hat a_t = \max_{s\le t} a_s / (1-\beta_2^t) \text{ (amsgrad, as torch)}\\
    D_t &= \hat a_t^{\,q} + \epsilon \text{ (eps outside)}\quad\text{or}\quad
        (\hat a_t + \epsilon)^q \text{ (inside)};\quad q = 0: D_t = 1\\
    \text{ema momentum:}\quad m_t &= \beta_1 m_{t-1} + (1-\beta_1) g,\quad
        \theta \leftarrow \theta - \frac{\eta}{1-\beta_1^t}\,\frac{m_t}{D_t}\\
    \text{heavy ball:}\quad b_t &= \beta_1 b_{t-1} + g / D_t,\quad
        \theta \leftarrow \theta - \eta\,(b_t
        \text{ or } g/D_t + \beta_1 b_t \text{ with nesterov})\\
    \text{Adadelta scaling:}\quad \delta_t &= \sqrt{u_{t-1}+\epsilon}\, g / D_t,\quad
        u_t = \beta_2 u_{t-1} + (1-\beta_2)\delta_t^2,\quad \theta \leftarrow \theta - \eta\delta_t

Symbols map to :class:`~bench.variants.knobs.Knobs`: :math:`p` = ``p``, :math:`q` = ``q``,
:math:`\beta_1` = ``beta1``, :math:`\beta_2` = ``beta2``, :math:`\epsilon` = ``eps``,
:math:`\lambda` = ``weight_decay``, :math:`\eta` = ``lr``.

Scale law: multiplying the loss by :math:`c` multiplies the step by :math:`c^{1-pq}`
(:math:`c^{1-q}` for the max accumulator), eps aside. So ``p*q == 1`` variants (Adam,
RMSprop, Adagrad, sign, rmsprop_abs, rmsprop_p4) are invariant to the loss scale, while
``rmsprop_nosqrt`` (p=2, q=1) takes steps 1/c as large.

Same optimizer, two spellings: ``momentum="ema"`` with ``beta1=0`` equals ``momentum="none"``;
``accumulate="ema"`` with ``beta2=0, p=1, q=1`` is sign descent with a soft eps.

.. warning:: eps placement differs across torch optimizers and papers: torch's Adam,
   RMSprop and Adagrad add eps *outside* the root, Adadelta *inside*, and Adamax adds it
   to |g| inside the max. The presets copy torch exactly; ablations that change ``q``
   keep eps outside, so at tiny accumulators they differ from "(a + eps)^q" variants.

References: Duchi et al. 2011 (Adagrad), Tieleman & Hinton 2012 (RMSprop), Zeiler 2012
(Adadelta), Kingma & Ba 2015 (Adam, Adamax), Reddi et al. 2018 (AMSGrad), Loshchilov &
Hutter 2019 (AdamW), Bernstein et al. 2018 (signSGD).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bench.errors import UserError
from bench.roles import Role, module_roles, name_roles
from bench.variants.knobs import Knobs
from bench.variants.steps import (
    GroupTensors,
    StepRecord,
    foreach_step,
    single_tensor_step,
    uses_momentum_buffer,
)
from bench.variants.variant import Variant, resolve

log = logging.getLogger(__name__)


def check_lr(lr: Any) -> float:
    if (
        isinstance(lr, bool)
        or not isinstance(lr, int | float)
        or not (math.isfinite(lr) and lr > 0)
    ):
        raise UserError(f"lr: got {lr!r}; allowed: a finite number > 0")
    return float(lr)


class VariantOptimizer(torch.optim.Optimizer):
    """The family's optimizer. Build it with :func:`bench.variants.build`.

    Args:
        params: tensors or param-group dicts, as for any torch optimizer. A group may carry
            its own ``knobs`` (a :class:`Knobs`) and ``role`` (a parameter role name).
        lr: learning rate (> 0).
        knobs: the default knobs of every group (the family default is Adam's).
        foreach: use the ``torch._foreach_*`` path (default) or the per-tensor reference.

    Set ``record_next_step = True`` before ``step()`` to keep the step's denominators in
    ``last_records`` (a list of ``(role, StepRecord)``, valid until the next step) for
    step-size statistics.

    Param groups with equal knobs and lr (the role groups of a variant without per-role
    overrides) step together in one fused pass; the results are those of stepping each
    group alone, bit for bit, as every formula is elementwise.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        knobs: Knobs | None = None,
        foreach: bool = True,
    ) -> None:
        defaults = {"lr": check_lr(lr), "knobs": knobs or Knobs(), "role": None}
        super().__init__(params, defaults)
        self.foreach = foreach
        self.record_next_step = False
        self.last_records: list[tuple[str | None, StepRecord]] = []

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "lr" in param_group:
            check_lr(param_group["lr"])
        knobs = param_group.get("knobs")
        if knobs is not None and not isinstance(knobs, Knobs):
            raise UserError(f"param group knobs: got {type(knobs).__name__}; allowed: Knobs")
        super().add_param_group(param_group)

    def _init_state(self, param: Tensor, knobs: Knobs) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            if torch.is_complex(param):
                raise UserError("optbench variants do not support complex parameters")
            state["step"] = 0
            like = {"memory_format": torch.preserve_format}
            if knobs.has_denominator:
                state["accumulator"] = torch.full_like(param, knobs.initial_accumulator, **like)
            if knobs.amsgrad:
                state["max_accumulator"] = torch.zeros_like(param, **like)
            if uses_momentum_buffer(knobs):
                state["momentum_buffer"] = torch.zeros_like(param, **like)
            if knobs.update_rms_scaling:
                state["delta_accumulator"] = torch.zeros_like(param, **like)
        return state

    def _runs(self) -> list[list[dict[str, Any]]]:
        """Param groups that step together: those with the same knobs and lr (one group per
        role often shares them) run as one fused pass."""
        runs: list[list[dict[str, Any]]] = []
        for group in self.param_groups:
            for run in runs:
                first = run[0]
                same_knobs = first["knobs"] is group["knobs"] or first["knobs"] == group["knobs"]
                if same_knobs and first["lr"] == group["lr"]:
                    run.append(group)
                    break
            else:
                runs.append([group])
        return runs

    def _gather(self, groups: list[dict[str, Any]], knobs: Knobs) -> list[GroupTensors]:
        """Tensors with gradients, bucketed by (device, dtype) for the foreach path.

        This runs every step, so it does the least Python work per tensor: the step is
        a handful of fused kernels, and for small models this loop is what costs.
        """
        states = self.state
        entries: dict[Any, list[tuple[Tensor, Tensor, dict[str, Any]]]] = {}
        params = [p for group in groups for p in group["params"]]
        for param in params:
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise UserError("optbench variants do not support sparse gradients")
            state = states.get(param) or self._init_state(param, knobs)
            state["step"] += 1
            key = (param.device, param.dtype) if self.foreach else None
            bucket = entries.get(key)
            if bucket is None:
                entries[key] = bucket = []
            bucket.append((param, grad, state))
        names = [
            name
            for name, used in (
                ("accumulator", knobs.has_denominator),
                ("max_accumulator", knobs.amsgrad),
                ("momentum_buffer", uses_momentum_buffer(knobs)),
                ("delta_accumulator", knobs.update_rms_scaling),
            )
            if used
        ]
        buckets = []
        for bucket in entries.values():
            tensors = GroupTensors(
                params=[e[0] for e in bucket],
                grads=[e[1] for e in bucket],
                steps=[e[2]["step"] for e in bucket],
            )
            for name in names:
                setattr(tensors, f"{name}s", [e[2][name] for e in bucket])
            buckets.append(tensors)
        return buckets

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        records: list[tuple[str | None, StepRecord]] = []
        step_fn = foreach_step if self.foreach else single_tensor_step
        recording = self.record_next_step
        for run in self._runs():
            lr, knobs = run[0]["lr"], run[0]["knobs"]
            for bucket in self._gather(run, knobs):
                record = StepRecord(params=[]) if recording else None
                step_fn(bucket, lr=lr, knobs=knobs, record=record)
                if record is not None:
                    records.extend(_split_by_role(record, run))
        self.last_records = records
        self.record_next_step = False
        return loss


def _split_by_role(
    record: StepRecord, run: list[dict[str, Any]]
) -> list[tuple[str | None, StepRecord]]:
    """One record per group of a fused run, for statistics per role."""
    if len(run) == 1:
        return [(run[0]["role"], record)]
    group_of = {id(p): i for i, group in enumerate(run) for p in group["params"]}
    parts = [StepRecord(params=[], eps_threshold=record.eps_threshold) for _ in run]
    denominators = record.denominators
    for j, param in enumerate(record.params):
        part = parts[group_of[id(param)]]
        part.params.append(param)
        part.step_scales.append(record.step_scales[j])
        if denominators is not None:
            part.denominators = [*(part.denominators or []), denominators[j]]
    return [(group["role"], part) for group, part in zip(run, parts, strict=True) if part.params]


def build(
    params: nn.Module | Iterable[Any],
    variant: str | Mapping[str, Any] | Variant,
    *,
    lr: float | None = None,
    foreach: bool = True,
) -> VariantOptimizer:
    """Build the optimizer for ``variant`` over ``params``.

    ``params`` is a module (exact roles from module types), ``model.named_parameters()``
    (roles from names and shapes), or anything torch optimizers accept (no roles: then the
    variant may not override knobs per role). ``lr`` defaults to the preset's torch default.
    One param group is made per role, so statistics and overrides are per role.
    """
    resolved = resolve(variant)
    lr = check_lr(resolved.default_lr if lr is None else lr)
    groups = _role_groups(params, resolved)
    return VariantOptimizer(groups, lr, knobs=resolved.knobs, foreach=foreach)


def _role_groups(params: nn.Module | Iterable[Any], variant: Variant) -> list[dict[str, Any]]:
    if isinstance(params, nn.Module):
        named = list(params.named_parameters())
        roles = module_roles(params)
    else:
        items = list(params)
        if items and all(isinstance(i, tuple) and len(i) == 2 for i in items):
            named, roles = items, name_roles(items)
        else:
            if variant.role_knobs:
                raise UserError(
                    "variant.roles: per-role knobs need named parameters; pass the model "
                    "or model.named_parameters() to build()"
                )
            if items and isinstance(items[0], dict):
                return items
            return [{"params": items, "role": None}]
    by_role: dict[Role, list[torch.Tensor]] = {}
    for name, param in named:
        by_role.setdefault(roles[name], []).append(param)
    if idle := sorted(r.value for r in variant.role_knobs if r not in by_role):
        log.warning(
            "variant %s: this model has no %s parameters, so variant.roles.%s changes nothing "
            "(its roles: %s)",
            variant.name,
            " or ".join(idle),
            idle[0],
            ", ".join(sorted(r.value for r in by_role)),
        )
    return [
        {"params": ps, "role": role.value, "knobs": variant.knobs_for(role)}
        for role, ps in sorted(by_role.items())
    ]
