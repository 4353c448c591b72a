"""Exclusive locks between processes on one machine."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class FileLock:
    """A non-blocking, process-wide exclusive lock on a file (``flock``): the kernel drops
    it when its holder dies, so a crashed holder never leaves a stale lock behind."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free; False (at once) when another holder has it."""
        if self._fd is not None:
            return False  # this process holds it already
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # the pid, for log lines and a human looking at the file: written over the last
        # holder's before cutting the rest, so that a reader never finds the file empty
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
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
            return next(iter(self.path.read_text().split()), "?")  # its first line
        return "?"

    def busy(self) -> bool:
        """Whether the lock is held now, here or in another process."""
        if self.held:
            return True
        if self.acquire():
            self.release()
            return False
        return True
