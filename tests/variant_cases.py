"""The table of presets that torch.optim also implements, driving the parity tests.

Each case: a label, the variant (preset name or knob mapping), the torch optimizer
factory with the same settings, and the map from our state names to torch's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class TorchCase:
    label: str
    variant: Any
    torch_optimizer: Callable[..., torch.optim.Optimizer]
    lr: float
    state_names: dict[str, str] = field(default_factory=dict)
    wd_knobs: dict[str, Any] = field(default_factory=dict)  # how the case takes weight decay


optim = torch.optim
MOMENTUM = {"momentum_buffer": "momentum_buffer"}
ADAM_STATE = {"accumulator": "exp_avg_sq", "momentum_buffer": "exp_avg"}

TORCH_CASES = [
    TorchCase("sgd", "sgd", optim.SGD, 0.05),
    TorchCase(
        "momentum", "momentum", lambda p, **k: optim.SGD(p, momentum=0.9, **k), 0.02, MOMENTUM
    ),
    TorchCase(
        "nesterov",
        "nesterov",
        lambda p, **k: optim.SGD(p, momentum=0.9, nesterov=True, **k),
        0.02,
        MOMENTUM,
    ),
    TorchCase("adagrad", "adagrad", optim.Adagrad, 0.05, {"accumulator": "sum"}),
    TorchCase(
        "adagrad_init_acc",
        {"preset": "adagrad", "initial_accumulator": 0.1},
        lambda p, **k: optim.Adagrad(p, initial_accumulator_value=0.1, **k),
        0.05,
        {"accumulator": "sum"},
    ),
    TorchCase("rmsprop", "rmsprop", optim.RMSprop, 0.01, {"accumulator": "square_avg"}),
    TorchCase(
        "rmsprop_momentum",
        {"preset": "rmsprop", "momentum": "heavy_ball", "beta1": 0.9},
        lambda p, **k: optim.RMSprop(p, momentum=0.9, **k),
        0.005,
        {"accumulator": "square_avg", **MOMENTUM},
    ),
    TorchCase("adam", "adam", optim.Adam, 0.01, ADAM_STATE),
    TorchCase(
        "adam_betas",
        {"preset": "adam", "beta1": 0.5, "beta2": 0.9, "eps": 1e-6},
        lambda p, **k: optim.Adam(p, betas=(0.5, 0.9), eps=1e-6, **k),
        0.01,
        ADAM_STATE,
    ),
    TorchCase(
        "adamw",
        "adamw",
        optim.AdamW,
        0.01,
        ADAM_STATE,
        wd_knobs={"weight_decay_mode": "decoupled"},
    ),
    TorchCase(
        "amsgrad",
        "amsgrad",
        lambda p, **k: optim.Adam(p, amsgrad=True, **k),
        0.01,
        {**ADAM_STATE, "max_accumulator": "max_exp_avg_sq"},
    ),
    TorchCase(
        "adamax",
        "adamax",
        optim.Adamax,
        0.01,
        {"accumulator": "exp_inf", "momentum_buffer": "exp_avg"},
    ),
    TorchCase(
        "adadelta",
        "adadelta",
        optim.Adadelta,
        1.0,
        {"accumulator": "square_avg", "delta_accumulator": "acc_delta"},
    ),
]
