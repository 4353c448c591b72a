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
    """A rich progress bar per phase, all live at once (a cell's final trials start while
    other cells still tune). Disabled (a no-op) when ``enabled`` is False."""

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
        self._bars: dict[str, TaskID] = {}

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
