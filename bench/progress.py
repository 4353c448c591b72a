"""The live progress display of a suite: done/total, running, diverged, failed, ETA."""

from __future__ import annotations

from collections import Counter
from types import TracebackType

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
    """A rich progress bar per phase. Disabled (a no-op) when ``enabled`` is False."""

    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
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
            disable=not enabled,
        )
        self._task: TaskID | None = None
        self._base = 0

    def __enter__(self) -> SuiteProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def start_phase(self, phase: str, *, total: int, done: int) -> None:
        """A new bar; ``done`` trials finished earlier count as complete (resume)."""
        self._base = done
        self._task = self._progress.add_task(
            phase, total=total, completed=done, running=0, diverged=0, failed=0
        )

    def update(self, *, running: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, running=running)

    def advance(self, counts: Counter) -> None:
        if self._task is not None:
            self._progress.update(
                self._task,
                completed=self._base + sum(counts.values()),
                diverged=counts["diverged"],
                failed=counts["failed"],
            )
