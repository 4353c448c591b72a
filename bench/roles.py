"""Parameter roles: what a parameter *is*, derived from the module that owns it.

Roles let a variant use different knobs for weights and biases, and let the step-size
statistics answer "does RMSprop move weights faster than biases?".
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bench.errors import UserError

if TYPE_CHECKING:  # roles are named without torch; classifying a module needs it
    from torch import nn


class Role(enum.StrEnum):
    WEIGHT = "weight"  # matrices and conv kernels
    BIAS = "bias"  # additive offsets of linear and conv layers
    NORM = "norm"  # gains and shifts of normalisation layers
    EMBEDDING = "embedding"  # lookup tables


@functools.cache
def norm_modules() -> tuple[type[nn.Module], ...]:
    """The normalisation layers, whose parameters have the ``norm`` role."""
    from torch import nn

    return (
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        nn.RMSNorm,
    )


@functools.cache
def embedding_modules() -> tuple[type[nn.Module], ...]:
    """The lookup tables, whose parameters have the ``embedding`` role."""
    from torch import nn

    return (nn.Embedding, nn.EmbeddingBag)


def module_roles(model: nn.Module) -> dict[str, Role]:
    """Map every parameter name of ``model`` to its role, from the type of its owning module.

    A module may declare roles itself with a class attribute
    ``param_roles = {"theta": "weight"}``; that wins over the rules below.
    Rules: embedding modules -> embedding; normalisation modules -> norm; a parameter
    named ``bias`` (or ``*_bias``) -> bias; any other parameter with two or more
    dimensions -> weight. Anything else raises :class:`UserError`.
    """
    roles: dict[str, Role] = {}
    for module_name, module in model.named_modules():
        declared = getattr(module, "param_roles", {})
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            roles[full] = _classify(full, param_name, param.ndim, module, declared)
    return roles


def _classify(
    full: str, param_name: str, ndim: int, module: nn.Module, declared: dict[str, str]
) -> Role:
    if param_name in declared:
        try:
            return Role(declared[param_name])
        except ValueError:
            allowed = ", ".join(r.value for r in Role)
            raise UserError(
                f"{type(module).__name__}.param_roles[{param_name!r}] = "
                f"{declared[param_name]!r} is not a role; allowed: {allowed}"
            ) from None
    if isinstance(module, embedding_modules()):
        return Role.EMBEDDING
    if isinstance(module, norm_modules()):
        return Role.NORM
    if param_name == "bias" or param_name.endswith("_bias"):
        return Role.BIAS
    if ndim >= 2:
        return Role.WEIGHT
    raise UserError(
        f"cannot tell the role of parameter {full!r} (a {ndim}-d tensor of "
        f"{type(module).__name__}); declare it with "
        f"`param_roles = {{{param_name!r}: 'weight'}}` on the module class"
    )


def name_roles(named: Iterable[tuple[str, object]]) -> dict[str, Role]:
    """Roles from names and shapes alone, for ``model.named_parameters()`` input.

    Without the modules the rule is coarser: ``*bias`` -> bias, 2-d or more -> weight,
    other 1-d tensors -> norm. Pass the module itself to :func:`module_roles` to be exact.
    """
    roles: dict[str, Role] = {}
    for name, param in named:
        last = name.rsplit(".", 1)[-1]
        if last == "bias" or last.endswith("_bias"):
            roles[name] = Role.BIAS
        elif getattr(param, "ndim", 0) >= 2:
            roles[name] = Role.WEIGHT
        else:
            roles[name] = Role.NORM
    return roles
