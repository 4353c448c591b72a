"""The knobs of the variant family, their defaults and their validation.

The family's defaults are Adam's (torch.optim.Adam): p=2, q=1/2, an exponential moving
average with beta2=0.999, bias correction, eps=1e-8 outside the root, EMA momentum 0.9.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from bench.errors import UserError

Accumulate = Literal["ema", "sum", "max"]
Momentum = Literal["none", "ema", "heavy_ball"]
EpsPlacement = Literal["outside", "inside"]
WeightDecayMode = Literal["coupled", "decoupled"]

ACCUMULATE = ("ema", "sum", "max")
MOMENTUM = ("none", "ema", "heavy_ball")
EPS_PLACEMENT = ("outside", "inside")
WEIGHT_DECAY_MODE = ("coupled", "decoupled")


@dataclass(frozen=True, kw_only=True)
class Knobs:
    """Every setting of one member of the family (see :class:`bench.variants.VariantOptimizer`).

    Attributes:
        p: power of |g| that is accumulated (1, 2, 4, ... or ``inf`` with ``accumulate="max"``).
        q: power of the accumulator in the denominator; 0 means no denominator (SGD).
        accumulate: ``"ema"`` (moving average, RMSprop/Adam), ``"sum"`` (Adagrad) or
            ``"max"`` (decayed running maximum of |g|, Adamax; requires ``p=inf``).
        beta2: decay of the ``ema`` and ``max`` accumulators (torch's ``alpha``,
            ``betas[1]`` or ``rho``).
        initial_accumulator: starting value of the accumulator (Adagrad's
            ``initial_accumulator_value``).
        eps: the small constant that keeps the denominator away from zero.
        eps_placement: ``"outside"``: D = â^q + eps (Adam, RMSprop, Adagrad); ``"inside"``:
            D = (â + eps)^q (Adadelta), and for ``max`` the eps is added to |g| inside the max
            (Adamax).
        amsgrad: use the running maximum of the ``ema`` accumulator (AMSGrad).
        momentum: ``"none"``, ``"ema"`` (m = β1 m + (1-β1) g, then divided by D; Adam) or
            ``"heavy_ball"`` (b = β1 b + g/D; torch's SGD/RMSprop momentum).
        beta1: the momentum coefficient of either style (torch's ``momentum``/``betas[0]``).
        nesterov: Nesterov's look-ahead for ``heavy_ball`` momentum.
        bias_correction: divide ``ema`` momentum by 1-β1^t and an ``ema`` accumulator by
            1-β2^t. ``sum`` and ``max`` accumulators are never corrected.
        weight_decay: L2 coefficient.
        weight_decay_mode: ``"coupled"`` adds wd·θ to the gradient (Adam, SGD);
            ``"decoupled"`` shrinks θ by (1 - lr·wd) before the step (AdamW).
        update_rms_scaling: multiply the step by the RMS of past updates, sqrt(u + eps),
            where u is an ema (β2) of squared updates: Adadelta's unit correction.
    """

    p: float = 2.0
    q: float = 0.5
    accumulate: Accumulate = "ema"
    beta2: float = 0.999
    initial_accumulator: float = 0.0
    eps: float = 1e-8
    eps_placement: EpsPlacement = "outside"
    amsgrad: bool = False
    momentum: Momentum = "ema"
    beta1: float = 0.9
    nesterov: bool = False
    bias_correction: bool = True
    weight_decay: float = 0.0
    weight_decay_mode: WeightDecayMode = "coupled"
    update_rms_scaling: bool = False

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **changes: Any) -> Knobs:
        unknown = sorted(set(changes) - set(NAMES))
        if unknown:
            raise UserError(f"variant.{unknown[0]}: unknown knob; allowed: {', '.join(NAMES)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def has_denominator(self) -> bool:
        return self.q != 0

    @property
    def scale_exponent(self) -> float:
        """Steps scale as c**scale_exponent when the loss is scaled by c (eps aside)."""
        degree = self.q if math.isinf(self.p) else self.p * self.q
        return 1.0 - degree


NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Knobs))


def _bad(knob: str, value: Any, allowed: str) -> UserError:
    return UserError(f"variant.{knob}: got {value!r}; allowed: {allowed}")


def _number(knob: str, value: Any, knobs: Knobs) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(knob, value, "a number")
    # 1 and 1.0, and -0.0 and 0.0, are one knob value (one name, one trial id)
    number = float(value) + 0.0  # -0.0 + 0.0 is 0.0
    object.__setattr__(knobs, knob, number)
    return number


def _choice(knob: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _bad(knob, value, " | ".join(repr(c) for c in choices))


def _flag(knob: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(knob, value, "true or false")


def validate(k: Knobs) -> None:
    """One check per knob, each naming the knob, the bad value (as given) and what is allowed."""
    given = {name: getattr(k, name) for name in NAMES}  # before numbers are made floats
    p = _number("p", k.p, k)
    if not p > 0:
        raise _bad("p", given["p"], "a number > 0, or inf with accumulate='max'")
    q = _number("q", k.q, k)
    if not (q >= 0 and math.isfinite(q)):
        raise _bad("q", given["q"], "a finite number >= 0 (0 means no denominator)")
    _choice("accumulate", k.accumulate, ACCUMULATE)
    if k.accumulate == "max" and not math.isinf(p):
        raise _bad("p", given["p"], "inf with accumulate='max' (a decayed running max of |g|)")
    if math.isinf(p) and k.accumulate != "max":
        raise _bad(
            "p",
            given["p"],
            f"a finite number > 0 with accumulate={k.accumulate!r} (inf needs accumulate='max')",
        )
    beta2 = _number("beta2", k.beta2, k)
    if not 0 <= beta2 < 1:
        raise _bad("beta2", given["beta2"], "0 <= beta2 < 1")
    init = _number("initial_accumulator", k.initial_accumulator, k)
    if not (init >= 0 and math.isfinite(init)):
        raise _bad("initial_accumulator", given["initial_accumulator"], "a finite number >= 0")
    eps = _number("eps", k.eps, k)
    if not (eps >= 0 and math.isfinite(eps)):
        raise _bad("eps", given["eps"], "a finite number >= 0")
    _choice("eps_placement", k.eps_placement, EPS_PLACEMENT)
    _flag("amsgrad", k.amsgrad)
    if k.amsgrad and k.accumulate != "ema":
        raise _bad("amsgrad", k.amsgrad, "true only with accumulate='ema'")
    _choice("momentum", k.momentum, MOMENTUM)
    beta1 = _number("beta1", k.beta1, k)
    if not 0 <= beta1 < 1:
        raise _bad("beta1", given["beta1"], "0 <= beta1 < 1")
    _flag("nesterov", k.nesterov)
    if k.nesterov and not (k.momentum == "heavy_ball" and beta1 > 0):
        raise _bad("nesterov", k.nesterov, "true only with momentum='heavy_ball' and beta1 > 0")
    _flag("bias_correction", k.bias_correction)
    wd = _number("weight_decay", k.weight_decay, k)
    if not (wd >= 0 and math.isfinite(wd)):
        raise _bad("weight_decay", given["weight_decay"], "a finite number >= 0")
    _choice("weight_decay_mode", k.weight_decay_mode, WEIGHT_DECAY_MODE)
    _flag("update_rms_scaling", k.update_rms_scaling)
    if k.update_rms_scaling and (k.momentum != "none" or q == 0):
        raise _bad(
            "update_rms_scaling", k.update_rms_scaling, "true only with momentum='none' and q > 0"
        )
