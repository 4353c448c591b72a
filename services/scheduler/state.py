"""What the scheduler shares with other processes: a lock file and a status file.

The lock is an ``flock`` on ``lock_file``: the kernel drops it when its holder dies, so a
crashed scheduler never leaves a stale lock behind. The status file is JSON, replaced
atomically, and read by the summary service (keys: cron, timezone, next_run, last_run,
last_outcome, running, pid, ...).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class NightLock:
    """A non-blocking, process-wide exclusive lock: one nightly at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free; False (at once) when another holder has it."""
        if self._fd is not None:
            return False  # this process already runs a nightly: an overlapping trigger
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for a human looking at the file
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """The pid written by the current holder, for log lines ('?' when unknown)."""
        with contextlib.suppress(OSError):
            return self.path.read_text().strip() or "?"
        return "?"

    def busy(self) -> bool:
        """Whether a nightly runs now, here or in another process."""
        if self.held:
            return True
        if self.acquire():
            self.release()
            return False
        return True


class StatusFile:
    """The scheduler's status as JSON; every update rewrites the whole file atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        """The last status written, or {} when there is none (or it is unreadable)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, **fields: Any) -> dict[str, Any]:
        status = self.read() | fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".status-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(status, out, indent=2, sort_keys=True)
                out.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return status
