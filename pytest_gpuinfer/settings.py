"""The plugin's options: declared once, read from command line or ini, validated into Settings."""

from __future__ import annotations

import os
import shlex
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .targets.process import port_in_use

ENGINES = ("vllm", "sim")
"""Engines the plugin can launch; ``--endpoint`` attaches to any OpenAI-compatible server."""

SERVER_SCOPES = ("session", "package", "module", "class", "function")

DEFAULT_SERVER_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class OptionSpec:
    """One option: its command-line flag, ini key, help text and parsing."""

    flag: str
    ini: str
    help: str
    kind: str = "string"  # string | args | float | int
    default: Any = None
    metavar: str | None = None


OPTIONS = (
    OptionSpec(
        "--gpu", "gpuinfer_gpu", "GPUs to use: indexes or UUIDs, comma-separated (e.g. 0,1).",
        metavar="IDS",
    ),
    OptionSpec(
        "--endpoint", "gpuinfer_endpoint",
        "Attach to a running OpenAI-compatible server at URL; nothing is launched or stopped.",
        metavar="URL",
    ),
    OptionSpec(
        "--engine", "gpuinfer_engine",
        f"Engine to launch: {', '.join(ENGINES)} (sim is a simulator, not a real engine). "
        "Default: vllm.",
        default="vllm", metavar="NAME",
    ),
    OptionSpec(
        "--model", "gpuinfer_model",
        "Model path or id to serve. Default: the built-in tiny model, written offline.",
        metavar="PATH",
    ),
    OptionSpec(
        "--engine-arg", "gpuinfer_engine_args",
        "Extra argument passed through to the launched server (repeatable), "
        "e.g. --engine-arg=--max-model-len=2048.",
        kind="args", default=(), metavar="ARG",
    ),
    OptionSpec(
        "--server-timeout", "gpuinfer_server_timeout",
        f"Seconds to wait for the server to become ready (default {DEFAULT_SERVER_TIMEOUT_S:.0f}).",
        kind="float", default=DEFAULT_SERVER_TIMEOUT_S, metavar="SECONDS",
    ),
    OptionSpec(
        "--server-port", "gpuinfer_server_port",
        "Port for the launched server on 127.0.0.1 (default: a free one).",
        kind="int", metavar="PORT",
    ),
    OptionSpec(
        "--server-scope", "gpuinfer_server_scope",
        f"Scope of the inference_server fixture: {', '.join(SERVER_SCOPES)} (default session, "
        "so the model stays loaded).",
        default="session", metavar="SCOPE",
    ),
    OptionSpec(
        "--api-key", "gpuinfer_api_key",
        "API key for the server (default: $OPENAI_API_KEY). Never printed or written to reports.",
        metavar="KEY",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Validated plugin settings for one pytest run."""

    engine: str = "vllm"
    endpoint: str | None = None
    model: str | None = None
    engine_args: tuple[str, ...] = ()
    server_timeout_s: float = DEFAULT_SERVER_TIMEOUT_S
    server_port: int | None = None
    server_scope: str = "session"
    gpu: str | None = None
    api_key: str | None = field(default=None, repr=False)

    @property
    def uses_builtin_model(self) -> bool:
        """True when no model was given, so the built-in one is served."""
        return self.model is None and self.endpoint is None


def add_options(parser: pytest.Parser) -> None:
    """Register every option and its ini key under one ``gpuinfer`` help group."""
    group = parser.getgroup("gpuinfer", "pytest-gpuinfer: LLM inference server testing")
    for spec in OPTIONS:
        dest = spec.ini
        if spec.kind == "args":
            group.addoption(spec.flag, action="append", dest=dest, default=None, metavar=spec.metavar,
                            help=spec.help)
            parser.addini(spec.ini, spec.help, type="args", default=[])
        else:
            group.addoption(spec.flag, action="store", dest=dest, default=None, metavar=spec.metavar,
                            help=spec.help)
            parser.addini(spec.ini, spec.help, default=None)


def _spec(ini: str) -> OptionSpec:
    """The option declared with ini key ``ini``."""
    return next(spec for spec in OPTIONS if spec.ini == ini)


def _raw(config: pytest.Config, spec: OptionSpec) -> Any:
    """Command line first, then ini, then the default."""
    value = config.getoption(spec.ini)
    if value is None or value == []:
        value = config.getini(spec.ini)
    if value is None or value == [] or value == "":
        return spec.default
    return value


def _number(spec: OptionSpec, value: Any) -> float:
    """Parse a numeric option, naming the option when the value is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"{spec.flag} expects a number, got {value!r}") from None


def _split_engine_args(values: Any) -> tuple[str, ...]:
    """Engine arguments as a flat tuple; each item may hold several shell-quoted words."""
    words: list[str] = []
    for item in values or ():
        words.extend(shlex.split(str(item)))
    return tuple(words)


def _check_endpoint(url: str) -> str:
    """Validate an ``--endpoint`` URL and return it without a trailing slash or /v1."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise pytest.UsageError(
            f"--endpoint {url!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:8000"
        )
    try:
        _ = parsed.port
    except ValueError:
        raise pytest.UsageError(f"--endpoint {url!r} has an invalid port") from None
    base = url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


def _looks_like_path(value: str) -> bool:
    """True when a model value is meant as a local path rather than a hub id like org/name."""
    if value.startswith(("/", ".", "~")) or os.sep + os.sep in value:
        return True
    return value.count("/") != 1


def _check_model(value: str) -> str:
    """A model path must exist; a hub-style id (org/name) is passed through for the engine."""
    expanded = os.path.expanduser(value)
    if os.path.exists(expanded):
        return str(Path(expanded).resolve())
    if _looks_like_path(value):
        raise pytest.UsageError(f"--model {value!r}: no such file or directory")
    return value


def load_settings(config: pytest.Config) -> Settings:
    """Read and validate all options; a bad value raises a one-line pytest.UsageError."""
    values = {spec.ini: _raw(config, spec) for spec in OPTIONS}
    engine = str(values["gpuinfer_engine"]).strip().lower()
    if engine not in ENGINES:
        raise pytest.UsageError(
            f"--engine {engine!r} is not known; choose one of: {', '.join(ENGINES)} "
            "(or use --endpoint URL to attach to any OpenAI-compatible server)"
        )
    endpoint = values["gpuinfer_endpoint"]
    endpoint = _check_endpoint(str(endpoint)) if endpoint else None
    model = values["gpuinfer_model"]
    if model and not endpoint:
        model = _check_model(str(model))
    timeout = _number(_spec("gpuinfer_server_timeout"), values["gpuinfer_server_timeout"])
    if timeout <= 0:
        raise pytest.UsageError(f"--server-timeout must be positive, got {timeout:g}")
    port_value = values["gpuinfer_server_port"]
    port: int | None = None
    if port_value is not None:
        number = _number(_spec("gpuinfer_server_port"), port_value)
        if not number.is_integer() or not 1 <= number <= 65535:
            raise pytest.UsageError(f"--server-port must be an integer 1-65535, got {port_value!r}")
        port = int(number)
        if not endpoint and port_in_use(port):
            raise pytest.UsageError(
                f"--server-port {port}: the port is already in use on 127.0.0.1; "
                "free it or omit --server-port to use a free one"
            )
    scope = str(values["gpuinfer_server_scope"]).strip().lower()
    if scope not in SERVER_SCOPES:
        raise pytest.UsageError(
            f"--server-scope {scope!r} is not a pytest scope; choose one of {', '.join(SERVER_SCOPES)}"
        )
    api_key = values["gpuinfer_api_key"] or os.environ.get("OPENAI_API_KEY") or None
    gpu = values["gpuinfer_gpu"]
    return Settings(
        engine=engine,
        endpoint=endpoint,
        model=str(model) if model else None,
        engine_args=_split_engine_args(values["gpuinfer_engine_args"]),
        server_timeout_s=timeout,
        server_port=port,
        server_scope=scope,
        gpu=str(gpu).strip() if gpu else None,
        api_key=api_key,
    )
