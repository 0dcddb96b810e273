"""Telling a folder or file another process is still writing from one a killed process left behind.

A writer (an export's build folder, a compiled-model cache entry being built, a bulk run's
partial results) locks what it writes while it writes and puts its pid in its name. The pid alone is no proof: a
process killed as a container's pid 1 (or any pid, later) leaves a pid that another process
holds again, so a folder is abandoned when no one holds its lock; where there are no such
locks (Windows), or for a folder never locked, the pid says.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: folders are told abandoned by their pid alone
    fcntl = None  # type: ignore[assignment]

# A folder this young may be one whose writer has made it and not yet locked it.
LOCK_SETTLED_S = 10.0


def lock_path(path: Path) -> int | None:
    """A descriptor of a folder or file holding an exclusive lock on it (released when closed, or
    when the process ends however it ends), or None where there are no such locks: its pid then says."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def abandoned(folder: Path, pid: int, unlocked: bool = False) -> bool:
    """Whether no process is writing `folder` (or file) any more, its writer being `pid`; `unlocked`:
    a folder its writer never locks (an export's replaced artifact, removed within the
    commit that made it), which goes by the pid."""
    if unlocked or fcntl is None or folder.is_symlink():
        return not process_alive(pid)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        if time.time() - os.fstat(fd).st_ctime < LOCK_SETTLED_S and process_alive(pid):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # its writer holds the lock: still writing
        return False
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether a process of this pid runs (another user's too)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's
        pass
    return True
