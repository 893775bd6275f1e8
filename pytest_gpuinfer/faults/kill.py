"""Kill part of a launched engine and time its recovery: the processes by role, the kill, MTTR.

vLLM runs as three processes in one process group (field notes): the API server (the group's
leader), ``VLLM::EngineCore`` and ``VLLM::Worker``. :func:`engine_processes` finds them by the
titles vLLM gives them; :func:`kill_role` sends a signal to one role; :func:`time_until_serving`
measures how long until a completion succeeds again (on the same server, or on a restarted one).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import psutil

ROLES = {
    "api_server": "the API server (the process the launcher started)",
    "engine_core": "VLLM::EngineCore",
    "worker": "VLLM::Worker",
}
"""The parts of a vLLM server a test can kill, and how each is recognised."""


class KillError(RuntimeError):
    """The process to kill was not found; the message lists what the group holds."""


def group_processes(pgid: int) -> list[psutil.Process]:
    """Every live process in process group ``pgid``."""
    found = []
    for process in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def _title(process: psutil.Process) -> str:
    """The process title (vLLM renames its engine processes), else its command line."""
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline()) or process.name()
    return ""


def engine_processes(leader_pid: int) -> dict[str, list[psutil.Process]]:
    """The server's processes by role (``api_server``, ``engine_core``, ``worker``)."""
    roles: dict[str, list[psutil.Process]] = {role: [] for role in ROLES}
    for process in group_processes(os.getpgid(leader_pid)):
        title = _title(process)
        if process.pid == leader_pid:
            roles["api_server"].append(process)
        elif title.startswith("VLLM::EngineCore"):
            roles["engine_core"].append(process)
        elif title.startswith("VLLM::Worker"):
            roles["worker"].append(process)
    return roles


def kill_role(leader_pid: int, role: str, signum: int = signal.SIGKILL) -> list[int]:
    """Send ``signum`` to every process of ``role``; their pids (KillError when none)."""
    if role not in ROLES:
        raise KillError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
    roles = engine_processes(leader_pid)
    targets = roles[role]
    if not targets:
        present = {name: [p.pid for p in procs] for name, procs in roles.items()}
        raise KillError(f"no {ROLES[role]} process in the server's group; found {present}")
    for process in targets:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)
    return [p.pid for p in targets]


@dataclass(frozen=True)
class Recovery:
    """How long until the server (or its replacement) served a completion again."""

    mttr_s: float
    """From the kill to the first successful completion afterwards."""
    restarted: bool
    """True when a new server had to be launched."""
    attempts: int

    def line(self) -> str:
        """One line for reports."""
        how = "on a restarted server" if self.restarted else "on the same server"
        return f"MTTR {self.mttr_s:.1f} s ({how}, {self.attempts} probes)"


def completion_succeeds(base_url: str, model: str, timeout_s: float = 10.0) -> bool:
    """True when a one-token completion answers 200 with a choice."""
    body = {"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    try:
        response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=timeout_s)
        return response.status_code == 200 and bool(response.json().get("choices"))
    except (httpx.HTTPError, ValueError):
        return False


def time_until_serving(
    killed_at: float,
    base_url: str,
    model: str,
    *,
    dead: Callable[[], bool],
    restart: Callable[[], tuple[str, str]],
    timeout_s: float = 300.0,
    poll_s: float = 0.5,
) -> Recovery:
    """Probe until a completion succeeds; once ``dead()`` says the server is gone, ``restart()``
    (returning the new base URL and model) and probe that one. ``killed_at`` is a monotonic time."""
    restarted = False
    attempts = 0
    deadline = killed_at + timeout_s
    while time.monotonic() < deadline:
        attempts += 1
        if completion_succeeds(base_url, model):
            return Recovery(time.monotonic() - killed_at, restarted, attempts)
        if not restarted and dead():
            base_url, model = restart()
            restarted = True
            continue
        time.sleep(poll_s)
    raise TimeoutError(f"nothing served a completion within {timeout_s:.0f} s of the kill")
