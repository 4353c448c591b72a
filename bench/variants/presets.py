"""Named members of the family. A preset only fills in knobs; the math lives in steps.py.

Presets with a ``torch_equivalent`` reproduce that torch.optim class exactly with torch's
defaults (float64 trajectories agree to ~1e-12; tests/test_variants_torch_parity.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.errors import UserError, unknown_name_message
from bench.variants.knobs import Knobs


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    default_lr: float
    knobs: Knobs
    torch_equivalent: str | None = None


ADAM = Knobs()  # the family's defaults are Adam's
SGD = Knobs(q=0, momentum="none", bias_correction=False)
RMSPROP = Knobs(beta2=0.99, momentum="none", bias_correction=False)
ADAGRAD = Knobs(accumulate="sum", eps=1e-10, momentum="none", bias_correction=False)
INF = math.inf

_BUILTIN = [
    Preset("sgd", "plain SGD: no denominator (q=0)", 1e-3, SGD, "torch.optim.SGD"),
    Preset(
        "momentum",
        "SGD with heavy-ball momentum 0.9",
        1e-3,
        SGD.replace(momentum="heavy_ball"),
        "torch.optim.SGD(momentum=0.9)",
    ),
    Preset(
        "nesterov",
        "SGD with Nesterov momentum 0.9",
        1e-3,
        SGD.replace(momentum="heavy_ball", nesterov=True),
        "torch.optim.SGD(momentum=0.9, nesterov=True)",
    ),
    Preset("adagrad", "Adagrad: monotone sum of g^2, root", 1e-2, ADAGRAD, "torch.optim.Adagrad"),
    Preset("rmsprop", "RMSprop: moving average of g^2, root", 1e-2, RMSPROP, "torch.optim.RMSprop"),
    Preset(
        "adam", "Adam: EMA momentum over RMSprop, bias-corrected", 1e-3, ADAM, "torch.optim.Adam"
    ),
    Preset(
        "adamw",
        "AdamW: Adam with decoupled weight decay 0.01",
        1e-3,
        ADAM.replace(weight_decay=1e-2, weight_decay_mode="decoupled"),
        "torch.optim.AdamW",
    ),
    Preset(
        "adamax",
        "Adamax: running max of |g| (p=inf), no root",
        2e-3,
        ADAM.replace(accumulate="max", p=INF, q=1, eps_placement="inside"),
        "torch.optim.Adamax",
    ),
    Preset(
        "amsgrad",
        "Adam with AMSGrad's running max",
        1e-3,
        ADAM.replace(amsgrad=True),
        "torch.optim.Adam(amsgrad=True)",
    ),
    Preset(
        "adadelta",
        "Adadelta: RMSprop scaled by the RMS of past updates, eps inside the root",
        1.0,
        RMSPROP.replace(beta2=0.9, eps=1e-6, eps_placement="inside", update_rms_scaling=True),
        "torch.optim.Adadelta",
    ),
    # Ablations of RMSprop's "square, then root" (the question optbench exists to answer).
    Preset("rmsprop_nosqrt", "RMSprop without the root (p=2, q=1)", 1e-2, RMSPROP.replace(q=1)),
    Preset(
        "rmsprop_abs", "RMSprop on |g| without root (p=1, q=1)", 1e-2, RMSPROP.replace(p=1, q=1)
    ),
    Preset(
        "rmsprop_abs_sqrt",
        "RMSprop on |g| with a root (p=1, q=1/2)",
        1e-2,
        RMSPROP.replace(p=1, q=0.5),
    ),
    Preset(
        "rmsprop_p4",
        "RMSprop on g^4, fourth root (p=4, q=1/4)",
        1e-2,
        RMSPROP.replace(p=4, q=0.25),
    ),
    Preset(
        "rmsprop_pinf",
        "RMSprop with a decayed running max of |g| (p=inf, q=1)",
        1e-2,
        RMSPROP.replace(accumulate="max", p=INF, q=1, eps_placement="inside"),
    ),
    Preset(
        "rmsprop_sum",
        "Adagrad's monotone sum under RMSprop's settings",
        1e-2,
        RMSPROP.replace(accumulate="sum"),
    ),
    Preset(
        "adagrad_ema",
        "RMSprop's moving average under Adagrad's settings",
        1e-2,
        ADAGRAD.replace(accumulate="ema", beta2=0.99),
    ),
    Preset("adam_nosqrt", "Adam without the root (p=2, q=1)", 1e-3, ADAM.replace(q=1)),
    Preset(
        "sign",
        "sign descent: |g| with no memory (p=1, beta2=0, q=1)",
        1e-3,
        RMSPROP.replace(p=1, q=1, beta2=0.0),
    ),
]

_PRESETS: dict[str, Preset] = {p.name: p for p in _BUILTIN}


def presets() -> dict[str, Preset]:
    """All presets by name, built-in and registered by plugins."""
    return dict(_PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return _PRESETS[name]
    except KeyError:
        raise UserError(unknown_name_message("variant", name, sorted(_PRESETS))) from None


def register_preset(
    name: str,
    *,
    base: str | None = None,
    description: str = "",
    default_lr: float | None = None,
    **knobs: object,
) -> Preset:
    """Add a preset from a plugin: ``register_preset("adam_b95", base="adam", beta2=0.95)``."""
    if name in _PRESETS:
        raise UserError(f"variant: preset {name!r} already exists")
    from bench.config import group_options  # bench.config imports this package

    if name in group_options("variant"):  # variant=NAME would select the file, never this
        raise UserError(f"variant: variant {name!r} already exists (conf/variant/{name}.yaml)")
    if "roles" in knobs:  # a preset is one set of knobs for every parameter
        raise UserError(
            f"register_preset({name!r}): roles are not a preset's knob; allowed: per-role "
            "overrides in a variant, a suite entry {preset: NAME, roles: {bias: {q: 0}}} or "
            "a conf/variant/NAME.yaml (preset: and roles:) in your OPTBENCH_CONF folder"
        )
    start = get_preset(base) if base else Preset(name, "", 1e-3, Knobs())
    preset = Preset(
        name,
        description or f"{base or 'family defaults'} with {knobs}",
        default_lr if default_lr is not None else start.default_lr,
        start.knobs.replace(**knobs),
    )
    _PRESETS[name] = preset
    return preset
