"""Start, steer and stop a fault proxy process (``python -m pytest_gpuinfer.faults``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from pytest_gpuinfer.faults.scenario import Fault

_LISTENING = re.compile(r"gpuinfer-faults: proxy 127\.0\.0\.1:(\d+) control 127\.0\.0\.1:(\d+)")


class FaultProxyError(RuntimeError):
    """The fault proxy could not start or answer; the message says why (with its output)."""


class FaultProxy:
    """A fault proxy process in front of one server: its URL, its scenario, its counts."""

    def __init__(
        self, process: subprocess.Popen[str], port: int, control_port: int, started_s: float
    ) -> None:
        self.process = process
        self.port = port
        self.control_port = control_port
        self.started_s = started_s
        """Seconds from spawning the process to its listening line."""
        self.faults: tuple[Fault, ...] = ()

    @classmethod
    def start(cls, upstream_url: str, *, seed: int = 0, timeout_s: float = 30.0) -> FaultProxy:
        """Spawn a proxy in front of ``upstream_url`` (http://host:port); wait until it listens."""
        parsed = urllib.parse.urlparse(upstream_url)
        if parsed.hostname is None or parsed.port is None:
            raise FaultProxyError(
                f"{upstream_url!r} has no host and port to put a proxy in front of"
            )
        command = [
            sys.executable,
            "-m",
            "pytest_gpuinfer.faults",
            "--upstream",
            f"{parsed.hostname}:{parsed.port}",
            "--seed",
            str(seed),
        ]
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        line = _read_line(process, timeout_s)
        match = _LISTENING.search(line)
        if match is None:
            process.kill()
            rest = process.communicate(timeout=5)[0]
            raise FaultProxyError(f"the fault proxy did not start: {(line + rest).strip()[-2000:]}")
        proxy = cls(process, int(match[1]), int(match[2]), time.monotonic() - started)
        return proxy

    @property
    def base_url(self) -> str:
        """The URL clients use instead of the server's."""
        return f"http://127.0.0.1:{self.port}"

    def command(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send one control command and return its JSON answer."""
        try:
            with socket.create_connection(("127.0.0.1", self.control_port), timeout=10) as sock:
                sock.sendall(json.dumps(body).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    data += piece
        except OSError as exc:
            raise FaultProxyError(f"the fault proxy's control port did not answer: {exc}") from None
        answer: dict[str, Any] = json.loads(data)
        if "error" in answer:
            raise FaultProxyError(f"the fault proxy refused {body.get('cmd')!r}: {answer['error']}")
        return answer

    def set(self, faults: Sequence[Fault], *, seed: int | None = None) -> None:
        """Apply a scenario from now on (its clock and the counts start again)."""
        body: dict[str, Any] = {"cmd": "set", "faults": [f.to_dict() for f in faults]}
        if seed is not None:
            body["seed"] = seed
        self.command(body)
        self.faults = tuple(faults)

    def clear(self) -> None:
        """No faults from now on: a plain proxy."""
        self.set(())

    def stats(self) -> dict[str, Any]:
        """Connections, exchanges and faults applied (by name) since the scenario was set."""
        return self.command({"cmd": "stats"})

    def stop(self) -> None:
        """Stop the proxy process (SIGTERM, then SIGKILL); safe to call twice."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The process's first output line, or what it said before exiting or the timeout."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                return process.stdout.readline()
            if process.poll() is not None:
                return process.stdout.read()
    return f"(nothing after {timeout_s:.0f} s)"
