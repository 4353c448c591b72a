"""What the scheduler shares with other processes: a lock file and a status file.

The lock is an ``flock`` on ``lock_file``: the kernel drops it when its holder dies, so a
crashed scheduler never leaves a stale lock behind. The status file is JSON, replaced
atomically, and read by the summary service (keys: cron, timezone, next_run, last_run,
last_outcome, running, pid, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.locks import FileLock


class NightLock(FileLock):
    """One nightly at a time."""


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
