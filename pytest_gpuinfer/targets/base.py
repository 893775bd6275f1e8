"""What every target hands to tests, and the readiness wait shared by all of them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pytest_gpuinfer.hardware.gpu import GPUInfo


class TargetError(Exception):
    """A target could not be started, reached or stopped; the message is the whole story."""


class ServerHandle(Protocol):
    """What the plugin needs of a launched server: a process group, a container, ..."""

    @property
    def pid(self) -> int | None:
        """The server's main process id on this machine, when there is one."""
        ...

    @property
    def log_path(self) -> Path | None:
        """Where the server's log is kept, when it is a file."""
        ...

    def returncode(self) -> int | None:
        """Exit status once the server has exited, None while it runs."""
        ...

    def log_tail(self, lines: int = 100) -> str:
        """The last lines the server wrote."""
        ...

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the server and everything it started; safe to call twice."""
        ...


@dataclass(frozen=True)
class LaunchContext:
    """Everything a launcher needs to start an engine: the run's options and where to put it."""

    engine: str
    port: int
    work_dir: Path
    model: str | None = None
    """Model path or id; None serves the built-in model."""
    engine_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the server (on top of this process's)."""
    server_command: tuple[str, ...] = ()
    image: str | None = None
    host: str = "127.0.0.1"
    timeout_s: float = 600.0
    api_key: str | None = field(default=None, repr=False)
    gpus: tuple[GPUInfo, ...] = ()
    has_gpu: bool = False
    server_nice: int = 0
    """CPU priority (nice, 0-19) of a server launched here, its autogroup included (0: equal to
    the load client's)."""

    @property
    def client_host(self) -> str:
        """Where this machine's clients reach the server: the bound address, or the loopback
        address when the server listens on every interface."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host


@dataclass
class InferenceServer:
    """A running OpenAI-compatible server that tests talk to."""

    base_url: str
    """Root URL without a trailing slash, e.g. ``http://127.0.0.1:8000``."""
    model: str
    """The served model name to put in requests."""
    engine: str
    """Engine label: ``vllm``, ``sim`` (the simulator), or what an endpoint reported."""
    engine_version: str | None = None
    model_path: str | None = None
    """Local model directory when known (launched targets)."""
    max_model_len: int | None = None
    """The context length the server reports in ``/v1/models``, when it does."""
    launched: bool = False
    """True when this run started the server (and will stop it)."""
    cold_start_s: float | None = None
    """Seconds from launch to the first successful readiness check (launched targets)."""
    gpu_uuids: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    process: ServerHandle | None = field(default=None, repr=False)
    """The launched server's handle (process group or container); None when attached."""
    is_simulator: bool = False
    cpu_priority: str = ""
    """The launched server's lowered CPU priority in words ("" when equal to the client's)."""

    def auth_headers(self) -> dict[str, str]:
        """Headers that carry the API key (empty when none is set)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, lines: int = 100) -> str:
        """The server's last log lines (empty for attached endpoints, whose logs we cannot see)."""
        return self.process.log_tail(lines) if self.process else ""

    def alive(self) -> bool:
        """False once a launched server has exited; attached endpoints are assumed alive."""
        return self.process is None or self.process.returncode() is None

    def describe(self) -> str:
        """One line naming engine, version, model and URL, for headers and summaries."""
        if self.is_simulator:
            engine = f"{self.engine} (simulator, not a real engine)"
        else:
            engine = f"{self.engine} {self.engine_version}" if self.engine_version else self.engine
        return f"{engine}, model {self.model} at {self.base_url}"


def http_get_json(url: str, *, headers: dict[str, str], timeout: float) -> tuple[int, Any]:
    """GET ``url`` and return (status, parsed JSON or None); raise OSError when unreachable."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        status = int(exc.code)
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


@dataclass
class Readiness:
    """What the readiness wait learned about the server."""

    model_ids: list[str]
    max_model_len: int | None
    version: str | None
    seconds: float
    health_route: str | None = "/health"
    """``/health`` when the server has it; None when readiness came from ``/v1/models``."""
    model_entries: list[dict[str, Any]] = field(default_factory=list)
    """The ``/v1/models`` entries as the server sent them."""


NOT_THERE = frozenset({404, 405})
"""Answers meaning "no such route" (a definite answer, not "not ready yet")."""


def wait_until_ready(
    base_url: str,
    *,
    timeout_s: float,
    headers: dict[str, str],
    exited: Callable[[], int | None] = lambda: None,
    describe_failure: Callable[[str], str] = lambda reason: reason,
    poll_s: float = 0.5,
) -> Readiness:
    """Poll until the server serves a model; fail at once if it exits or a route is missing.

    ``/health`` (not an OpenAI route) decides readiness where the server has it: 200 ready, 503
    and the like "still loading". A 404/405 there means the route does not exist, and
    ``/v1/models`` listing a model decides instead. A 404/405 on ``/v1/models`` is definite too:
    the URL is not an OpenAI-compatible server root, and waiting longer will not change it.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last_problem = "no answer yet"
    health_route: str | None = "/health"
    while True:
        code = exited()
        if code is not None:
            raise TargetError(
                describe_failure(f"the server exited with code {code} before it was ready")
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TargetError(
                describe_failure(
                    f"the server was not ready after {timeout_s:.0f} s "
                    f"(raise --server-timeout if it is just slow); last check: {last_problem}"
                )
            )
        per_call = max(0.2, min(5.0, remaining))
        try:
            ready = True
            if health_route is not None:
                status, _ = http_get_json(
                    f"{base_url}{health_route}", headers=headers, timeout=per_call
                )
                if status in NOT_THERE:
                    health_route = None
                elif status != 200:
                    last_problem = f"GET /health answered {status}"
                    ready = False
            if ready:
                status, models = http_get_json(
                    f"{base_url}/v1/models", headers=headers, timeout=per_call
                )
                entries = _model_entries(models) if status == 200 else []
                if entries:
                    return Readiness(
                        model_ids=[str(m.get("id")) for m in entries],
                        max_model_len=_max_len(entries[0]),
                        version=_engine_version(base_url, headers, per_call),
                        seconds=time.monotonic() - started,
                        health_route=health_route,
                        model_entries=entries,
                    )
                last_problem = f"GET /v1/models answered {status} with {str(models)[:200]}"
                if status in NOT_THERE:
                    raise TargetError(
                        describe_failure(
                            f"GET {base_url}/v1/models answered {status}"
                            + ("" if health_route else " and GET /health answered 404")
                            + ": this is not the root of an OpenAI-compatible server (give the "
                            "URL without /v1), or it does not serve /v1/models"
                        )
                    )
        except (OSError, ValueError) as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _model_entries(models: Any) -> list[dict[str, Any]]:
    """The entries of a ``/v1/models`` answer (empty when it lists none)."""
    if not isinstance(models, dict) or not isinstance(models.get("data"), list):
        return []
    return [entry for entry in models["data"] if isinstance(entry, dict)]


def _max_len(model_entry: dict[str, Any]) -> int | None:
    """The context length a ``/v1/models`` entry reports (vLLM: ``max_model_len``)."""
    for key in ("max_model_len", "context_length", "max_context_length"):
        value = model_entry.get(key)
        if isinstance(value, int):
            return value
    return None


def _engine_version(base_url: str, headers: dict[str, str], timeout: float) -> str | None:
    """The version a server reports at ``/version`` (vLLM does), or None."""
    try:
        status, body = http_get_json(f"{base_url}/version", headers=headers, timeout=timeout)
    except (OSError, ValueError):
        return None
    if status == 200 and isinstance(body, dict) and isinstance(body.get("version"), str):
        return str(body["version"])
    return None
