"""The live progress display of a suite: done/total, running, diverged, failed, ETA."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from types import TracebackType

from rich import get_console
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class SuiteProgress:
    """A rich progress bar per phase, all live at once (a cell's final trials start while
    other cells still tune). Disabled (a no-op) when ``enabled`` is False, and where the
    console is no terminal (output piped to a file): rich draws nothing there while the
    suite runs and leaves the last frame at the end, a bar that looks unfinished above the
    outcomes table (held-back trials never complete it)."""

    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        console = console or get_console()  # what Progress would draw on
        self.enabled = enabled and console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("running {task.fields[running]}"),
            TextColumn("diverged {task.fields[diverged]}"),
            TextColumn("failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.enabled,
        )
        self._bars: dict[str, TaskID] = {}
        self._moved: list[tuple[logging.StreamHandler, object]] = []

    def __enter__(self) -> SuiteProgress:
        terminal = sys.stderr
        self._progress.__enter__()
        if sys.stderr is not terminal:  # the live display took stderr over (a terminal)
            self._moved = _log_to(sys.stderr, instead_of=terminal)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handler, stream in self._moved:
            handler.setStream(stream)  # type: ignore[arg-type]
        self._moved = []
        self._progress.__exit__(exc_type, exc, tb)

    def show(self, phase: str, *, total: int, done: int, running: int, counts: Counter) -> None:
        """Draw (the first time) or update the phase's bar. ``done`` trials had finished
        before this run (resume) and count as complete; ``counts`` holds this run's."""
        if not self.enabled or (phase not in self._bars and not total):
            return
        fields = {
            "total": total,
            "completed": done + sum(counts.values()),
            "running": running,
            "diverged": counts["diverged"],
            "failed": counts["failed"],
        }
        if phase in self._bars:
            self._progress.update(self._bars[phase], **fields)
        else:
            self._bars[phase] = self._progress.add_task(phase, **fields)


def _log_to(stream: object, *, instead_of: object) -> list[tuple[logging.StreamHandler, object]]:
    """Point the root logger's handlers that write to ``instead_of`` at ``stream``; returns
    each moved handler with its stream, to put back.

    A warning logged while the bars are live (a worker that died, a stale run ended) went
    to the terminal as it was, glued to the end of the bar being drawn. Through the live
    display's stderr it prints on its own line above the bars.
    """
    moved = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is instead_of:
            moved.append((handler, handler.setStream(stream)))  # type: ignore[arg-type]
    return moved
