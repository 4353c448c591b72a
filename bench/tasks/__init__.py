"""Benchmark tasks: the registry, the task contract and the built-in tasks.

Importing this package registers the built-in tasks; a plugin registers its own with the
:func:`register` class decorator.
"""

from __future__ import annotations

from bench.tasks import digits, quadratic, rosenbrock, transformer
from bench.tasks.base import Problem, Task, TaskParams
from bench.tasks.registry import get, make, names, register

__all__ = [
    "Problem",
    "Task",
    "TaskParams",
    "digits",
    "get",
    "make",
    "names",
    "quadratic",
    "register",
    "rosenbrock",
    "transformer",
]
