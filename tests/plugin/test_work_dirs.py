"""Run work folders: finished runs' folders beyond the newest few are removed, live ones never."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pytest_gpuinfer.plugin import work_dirs


def finished_folder(base: Path, name: str, age_s: float) -> Path:
    """A folder whose owner process has exited, last modified ``age_s`` ago."""
    path = base / f"{work_dirs.PREFIX}{name}"
    path.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (path / work_dirs.OWNER_FILE).write_text(dead)
    (path / "server.log").write_text("log")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_old_finished_folders_go_newest_and_live_ones_stay(tmp_path: Path) -> None:
    """Five finished runs: the three newest stay; a live run's folder and a new one stay."""
    finished = [finished_folder(tmp_path, f"old{i}", age_s=100.0 * i) for i in range(5)]
    live = tmp_path / f"{work_dirs.PREFIX}live"
    live.mkdir()
    (live / work_dirs.OWNER_FILE).write_text(str(os.getpid()))
    stamp = time.time() - 10_000
    os.utime(live, (stamp, stamp))
    unrelated = tmp_path / "pytest-of-someone"
    unrelated.mkdir()

    made = work_dirs.new_work_dir(tmp_path)

    assert made.is_dir() and (made / work_dirs.OWNER_FILE).read_text() == str(os.getpid())
    assert [p.exists() for p in finished] == [True, True, True, False, False]
    assert live.is_dir() and unrelated.is_dir()


def test_folder_without_owner_file_counts_as_finished(tmp_path: Path) -> None:
    """Folders of older versions (no owner file) are removed like finished ones."""
    legacy = tmp_path / f"{work_dirs.PREFIX}legacy"
    legacy.mkdir()
    assert work_dirs.remove_finished(tmp_path, keep=0) == [legacy]
    assert not legacy.exists()
