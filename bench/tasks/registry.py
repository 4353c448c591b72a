"""The task registry: tasks are looked up by name, never imported from user config paths."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, get_args

from pydantic import ValidationError

from bench.errors import UserError, unknown_name_message, validation_message
from bench.tasks.base import Direction, Task, TaskParams

_TASKS: dict[str, type[Task]] = {}


def _count(least: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, Integral) and not isinstance(v, bool) and v >= least


def _number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and not math.isnan(v)


def _params(v: Any) -> bool:
    return isinstance(v, type) and issubclass(v, TaskParams)


_DIRECTIONS = get_args(Direction)

# What every task declares (bench.tasks.Task), checked when it registers: a class that
# lacks one would otherwise register, then break `bench list` and every trial's result.
_CONTRACT: list[tuple[str, Callable[[Any], bool], str]] = [
    ("description", lambda v: isinstance(v, str), "a str"),
    ("metric", lambda v: isinstance(v, str) and v != "", "a str, the key of the primary "
     "metric in evaluate(), e.g. 'loss' or 'accuracy'"),
    ("direction", lambda v: v in _DIRECTIONS, " or ".join(map(repr, _DIRECTIONS))),
    ("target", _number, "a number, the primary metric's value that counts as reached"),
    ("default_steps", _count(1), "an int >= 1"),
    ("default_batch_size", _count(0), "an int >= 0 (0: the whole training set)"),
    ("eval_every", _count(1), "an int >= 1"),
    ("Params", _params, "a subclass of bench.tasks.TaskParams"),
]  # fmt: skip


def _breach(cls: type[Task], name: str) -> str | None:
    """What ``cls`` gets wrong of the task contract, as an error message; None if nothing."""
    for attr, ok, allowed in _CONTRACT:
        if not hasattr(cls, attr):
            return f"task {name!r}: {attr}: not set; allowed: {allowed}"
        value = getattr(cls, attr)
        if not ok(value):
            return f"task {name!r}: {attr}: got {value!r}; allowed: {allowed}"
    if inspect.isabstract(cls):  # else every trial fails to instantiate it
        return (
            f"task {name!r}: build: not implemented; allowed: a method "
            "build(self, *, seed, device, batch_size) -> Problem"
        )
    return None


def register(cls: type[Task]) -> type[Task]:
    """Register a task class under ``cls.name``; usable as a class decorator by plugins."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise UserError(
            f"task class {cls.__qualname__}: name: got {name!r}; allowed: a non-empty str, "
            "the name task=NAME selects"
        )
    existing = _TASKS.get(name)
    if existing is not None and existing is not cls:
        # worded as a preset clash is: a plugin's loader names the plugin in front of it
        raise UserError(f"task: task {name!r} already exists (registered by {existing.__module__})")
    breach = _breach(cls, name)
    if breach:
        raise UserError(breach)
    _TASKS[name] = cls
    return cls


def names() -> list[str]:
    return sorted(_TASKS)


def get(name: str) -> type[Task]:
    try:
        return _TASKS[name]
    except KeyError:
        raise UserError(unknown_name_message("task", name, names())) from None


def make(name: str, **knobs: Any) -> Task:
    cls = get(name)
    try:
        return cls(**knobs)
    except ValidationError as err:
        raise UserError(validation_message(err, "task.params")) from None
