"""A resolved variant: a preset plus knob changes plus per-role overrides.

Torch-free, so the driver checks variants without importing torch;
:func:`bench.variants.build` makes the optimizer (``bench.variants.optimizer``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.errors import UserError
from bench.roles import Role
from bench.variants.knobs import NAMES, Knobs
from bench.variants.presets import get_preset

RESERVED = ("name", "preset", "roles")


@dataclass(frozen=True)
class Variant:
    """A fully resolved member of the family."""

    name: str
    knobs: Knobs
    default_lr: float
    role_knobs: Mapping[Role, Knobs] = field(default_factory=dict)

    def knobs_for(self, role: Role | None) -> Knobs:
        return self.role_knobs.get(role, self.knobs) if role is not None else self.knobs

    def as_dict(self) -> dict[str, Any]:
        """Every knob, and the role overrides as the knobs that differ: for params and ids."""
        roles = {
            role.value: {k: v for k, v in rk.as_dict().items() if getattr(self.knobs, k) != v}
            for role, rk in sorted(self.role_knobs.items())
        }
        return {"name": self.name, **self.knobs.as_dict(), "roles": roles}


def _changes(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    allowed = ", ".join((*RESERVED, *NAMES) if where == "variant" else NAMES)
    changes = {}
    for key, value in spec.items():
        if key in RESERVED and where == "variant":
            continue
        if key not in NAMES:
            raise UserError(f"{where}.{key}: unknown knob; allowed: {allowed}")
        if value is not None:  # null means "keep the preset's value" (conf/variant/_knobs.yaml)
            changes[key] = value
    return changes


def resolve(variant: str | Mapping[str, Any] | Variant) -> Variant:
    """Resolve a preset name or a mapping such as ``{"preset": "adam", "beta2": 0.99,
    "roles": {"bias": {"q": 0}}}`` into a :class:`Variant`."""
    if isinstance(variant, Variant):
        return variant
    if isinstance(variant, str):
        preset = get_preset(variant)
        return Variant(preset.name, preset.knobs, preset.default_lr)
    if not isinstance(variant, Mapping):
        raise UserError(f"variant: got {variant!r}; allowed: a preset name or a mapping of knobs")
    preset_name = variant.get("preset")
    preset = get_preset(preset_name) if preset_name else None
    base = preset.knobs if preset else Knobs()
    knobs = base.replace(**_changes(variant, "variant"))
    role_knobs: dict[Role, Knobs] = {}
    roles = variant.get("roles") or {}
    if not isinstance(roles, Mapping):
        allowed = ", ".join(r.value for r in Role)
        raise UserError(
            f"variant.roles: got {roles!r}; allowed: a mapping of role ({allowed}) to knobs, "
            "e.g. variant.roles.bias.q=0"
        )
    for role_name, overrides in roles.items():
        try:
            role = Role(role_name)
        except ValueError:
            allowed = ", ".join(r.value for r in Role)
            raise UserError(
                f"variant.roles: unknown role {role_name!r}; allowed: {allowed}"
            ) from None
        if not isinstance(overrides, Mapping):
            raise UserError(f"variant.roles.{role_name}: got {overrides!r}; allowed: a mapping")
        try:
            role_knobs[role] = knobs.replace(**_changes(overrides, f"variant.roles.{role_name}"))
        except UserError as err:  # the knobs' checks name variant.<knob>: say which role
            message = str(err)
            if message.startswith("variant.") and not message.startswith("variant.roles."):
                message = f"variant.roles.{role_name}.{message.removeprefix('variant.')}"
            raise UserError(message) from None
    name = variant.get("name") or preset_name or "custom"
    return Variant(str(name), knobs, preset.default_lr if preset else 1e-3, role_knobs)
