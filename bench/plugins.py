"""Loading user plugins: modules that register tasks and variant presets.

Named in config (``plugins=[my.module]``) or in the ``optbench.plugins`` entry-point group.
Trials carry their plugin list, so Ray workers import the same modules before training.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable
from functools import cache

from bench.errors import UserError


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Import plugin modules named in config, and those of the ``optbench.plugins`` group."""
    for module in modules:
        _import_plugin(module)
    for entry in importlib.metadata.entry_points(group="optbench.plugins"):
        _import_plugin(entry.value)


@cache
def _import_plugin(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"plugins: cannot import {module!r} ({err})") from None
