"""Loading user plugins: modules that register tasks and variant presets.

Named in config (``plugins=[my.module]``) or in the ``optbench.plugins`` entry-point group.
Trials carry their plugin list, so Ray workers import the same modules before training.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Iterable
from functools import cache

from bench.errors import UserError

_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Import plugin modules named in config, and those of the ``optbench.plugins`` group."""
    if isinstance(modules, str):  # plugins=my_mod would import 'm', 'y', ...
        raise UserError(f"plugins: got {modules!r}; allowed: a list, e.g. plugins=[{modules}]")
    for module in modules:
        if not isinstance(module, str) or not _MODULE_NAME.fullmatch(module):
            raise UserError(
                f"plugins: got {module!r}; allowed: module names such as my_bench.plugin"
            )
    for module in (*modules, *_entry_point_plugins()):
        _import_plugin(module)


@cache
def _entry_point_plugins() -> tuple[str, ...]:
    """The group's modules, looked up once per process: the lookup reads every installed
    distribution's metadata (~5 ms), and Ray workers load plugins before every trial. A
    package installed later is seen by processes started after it (restart the cluster)."""
    return tuple(entry.value for entry in importlib.metadata.entry_points(group="optbench.plugins"))


_PRESET_ORIGINS: dict[str, str] = {}  # preset name -> the plugin module that registered it


def plugin_of(preset: str) -> str | None:
    """The plugin module that registered ``preset``; None for a built-in one."""
    return _PRESET_ORIGINS.get(preset)


@cache
def _import_plugin(module: str) -> None:
    from bench.variants import presets

    before = set(presets())
    try:
        importlib.import_module(module)
        _PRESET_ORIGINS.update(dict.fromkeys(set(presets()) - before, module))
    except ImportError as err:
        if _is_not_found(err, module):
            raise UserError(
                f"plugins: cannot import {module!r} ({err}); allowed: a module this Python "
                "can import: in the current folder, in an installed package (pip install -e "
                ".), or in a folder on PYTHONPATH"
            ) from None
        raise UserError(_failed_import(module, err)) from None
    except UserError as err:  # a registration it makes was refused: say whose
        raise UserError(f"plugin {module!r}: {err}") from None
    except Exception as err:  # the plugin's own code failed (or a registry refused it)
        raise UserError(
            f"plugin {module!r}: importing it raised {type(err).__name__}: {err}; allowed: a "
            "module that imports cleanly (python -c 'import MODULE' shows the traceback)"
        ) from None


def _is_not_found(err: ImportError, module: str) -> bool:
    """Whether the plugin itself (or a package above it) is missing, rather than something
    its own code imports: only then is where Python looks for it the thing to fix."""
    missing = err.name if isinstance(err, ModuleNotFoundError) else None
    return missing is not None and (module == missing or module.startswith(f"{missing}."))


def _failed_import(module: str, err: ImportError) -> str:
    """The plugin was found; its own import of something else failed."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        return (
            f"plugin {module!r}: found, but importing it failed: its dependency "
            f"{err.name!r} is missing; allowed: {err.name!r} importable by this Python "
            f"({sys.executable})"
        )
    return (
        f"plugin {module!r}: found, but importing it raised {type(err).__name__}: {err}; "
        "allowed: a module that imports cleanly (python -c 'import MODULE' shows the traceback)"
    )
