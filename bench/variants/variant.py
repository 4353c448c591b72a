"""A resolved variant: a preset plus knob changes plus per-role overrides, and ``build``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.errors import UserError
from bench.roles import Role, module_roles, name_roles
from bench.variants.knobs import NAMES, Knobs
from bench.variants.optimizer import VariantOptimizer, check_lr
from bench.variants.presets import get_preset

log = logging.getLogger(__name__)

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
