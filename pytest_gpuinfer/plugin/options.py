"""The plugin's options: declared once, read from command line or ini, validated into Settings."""

from __future__ import annotations

import os
import shlex
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuinfer.metrics.slo import SLO, SLOSyntaxError, parse_slos
from pytest_gpuinfer.targets.process import port_in_use

ENGINES = ("vllm", "sim", "command")
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
        "--gpu",
        "gpuinfer_gpu",
        "GPUs to use: indexes or UUIDs, comma-separated (e.g. 0,1).",
        metavar="IDS",
    ),
    OptionSpec(
        "--endpoint",
        "gpuinfer_endpoint",
        "Attach to a running OpenAI-compatible server at URL; nothing is launched or stopped.",
        metavar="URL",
    ),
    OptionSpec(
        "--engine",
        "gpuinfer_engine",
        f"Engine to launch: {', '.join(ENGINES)} (sim is a simulator, not a real engine; "
        "command runs --server-command). Default: vllm.",
        default="vllm",
        metavar="NAME",
    ),
    OptionSpec(
        "--server-command",
        "gpuinfer_server_command",
        "With --engine command: the server's command line, with {port}, {host} and {model} "
        "filled in, e.g. 'python -m sglang.launch_server --model-path {model} --port {port}'.",
        metavar="CMD",
    ),
    OptionSpec(
        "--model",
        "gpuinfer_model",
        "Model path or id to serve. Default: the built-in tiny model, written offline.",
        metavar="PATH",
    ),
    OptionSpec(
        "--engine-arg",
        "gpuinfer_engine_args",
        "Extra argument passed through to the launched server (repeatable), "
        "e.g. --engine-arg=--max-model-len=2048.",
        kind="args",
        default=(),
        metavar="ARG",
    ),
    OptionSpec(
        "--server-timeout",
        "gpuinfer_server_timeout",
        f"Seconds to wait for the server to become ready (default {DEFAULT_SERVER_TIMEOUT_S:.0f}).",
        kind="float",
        default=DEFAULT_SERVER_TIMEOUT_S,
        metavar="SECONDS",
    ),
    OptionSpec(
        "--server-port",
        "gpuinfer_server_port",
        "Port for the launched server on 127.0.0.1 (default: a free one).",
        kind="int",
        metavar="PORT",
    ),
    OptionSpec(
        "--server-scope",
        "gpuinfer_server_scope",
        f"Scope of the inference_server fixture: {', '.join(SERVER_SCOPES)} (default session, "
        "so the model stays loaded).",
        default="session",
        metavar="SCOPE",
    ),
    OptionSpec(
        "--api-key",
        "gpuinfer_api_key",
        "API key for the server (default: $OPENAI_API_KEY). Never printed or written to reports.",
        metavar="KEY",
    ),
    OptionSpec(
        "--slo",
        "gpuinfer_slo",
        "SLO applied to every load_runner run (repeatable; comma-separated allowed), "
        "e.g. --slo 'ttft_p95<500ms' --slo 'error_rate<0.1%'. Grammar: docs/metrics.md.",
        kind="args",
        default=(),
        metavar="EXPR",
    ),
    OptionSpec(
        "--gpuinfer-report",
        "gpuinfer_report",
        "Directory for machine-readable results (one JSON file per load run).",
        metavar="DIR",
    ),
    OptionSpec(
        "--min-driver-version",
        "gpuinfer_min_driver_version",
        "Lowest acceptable NVIDIA driver version for the compat environment checks (e.g. 550.54).",
        metavar="VERSION",
    ),
    OptionSpec(
        "--min-cuda-version",
        "gpuinfer_min_cuda_version",
        "Lowest acceptable CUDA version the driver supports (e.g. 12.4).",
        metavar="VERSION",
    ),
    OptionSpec(
        "--max-cold-start",
        "gpuinfer_max_cold_start",
        "Fail the cold-start check when launch-to-first-completion takes longer (seconds).",
        kind="float",
        metavar="SECONDS",
    ),
    OptionSpec(
        "--model-manifest",
        "gpuinfer_model_manifest",
        "sha256 manifest of the model files: verified when it exists, written when "
        "--write-model-manifest is given.",
        metavar="PATH",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Validated plugin settings for one pytest run."""

    engine: str = "vllm"
    endpoint: str | None = None
    model: str | None = None
    engine_args: tuple[str, ...] = ()
    server_command: tuple[str, ...] = ()
    server_timeout_s: float = DEFAULT_SERVER_TIMEOUT_S
    server_port: int | None = None
    server_scope: str = "session"
    gpu: str | None = None
    api_key: str | None = field(default=None, repr=False)
    slos: tuple[SLO, ...] = ()
    report_dir: Path | None = None
    min_driver_version: str | None = None
    min_cuda_version: str | None = None
    max_cold_start_s: float | None = None
    model_manifest: str | None = None
    write_model_manifest: bool = False

    @property
    def uses_builtin_model(self) -> bool:
        """True when no model was given, so the built-in one is served."""
        return self.model is None and self.endpoint is None


def add_options(parser: pytest.Parser) -> None:
    """Register every option and its ini key under one ``gpuinfer`` help group."""
    group = parser.getgroup("gpuinfer", "pytest-gpuinfer: LLM inference server testing")
    group.addoption(
        "--write-model-manifest",
        action="store_true",
        dest="gpuinfer_write_model_manifest",
        help="Write the --model-manifest file from the current model files instead of checking it.",
    )
    for spec in OPTIONS:
        repeatable = spec.kind == "args"
        group.addoption(
            spec.flag,
            action="append" if repeatable else "store",
            dest=spec.ini,
            default=None,
            metavar=spec.metavar,
            help=spec.help.replace("%", "%%"),  # argparse formats help with %
        )
        if repeatable:
            parser.addini(spec.ini, spec.help, type="args", default=[])
        else:
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


def _check_server_command(engine: str, value: Any) -> tuple[str, ...]:
    """Split --server-command; it is required with --engine command and only allowed with it."""
    if engine != "command":
        if value:
            raise pytest.UsageError("--server-command is only used with --engine command")
        return ()
    if not value:
        raise pytest.UsageError(
            "--engine command needs --server-command 'CMD' with {port} in it, e.g. "
            "'python -m sglang.launch_server --model-path {model} --port {port}'"
        )
    try:
        words = tuple(shlex.split(str(value)))
    except ValueError as exc:
        raise pytest.UsageError(f"--server-command {value!r} cannot be split: {exc}") from None
    if not any("{port}" in word for word in words):
        raise pytest.UsageError(
            f"--server-command {value!r} has no {{port}} placeholder; the plugin picks the port"
        )
    for word in words:
        try:
            word.format(port=0, host="", model="")
        except (KeyError, IndexError, ValueError) as exc:
            raise pytest.UsageError(
                f"--server-command word {word!r} has an unknown placeholder ({exc}); "
                "use {port}, {host} and {model}"
            ) from None
    return words


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
    server_command = _check_server_command(engine, values["gpuinfer_server_command"])
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
            f"--server-scope {scope!r} is not a pytest scope; "
            f"choose one of {', '.join(SERVER_SCOPES)}"
        )
    api_key = values["gpuinfer_api_key"] or os.environ.get("OPENAI_API_KEY") or None
    gpu = values["gpuinfer_gpu"]
    for key in ("gpuinfer_min_driver_version", "gpuinfer_min_cuda_version"):
        if values[key] is not None:
            parse_version(str(values[key]), _spec(key).flag)
    cold = values["gpuinfer_max_cold_start"]
    max_cold = _number(_spec("gpuinfer_max_cold_start"), cold) if cold is not None else None
    if max_cold is not None and max_cold <= 0:
        raise pytest.UsageError(f"--max-cold-start must be positive, got {max_cold:g}")
    try:
        slos = tuple(parse_slos(str(text) for text in values["gpuinfer_slo"] or ()))
    except SLOSyntaxError as exc:
        raise pytest.UsageError(f"--slo: {str(exc).splitlines()[0]}") from None
    report = values["gpuinfer_report"]
    return Settings(
        engine=engine,
        endpoint=endpoint,
        model=str(model) if model else None,
        engine_args=_split_engine_args(values["gpuinfer_engine_args"]),
        server_command=server_command,
        server_timeout_s=timeout,
        server_port=port,
        server_scope=scope,
        gpu=str(gpu).strip() if gpu else None,
        api_key=api_key,
        slos=slos,
        report_dir=Path(str(report)).expanduser().resolve() if report else None,
        min_driver_version=values["gpuinfer_min_driver_version"],
        min_cuda_version=values["gpuinfer_min_cuda_version"],
        max_cold_start_s=max_cold,
        model_manifest=values["gpuinfer_model_manifest"],
        write_model_manifest=bool(config.getoption("gpuinfer_write_model_manifest")),
    )


def parse_version(text: str, flag: str = "version") -> tuple[int, ...]:
    """Parse a dotted version like '550.54.15' into integers; a bad one is a usage error."""
    try:
        return tuple(int(part) for part in text.strip().split("."))
    except ValueError:
        raise pytest.UsageError(
            f"{flag} expects a dotted version like 12.4, got {text!r}"
        ) from None
