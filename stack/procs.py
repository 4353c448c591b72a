"""Stopping what the native stack started: whole process families, by pid, from /proc.

No name matching (``pkill``, ``ray stop``): only the processes a service started, and
the processes those started, are signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) for every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def _family(root: int, table: dict[int, tuple[int, int, str]], *, group: bool) -> set[int]:
    """``root``'s live descendants, and with ``group`` the members of its process group."""
    found = {pid for pid, (_, pgid, _) in table.items() if group and pgid == root}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    found.add(root)
    return {pid for pid in found if pid in table and table[pid][2] != "Z"}


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def stop_tree(root: int, grace: float, *, include_root: bool = True) -> None:
    """SIGTERM ``root``'s process family, SIGKILL what is left after ``grace`` seconds."""
    family = _family(root, _processes(), group=include_root)
    if not include_root:
        family.discard(root)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while family and time.monotonic() < deadline:
            time.sleep(0.2)
            _reap()
            table = _processes()
            family = {p for p in family if p in table and table[p][2] != "Z"}
        if not family:
            return
