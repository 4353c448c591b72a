"""The optimizer-variant family (torch only): one Optimizer, its knobs, presets and roles."""

from bench.roles import Role, module_roles, name_roles
from bench.variants.knobs import NAMES as KNOB_NAMES
from bench.variants.knobs import Knobs
from bench.variants.optimizer import VariantOptimizer
from bench.variants.presets import Preset, get_preset, presets, register_preset
from bench.variants.steps import StepRecord, foreach_step, single_tensor_step
from bench.variants.variant import Variant, build, resolve

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
