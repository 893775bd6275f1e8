"""The batch engines' sweep: stray processes killed, only our /dev/shm files removed."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import psutil
import pytest

from pytest_gpuinfer.batch.cleanup import SHM_DIR, ProcessWatch

# A parent that starts a grandchild in a new session (as Ray starts its daemons), maps a new
# /dev/shm file and unlinks nothing, then both sleep.
LEAKER = """
import mmap, os, subprocess, sys, time
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(b"x" * 4096)
f = open(path, "r+b")
m = mmap.mmap(f.fileno(), 4096)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm (Linux)")
def test_sweep_kills_orphans_and_removes_only_our_shm_files() -> None:
    ours = SHM_DIR / f"psm_gpuinfer_test_{uuid.uuid4().hex[:8]}"
    theirs = SHM_DIR / f"psm_gpuinfer_other_{uuid.uuid4().hex[:8]}"
    theirs.write_bytes(b"y")
    watch = ProcessWatch([], interval_s=0.1)  # lists /dev/shm before the run
    proc = subprocess.Popen(
        [sys.executable, "-c", LEAKER, str(ours)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        watch.add_root(proc.pid)
        watch.start()
        time.sleep(0.5)
        grandchildren = psutil.Process(proc.pid).children(recursive=True)
        assert grandchildren, "the leaker's child did not start"
        proc.kill()  # the parent dies: its child is orphaned and its file stays
        proc.wait(timeout=10)
        leftovers = watch.sweep(grace_s=5.0)
        assert leftovers.clean, leftovers.describe()
        assert str(ours) in leftovers.removed_shm_files
        assert not ours.exists()
        assert theirs.exists(), "a file the run never used was removed"
        assert not any(c.is_running() and c.status() != "zombie" for c in grandchildren)
        assert any("SIGTERM" in line for line in leftovers.killed)
    finally:
        proc.kill()
        ours.unlink(missing_ok=True)
        theirs.unlink(missing_ok=True)


def test_sweep_of_a_clean_run_reports_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    watch = ProcessWatch([proc.pid], interval_s=0.1).start()
    proc.wait(timeout=10)
    leftovers = watch.sweep()
    assert leftovers.clean and not leftovers.killed and not leftovers.removed_shm_files
    assert leftovers.describe() == "nothing left behind"
