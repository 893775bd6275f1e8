"""Find and remove what a batch run leaves behind: Ray and vLLM processes, ``/dev/shm`` files.

Ray's local instance and vLLM's engine start processes of their own (GCS, raylet, dashboard and
runtime-env agents, actors, ``VLLM::EngineCore``); killed from outside, some outlive their
parents, and every run leaves a ``/dev/shm/psm_*`` file (FIELD_NOTES). A :class:`ProcessWatch`
samples the worker's process tree while it runs, remembering every process (by pid and start
time, so a reused pid is never mistaken for ours) and every ``/dev/shm`` file those processes
map. :meth:`ProcessWatch.sweep` then kills the survivors and removes the files that no live
process maps any more: only files this run's processes were seen using, never anyone else's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]

from pytest_gpuinfer.batch.results import Leftovers

SHM_DIR = Path("/dev/shm")


def mapped_shm_files(pid: int) -> set[str]:
    """``/dev/shm`` files process ``pid`` has mapped (empty when it is gone or unreadable)."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    found: set[str] = set()
    for line in text.splitlines():
        at = line.find(" /dev/shm/")
        if at >= 0:
            found.add(line[at + 1 :].removesuffix(" (deleted)").strip())
    return found


def shm_in_use() -> set[str]:
    """Every ``/dev/shm`` file any live process maps (to never remove a file still in use)."""
    used: set[str] = set()
    for pid in psutil.pids():
        used |= mapped_shm_files(pid)
    return used


class ProcessWatch:
    """Remembers every process under ``roots`` and every shared-memory file they map."""

    def __init__(
        self, roots: Iterable[int], *, marker: str | None = None, interval_s: float = 0.5
    ) -> None:
        self.roots = list(roots)
        self.marker = marker
        """A string in the command line of processes that are ours even when orphaned (Ray's
        temporary directory)."""
        self.interval_s = interval_s
        self.seen: dict[tuple[int, float], str] = {}
        self.shm: set[str] = set()
        self.shm_before = self._shm_listing()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _shm_listing() -> set[str]:
        """Names in /dev/shm now."""
        try:
            return {str(p) for p in SHM_DIR.iterdir()}
        except OSError:
            return set()

    def add_root(self, pid: int) -> None:
        """Also watch the tree under ``pid``."""
        with self._lock:
            self.roots.append(pid)

    def sample(self) -> None:
        """Record the processes under the roots (and marked ones) and the files they map."""
        procs: list[psutil.Process] = []
        with self._lock:
            roots = list(self.roots)
        for pid in roots:
            try:
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        procs += self._marked()
        for proc in procs:
            try:
                key = (proc.pid, proc.create_time())
                name = proc.name()
            except psutil.Error:
                continue
            files = mapped_shm_files(proc.pid)
            with self._lock:
                self.seen.setdefault(key, name)
                self.shm |= files

    def _marked(self) -> list[psutil.Process]:
        """Processes whose command line carries the marker."""
        if not self.marker:
            return []
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if any(self.marker in part for part in cmdline):
                found.append(proc)
        return found

    def _run(self) -> None:
        """Thread body."""
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> ProcessWatch:
        """Sample now and then every ``interval_s`` on a daemon thread."""
        self.sample()
        self._thread = threading.Thread(target=self._run, name="gpuinfer-batch-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (after one last sample)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.sample()

    def alive(self) -> list[psutil.Process]:
        """Remembered processes still running (same pid and start time)."""
        procs = []
        with self._lock:
            keys = list(self.seen)
        for pid, created in keys:
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    procs.append(proc)
            except psutil.Error:
                continue
        seen_pids = {p.pid for p in procs}
        procs += [p for p in self._marked() if p.pid not in seen_pids and p.pid != os.getpid()]
        return procs

    def sweep(self, *, grace_s: float = 5.0) -> Leftovers:
        """Kill surviving processes (TERM, then KILL), remove our unused shm files, report."""
        self.stop()
        killed: list[str] = []
        survivors = self.alive()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not survivors:
                break
            for proc in survivors:
                with contextlib.suppress(psutil.Error):
                    killed.append(f"{proc.pid} {proc.name()} ({sig.name})")
                    proc.send_signal(sig)
            _gone, survivors = psutil.wait_procs(survivors, timeout=grace_s)
        remaining = [f"{p.pid} {_name(p)}" for p in self.alive()]
        created = {f for f in self.shm if f not in self.shm_before}
        existing = {f for f in created if Path(f).exists()}
        removed: list[str] = []
        if existing:
            in_use = shm_in_use()
            for path in sorted(existing - in_use):
                with contextlib.suppress(OSError):
                    Path(path).unlink()
                    removed.append(path)
        left = sorted(f for f in existing if Path(f).exists())
        return Leftovers(
            processes=tuple(remaining),
            shm_files=tuple(left),
            removed_shm_files=tuple(removed),
            killed=tuple(killed),
        )


def _name(proc: psutil.Process) -> str:
    """A process's name, or '?' when it just vanished."""
    try:
        return str(proc.name())
    except psutil.Error:
        return "?"


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait (bounded) for process ``pid`` to exit; True when it did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        time.sleep(0.1)
    return not psutil.pid_exists(pid)
