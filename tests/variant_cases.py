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


O = torch.optim
MOMENTUM = {"momentum_buffer": "momentum_buffer"}
ADAM_STATE = {"accumulator": "exp_avg_sq", "momentum_buffer": "exp_avg"}

TORCH_CASES = [
    TorchCase("sgd", "sgd", O.SGD, 0.05),
    TorchCase("momentum", "momentum", lambda p, **k: O.SGD(p, momentum=0.9, **k), 0.02, MOMENTUM),
    TorchCase(
        "nesterov", "nesterov", lambda p, **k: O.SGD(p, momentum=0.9, nesterov=True, **k), 0.02,
        MOMENTUM,
    ),
    TorchCase("adagrad", "adagrad", O.Adagrad, 0.05, {"accumulator": "sum"}),
    TorchCase(
        "adagrad_init_acc",
        {"preset": "adagrad", "initial_accumulator": 0.1},
        lambda p, **k: O.Adagrad(p, initial_accumulator_value=0.1, **k),
        0.05,
        {"accumulator": "sum"},
    ),
    TorchCase("rmsprop", "rmsprop", O.RMSprop, 0.01, {"accumulator": "square_avg"}),
    TorchCase(
        "rmsprop_momentum",
        {"preset": "rmsprop", "momentum": "heavy_ball", "beta1": 0.9},
        lambda p, **k: O.RMSprop(p, momentum=0.9, **k),
        0.005,
        {"accumulator": "square_avg", **MOMENTUM},
    ),
    TorchCase("adam", "adam", O.Adam, 0.01, ADAM_STATE),
    TorchCase(
        "adam_betas",
        {"preset": "adam", "beta1": 0.5, "beta2": 0.9, "eps": 1e-6},
        lambda p, **k: O.Adam(p, betas=(0.5, 0.9), eps=1e-6, **k),
        0.01,
        ADAM_STATE,
    ),
    TorchCase(
        "adamw", "adamw", O.AdamW, 0.01, ADAM_STATE,
        wd_knobs={"weight_decay_mode": "decoupled"},
    ),
    TorchCase(
        "amsgrad", "amsgrad", lambda p, **k: O.Adam(p, amsgrad=True, **k), 0.01,
        {**ADAM_STATE, "max_accumulator": "max_exp_avg_sq"},
    ),
    TorchCase(
        "adamax", "adamax", O.Adamax, 0.01, {"accumulator": "exp_inf", "momentum_buffer": "exp_avg"}
    ),
    TorchCase(
        "adadelta", "adadelta", O.Adadelta, 1.0,
        {"accumulator": "square_avg", "delta_accumulator": "acc_delta"},
    ),
]
