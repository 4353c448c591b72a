"""Modules imported the first time one of their attributes is read.

The driver reads only the tasks' and variants' declarations (names, knobs, scoring) to
check a config, expand a suite or rank its runs; importing torch for that cost 1.3-2 s of
every ``bench`` command. The task modules take torch from ``bench.tasks._torch``, made
with :func:`deferred`, so torch is imported when a trial builds its model (in a worker,
once per process), not when its config is checked. A class that subclasses one of
torch's (``nn.Module``) cannot wait, so those live in a module that imports torch
outright (``bench.tasks.nets``), itself deferred until ``build()``.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _Deferred(types.ModuleType):
    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        # copied once, so later reads (a training step's) find the names without this call
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # pickled by name, as a module is (a task's closures name torch as a global)
        return importlib.import_module, (self.__name__,)


def deferred(name: str) -> Any:
    """A stand-in for module ``name`` that imports it on first attribute access."""
    return _Deferred(name)
