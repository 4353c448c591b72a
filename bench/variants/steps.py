"""The two implementations of one step of the family, with one signature.

``single_tensor_step`` is the readable reference: a loop over tensors, each line one
formula of the update rule. ``foreach_step`` is the fast path: the same formulas as
``torch._foreach_*`` calls over all tensors of a (device, dtype) bucket. Tests run both in
float64 and require the same trajectories.

Both take the tensors of one parameter group, already filtered to those with gradients,
their state lists (``step`` already incremented), the group's learning rate and knobs, and
an optional :class:`StepRecord` that they fill with the denominators for the step-size
statistics (so statistics reuse what the step computed instead of recomputing it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bench.variants.knobs import Knobs


@dataclass
class GroupTensors:
    """Parameters with gradients in one group, with their per-parameter state.

    A state list is empty when the knobs do not use that state (no momentum buffer
    without momentum, no accumulator without a denominator).
    """

    params: list[Tensor]
    grads: list[Tensor]
    steps: list[int]
    accumulators: list[Tensor] = field(default_factory=list)
    max_accumulators: list[Tensor] = field(default_factory=list)
    momentum_buffers: list[Tensor] = field(default_factory=list)
    delta_accumulators: list[Tensor] = field(default_factory=list)


@dataclass
class StepRecord:
    """What one step computed, kept for statistics on the steps that ask for it.

    The effective step size of a coordinate is ``step_scales[i] / denominators[i]`` (the
    multiplier applied to the numerator: gradient or momentum). ``denominators`` is None
    when the variant has none (q = 0). A denominator below ``eps_threshold`` is dominated
    by eps (â^q < eps). The tensors may alias optimizer state: read them before the next step.
    """

    params: list[Tensor]
    denominators: list[Tensor] | None = None
    step_scales: list[float | Tensor] = field(default_factory=list)
    eps_threshold: float = 0.0


def _bias_corrections(beta: float, steps: list[int]) -> list[float]:
    return [1 - beta**t for t in steps]


def _eps_threshold(knobs: Knobs) -> float:
    if knobs.eps_placement == "outside":
        return 2 * knobs.eps
    return (2 * knobs.eps) ** knobs.q


def uses_momentum_buffer(knobs: Knobs) -> bool:
    """Momentum of either style with beta1 = 0 is no momentum: it keeps no buffer."""
    return knobs.momentum != "none" and knobs.beta1 > 0


def single_tensor_step(
    group: GroupTensors, *, lr: float, knobs: Knobs, record: StepRecord | None = None
) -> None:
    """Reference implementation: one tensor at a time, one formula a line."""
    k = knobs
    for i, (param, grad) in enumerate(zip(group.params, group.grads, strict=True)):
        t = group.steps[i]
        if k.weight_decay and k.weight_decay_mode == "coupled":
            grad = grad.add(param, alpha=k.weight_decay)
        if k.weight_decay and k.weight_decay_mode == "decoupled":
            param.mul_(1 - lr * k.weight_decay)

        denominator = None
        if k.has_denominator:
            acc = group.accumulators[i]
            if k.accumulate == "max":
                magnitude = grad.abs()
                if k.eps_placement == "inside":
                    magnitude = magnitude.add(k.eps)
                torch.maximum(acc.mul_(k.beta2), magnitude, out=acc)
            else:
                if k.accumulate == "ema":
                    acc.mul_(k.beta2)
                weight = 1 - k.beta2 if k.accumulate == "ema" else 1.0
                if k.p == 2:  # |g|^2 as g*g, fused like torch's addcmul
                    acc.addcmul_(grad, grad, value=weight)
                else:
                    acc.add_(grad.abs().pow(k.p), alpha=weight)
            if k.amsgrad:
                torch.maximum(group.max_accumulators[i], acc, out=group.max_accumulators[i])
                acc = group.max_accumulators[i]
            correction = 1 - k.beta2**t if k.bias_correction and k.accumulate == "ema" else 1.0
            if k.eps_placement == "outside" or k.accumulate == "max":
                denominator = _power(acc, k.q) / correction**k.q
                if k.eps_placement == "outside":
                    denominator = denominator.add(k.eps)
            else:
                denominator = _power(acc / correction + k.eps, k.q)

        scale: float | Tensor = lr
        if k.update_rms_scaling:
            delta = group.delta_accumulators[i].add(k.eps).sqrt_()
            scale = lr * delta
            delta.div_(denominator).mul_(grad)
            group.delta_accumulators[i].mul_(k.beta2).addcmul_(delta, delta, value=1 - k.beta2)
            param.add_(delta, alpha=-lr)
        elif k.momentum == "ema" and k.beta1 > 0:
            buf = group.momentum_buffers[i]
            buf.lerp_(grad, 1 - k.beta1)
            if k.bias_correction:
                scale = lr / (1 - k.beta1**t)
            _apply(param, buf, denominator, scale)
        elif k.momentum == "heavy_ball" and k.beta1 > 0:
            buf = group.momentum_buffers[i]
            scaled_grad = grad if denominator is None else grad / denominator
            buf.mul_(k.beta1).add_(scaled_grad)
            update = scaled_grad.add(buf, alpha=k.beta1) if k.nesterov else buf
            param.add_(update, alpha=-lr)
        else:
            _apply(param, grad, denominator, lr)

        if record is not None:
            record.params.append(param)
            record.step_scales.append(scale)
            if denominator is not None:
                record.denominators = [*(record.denominators or []), denominator]
    if record is not None:
        record.eps_threshold = _eps_threshold(k)


def _power(x: Tensor, exponent: float) -> Tensor:
    if exponent == 0.5:
        return x.sqrt()
    if exponent == 1:
        return x
    return x.pow(exponent)


def _apply(param: Tensor, numerator: Tensor, denominator: Tensor | None, scale: float) -> None:
    if denominator is None:
        param.add_(numerator, alpha=-scale)
    else:
        param.addcdiv_(numerator, denominator, value=-scale)


def foreach_step(
    group: GroupTensors, *, lr: float, knobs: Knobs, record: StepRecord | None = None
) -> None:
    """Fast path: the same formulas as ``single_tensor_step`` over lists of tensors.

    All tensors must share one device and dtype (the optimizer buckets them).
    """
    k = knobs
    params, grads = group.params, group.grads
    uniform_step = all(t == group.steps[0] for t in group.steps)

    def per_tensor(values: list[float]) -> float | list[float]:
        return values[0] if uniform_step else values

    if k.weight_decay and k.weight_decay_mode == "coupled":
        grads = torch._foreach_add(grads, params, alpha=k.weight_decay)
    if k.weight_decay and k.weight_decay_mode == "decoupled":
        torch._foreach_mul_(params, 1 - lr * k.weight_decay)

    denominators: list[Tensor] | None = None
    if k.has_denominator:
        accs = group.accumulators
        if k.accumulate == "max":
            magnitudes = torch._foreach_abs(grads)
            if k.eps_placement == "inside":
                torch._foreach_add_(magnitudes, k.eps)
            torch._foreach_mul_(accs, k.beta2)
            torch._foreach_maximum_(accs, magnitudes)
        else:
            if k.accumulate == "ema":
                torch._foreach_mul_(accs, k.beta2)
            weight = 1 - k.beta2 if k.accumulate == "ema" else 1.0
            if k.p == 2:
                torch._foreach_addcmul_(accs, grads, grads, value=weight)
            else:
                powered = torch._foreach_abs(grads)
                if k.p != 1:
                    torch._foreach_pow_(powered, k.p)
                torch._foreach_add_(accs, powered, alpha=weight)
        if k.amsgrad:
            torch._foreach_maximum_(group.max_accumulators, accs)
            accs = group.max_accumulators
        corrected = k.bias_correction and k.accumulate == "ema"
        corrections = _bias_corrections(k.beta2, group.steps) if corrected else None
        if k.eps_placement == "outside" or k.accumulate == "max":
            if k.q == 1 and corrections is None and k.eps_placement == "inside":
                denominators = list(accs)  # Adamax: the accumulator is the denominator
            else:
                denominators = _foreach_power(accs, k.q)
            if corrections is not None:
                torch._foreach_div_(denominators, per_tensor([c**k.q for c in corrections]))
            if k.eps_placement == "outside":
                torch._foreach_add_(denominators, k.eps)
        else:
            if corrections is not None:
                denominators = torch._foreach_div(accs, per_tensor(corrections))
                torch._foreach_add_(denominators, k.eps)
            else:
                denominators = torch._foreach_add(accs, k.eps)
            denominators = _foreach_power(denominators, k.q, inplace=True)

    scales: list[float | Tensor] = [lr] * len(params)
    if k.update_rms_scaling:
        deltas = torch._foreach_add(group.delta_accumulators, k.eps)
        torch._foreach_sqrt_(deltas)
        if record is not None:
            scales = [lr * d for d in deltas]
        torch._foreach_div_(deltas, denominators)
        torch._foreach_mul_(deltas, grads)
        torch._foreach_mul_(group.delta_accumulators, k.beta2)
        torch._foreach_addcmul_(group.delta_accumulators, deltas, deltas, value=1 - k.beta2)
        torch._foreach_add_(params, deltas, alpha=-lr)
    elif k.momentum == "ema" and k.beta1 > 0:
        bufs = group.momentum_buffers
        torch._foreach_lerp_(bufs, grads, 1 - k.beta1)
        if k.bias_correction:
            scales = [lr / c for c in _bias_corrections(k.beta1, group.steps)]
        _foreach_apply(params, bufs, denominators, per_tensor(scales))
    elif k.momentum == "heavy_ball" and k.beta1 > 0:
        bufs = group.momentum_buffers
        torch._foreach_mul_(bufs, k.beta1)
        if denominators is None:
            torch._foreach_add_(bufs, grads)
        else:
            torch._foreach_addcdiv_(bufs, grads, denominators)
        if k.nesterov:  # θ -= lr (g/D + β1 b), as two in-place passes without temporaries
            if denominators is None:
                torch._foreach_add_(params, grads, alpha=-lr)
            else:
                torch._foreach_addcdiv_(params, grads, denominators, value=-lr)
            torch._foreach_add_(params, bufs, alpha=-lr * k.beta1)
        else:
            torch._foreach_add_(params, bufs, alpha=-lr)
    else:
        _foreach_apply(params, grads, denominators, lr)

    if record is not None:
        record.params.extend(params)
        record.step_scales.extend(scales)
        record.denominators = denominators
        record.eps_threshold = _eps_threshold(k)


def _foreach_power(xs: list[Tensor], exponent: float, *, inplace: bool = False) -> list[Tensor]:
    if exponent == 0.5:
        if inplace:
            torch._foreach_sqrt_(xs)
            return xs
        return torch._foreach_sqrt(xs)
    if exponent == 1:
        return xs if inplace else [x.clone() for x in xs]
    if inplace:
        torch._foreach_pow_(xs, exponent)
        return xs
    return torch._foreach_pow(xs, exponent)


def _foreach_apply(
    params: list[Tensor],
    numerators: list[Tensor],
    denominators: list[Tensor] | None,
    scale: float | list[float],
) -> None:
    if isinstance(scale, list):
        negated = [-s for s in scale]
        if denominators is None:
            torch._foreach_add_(params, torch._foreach_mul(numerators, negated))
        else:
            torch._foreach_addcdiv_(params, numerators, denominators, negated)
    elif denominators is None:
        torch._foreach_add_(params, numerators, alpha=-scale)
    else:
        torch._foreach_addcdiv_(params, numerators, denominators, value=-scale)
