"""A server process we launched: its own session and process group, a log file, group teardown."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it if the launching process dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")


def _child_setup(nice: int) -> Callable[[], None]:
    """What the child runs before exec: die with the parent, then lower its own priority."""

    def setup() -> None:
        _die_with_parent()
        if nice:
            with contextlib.suppress(OSError):
                os.nice(nice)

    return setup


def lower_autogroup_priority(pid: int, nice: int) -> str:
    """Set the nice value of the scheduler autogroup of ``pid`` (a session leader); return what
    was done in words ("" when autogroups are off or ``nice`` is 0).

    With autogroups on (most distributions), the kernel shares CPU time between sessions first,
    so a process's own nice value does not weigh against a process in another session: a server
    launched in a session of its own competes with the load client as an equal however it is
    reniced. Writing the group's nice is what lowers it (docs/perf.md has the measurements).
    """
    if not nice:
        return ""
    try:
        enabled = AUTOGROUP_SWITCH.read_text().strip() == "1"
    except OSError:
        return ""
    if not enabled:
        return ""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except OSError as exc:
        return f"its autogroup left as it was ({exc.strerror or exc})"
    return "its session's autogroup too"


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def read_log_tail(path: Path, lines: int = 100) -> str:
    """The last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        with path.open("r", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except FileNotFoundError:
        return ""


class ManagedProcess:
    """One launched server command, running in a new session so the whole group can be signalled."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        nice: int = 0,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_child_setup(nice),
        )
        self.pgid = self.popen.pid  # a new session's leader has pgid == pid
        self.cpu_priority = ""
        """The lowered CPU priority in words ("" when left equal to this process's)."""
        if nice:
            group = lower_autogroup_priority(self.popen.pid, nice)
            self.cpu_priority = f"nice {nice}" + (f", {group}" if group else "")

    @property
    def pid(self) -> int:
        """The launched command's process id (also its process group id)."""
        return self.popen.pid

    def returncode(self) -> int | None:
        """Exit status of the launched command, or None while it runs."""
        return self.popen.poll()

    def log_tail(self, lines: int = 100) -> str:
        """The last lines the server wrote to stdout and stderr."""
        self._log.flush()
        return read_log_tail(self.log_path, lines)

    def group_alive(self) -> bool:
        """True while any process of the group is left (the engine's children included)."""
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after ``grace_s``.

        Descendants that left the group (a worker that called setsid) are found beforehand with
        psutil and killed too, so nothing the server started outlives it.
        """
        escaped = self._escaped_descendants()
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            self.popen.poll()
            if not self.group_alive():
                break
            time.sleep(0.1)
        else:
            self._signal_group(signal.SIGKILL)
            kill_deadline = time.monotonic() + 5.0
            while self.group_alive() and time.monotonic() < kill_deadline:
                self.popen.poll()
                time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1.0)
        for child in escaped:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self._log.close()

    def _escaped_descendants(self) -> list[psutil.Process]:
        """Processes the server started that are no longer in its process group."""
        try:
            children = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            return []
        escaped = []
        for child in children:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(child.pid) != self.pgid:
                    escaped.append(child)
        return escaped

    def _signal_group(self, signum: int) -> None:
        """Send ``signum`` to every process of the group, ignoring a group already gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)
