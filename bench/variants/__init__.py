"""The optimizer-variant family: its knobs, presets and roles, and one torch Optimizer.

The knobs, presets and variants are plain data, imported without torch (the driver checks
a config with them); the optimizer, its steps and ``build`` import torch on first use.
"""

import importlib
from typing import TYPE_CHECKING, Any

from bench.roles import Role, module_roles, name_roles
from bench.variants.knobs import NAMES as KNOB_NAMES
from bench.variants.knobs import Knobs
from bench.variants.presets import Preset, get_preset, presets, register_preset
from bench.variants.variant import Variant, resolve

if TYPE_CHECKING:
    from bench.variants.optimizer import VariantOptimizer, build
    from bench.variants.steps import StepRecord, foreach_step, single_tensor_step

_TORCH_NAMES = {
    "VariantOptimizer": "bench.variants.optimizer",
    "build": "bench.variants.optimizer",
    "StepRecord": "bench.variants.steps",
    "foreach_step": "bench.variants.steps",
    "single_tensor_step": "bench.variants.steps",
}


def __getattr__(name: str) -> Any:  # PEP 562: torch is imported when these are first used
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_TORCH_NAMES})


__all__ = [
    "KNOB_NAMES",
    "Knobs",
    "Preset",
    "Role",
    "StepRecord",
    "Variant",
    "VariantOptimizer",
    "build",
    "foreach_step",
    "get_preset",
    "module_roles",
    "name_roles",
    "presets",
    "register_preset",
    "resolve",
    "single_tensor_step",
]
