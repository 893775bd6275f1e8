"""Each run's work folder (server logs, converted models) and the removal of old ones.

A run's folder outlives it, so that the log a failure names can still be read; like pytest's own
``basetemp`` retention, only the newest few finished runs' folders are kept. A folder is "finished"
when the process that made it (its ``owner.pid``) is gone: a folder of a run still going (another
session, an xdist worker) is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "pytest-gpuinfer-"
"""Name prefix of a run's work folder under the temporary directory."""
OWNER_FILE = "owner.pid"
"""The file in each folder naming the process that made it."""
KEEP_FINISHED = 3
"""How many finished runs' folders stay, newest first."""


def new_work_dir(root: Path | None = None, keep: int = KEEP_FINISHED) -> Path:
    """Make this run's folder under ``root`` (the temporary directory) and remove old ones."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    (path / OWNER_FILE).write_text(str(os.getpid()))
    remove_finished(base, keep=keep, spare=path)
    return path


def remove_finished(base: Path, keep: int, spare: Path | None = None) -> list[Path]:
    """Remove the folders of finished runs under ``base`` beyond the newest ``keep``; return them.
    Folders without an owner file (older versions) count as finished."""
    finished = []
    for path in base.glob(f"{PREFIX}*"):
        if path == spare or not path.is_dir() or _owner_alive(path):
            continue
        with contextlib.suppress(OSError):
            finished.append((path.stat().st_mtime, path))
    finished.sort(reverse=True)
    removed = []
    for _, path in finished[keep:]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _owner_alive(path: Path) -> bool:
    """True when the process named in the folder's owner file still runs."""
    try:
        pid = int((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
