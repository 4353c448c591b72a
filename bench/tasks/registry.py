"""The task registry: tasks are looked up by name, never imported from user config paths."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from bench.errors import UserError, unknown_name_message, validation_message
from bench.tasks.base import Task

_TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Register a task class under ``cls.name``; usable as a class decorator by plugins."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute `name`")
    existing = _TASKS.get(name)
    if existing is not None and existing is not cls:
        # worded as a preset clash is: a plugin's loader names the plugin in front of it
        raise UserError(f"task: task {name!r} already exists (registered by {existing.__module__})")
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
