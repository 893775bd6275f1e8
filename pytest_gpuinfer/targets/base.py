"""What every target hands to tests, and the readiness wait shared by all of them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuinfer.targets.process import ManagedProcess


class TargetError(Exception):
    """A target could not be started, reached or stopped; the message is the whole story."""


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
    process: ManagedProcess | None = field(default=None, repr=False)
    is_simulator: bool = False

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


def wait_until_ready(
    base_url: str,
    *,
    timeout_s: float,
    headers: dict[str, str],
    exited: Callable[[], int | None] = lambda: None,
    describe_failure: Callable[[str], str] = lambda reason: reason,
    poll_s: float = 0.5,
) -> Readiness:
    """Poll /health then /v1/models until both answer; fail at once if the server exits."""
    started = time.monotonic()
    deadline = started + timeout_s
    last_problem = "no answer yet"
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
            status, _ = http_get_json(f"{base_url}/health", headers=headers, timeout=per_call)
            if status != 200:
                last_problem = f"GET /health answered {status}"
            else:
                status, models = http_get_json(
                    f"{base_url}/v1/models", headers=headers, timeout=per_call
                )
                if status == 200 and isinstance(models, dict) and models.get("data"):
                    return Readiness(
                        model_ids=[str(m.get("id")) for m in models["data"]],
                        max_model_len=_max_len(models["data"][0]),
                        version=_engine_version(base_url, headers, per_call),
                        seconds=time.monotonic() - started,
                    )
                last_problem = f"GET /v1/models answered {status} with {str(models)[:200]}"
        except (OSError, ValueError) as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


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
