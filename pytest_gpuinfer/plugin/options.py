"""The plugin's options: declared once, read from command line or ini, validated into Settings.

Each option has a ``--gpuinfer-<name>`` flag that is always there and, when nobody else claims
it, the short form the card's commands use (``--gpu``, ``--model``, ``--endpoint``...): a
conftest that already defines ``--model`` keeps its own, and ours answers as ``--gpuinfer-model``.
Each option's value is parsed and checked in one place, by the parser its spec names.
"""

from __future__ import annotations

import copy
import os
import shlex
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuinfer.metrics.slo import SLO, SLOSyntaxError, parse_slos
from pytest_gpuinfer.targets.process import port_in_use

SERVER_SCOPES = ("session", "package", "module", "class", "function")

DEFAULT_SERVER_TIMEOUT_S = 600.0

GROUP = "gpuinfer"
GROUP_TITLE = "pytest-gpuinfer: LLM inference server testing"


class OptionValueError(ValueError):
    """A value an option cannot take; the message says what was expected."""


def _text(value: Any) -> str:
    """A string option, stripped."""
    return str(value).strip()


def _positive_float(value: Any) -> float:
    """A number above zero."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionValueError(f"expects a number, got {value!r}") from None
    if not number > 0:
        raise OptionValueError(f"must be positive, got {number:g}")
    return number


def _port(value: Any) -> int:
    """A TCP port number 1-65535."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionValueError(f"expects a number, got {value!r}") from None
    if not number.is_integer() or not 1 <= number <= 65535:
        raise OptionValueError(f"must be an integer 1-65535, got {value!r}")
    return int(number)


def _scope(value: Any) -> str:
    """A pytest fixture scope."""
    scope = str(value).strip().lower()
    if scope not in SERVER_SCOPES:
        raise OptionValueError(
            f"{scope!r} is not a pytest scope; choose one of {', '.join(SERVER_SCOPES)}"
        )
    return scope


def _endpoint(value: Any) -> str:
    """An http(s) URL with a host, returned without a trailing slash or /v1."""
    url = str(value)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise OptionValueError(
            f"{url!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:8000"
        )
    try:
        _ = parsed.port
    except ValueError:
        raise OptionValueError(f"{url!r} has an invalid port") from None
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _engine_args(values: Any) -> tuple[str, ...]:
    """Engine arguments as a flat tuple; each item may hold several shell-quoted words."""
    words: list[str] = []
    for item in values or ():
        try:
            words.extend(shlex.split(str(item)))
        except ValueError as exc:
            raise OptionValueError(f"value {item!r} cannot be split: {exc}") from None
    return tuple(words)


def _server_command(value: Any) -> tuple[str, ...]:
    """A command line with a {port} placeholder and no unknown ones."""
    try:
        words = tuple(shlex.split(str(value)))
    except ValueError as exc:
        raise OptionValueError(f"value {value!r} cannot be split: {exc}") from None
    if not any("{port}" in word for word in words):
        raise OptionValueError(f"{value!r} has no {{port}} placeholder; the plugin picks the port")
    for word in words:
        try:
            word.format(port=0, host="", model="")
        except (KeyError, IndexError, ValueError) as exc:
            raise OptionValueError(
                f"word {word!r} has an unknown placeholder ({exc}); use {{port}}, {{host}} "
                "and {model}"
            ) from None
    return words


def _looks_like_path(value: str) -> bool:
    """True when a model value is meant as a local path rather than a hub id like org/name."""
    if value.startswith(("/", ".", "~")) or os.sep + os.sep in value:
        return True
    return value.count("/") != 1


def _model(value: Any) -> str:
    """A model path that exists (made absolute), or a hub-style id passed through."""
    text = str(value)
    expanded = os.path.expanduser(text)
    if os.path.exists(expanded):
        return str(Path(expanded).resolve())
    if _looks_like_path(text):
        raise OptionValueError(f"{text!r}: no such file or directory")
    return text


def parse_version(text: str, flag: str = "version") -> tuple[int, ...]:
    """Parse a dotted version like '550.54.15' into integers; a bad one is a usage error."""
    try:
        return tuple(int(part) for part in text.strip().split("."))
    except ValueError:
        raise pytest.UsageError(
            f"{flag} expects a dotted version like 12.4, got {text!r}"
        ) from None


def _version(value: Any) -> str:
    """A dotted version, kept as text once it parses."""
    text = str(value).strip()
    try:
        tuple(int(part) for part in text.split("."))
    except ValueError:
        raise OptionValueError(f"expects a dotted version like 12.4, got {text!r}") from None
    return text


def _slos(values: Any) -> tuple[SLO, ...]:
    """SLO expressions (repeatable, comma-separated allowed) in the SLO language."""
    try:
        return tuple(parse_slos(str(text) for text in values or ()))
    except SLOSyntaxError as exc:
        raise OptionValueError(f"is malformed: {str(exc).splitlines()[0]}") from None


def _directory(value: Any) -> Path:
    """A directory path, made absolute (created when results are written)."""
    return Path(str(value)).expanduser().resolve()


@dataclass(frozen=True)
class OptionSpec:
    """One option: its name, ini key, help text, and the parser that checks its value."""

    name: str
    """The short flag without dashes, e.g. ``model`` for ``--model``."""
    help: str
    parse: Callable[[Any], Any] = _text
    default: Any = None
    metavar: str | None = None
    repeatable: bool = False
    flag_only: bool = False
    """A switch (store_true) with no ini key."""
    prefixed_only: bool = False
    """The name already starts with ``gpuinfer-``: there is no short alias."""

    @property
    def ini(self) -> str:
        """The ini key (also the argparse dest)."""
        stem = self.name.removeprefix("gpuinfer-").replace("-", "_")
        return f"gpuinfer_{stem}"

    @property
    def short_flag(self) -> str | None:
        """The card's short form (``--model``), when the option has one."""
        return None if self.prefixed_only else f"--{self.name}"

    @property
    def long_flag(self) -> str:
        """The namespaced form that never clashes (``--gpuinfer-model``)."""
        return f"--{self.name}" if self.prefixed_only else f"--gpuinfer-{self.name}"


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("gpu", "GPUs to use: indexes or UUIDs, comma-separated (e.g. 0,1).", metavar="IDS"),
    OptionSpec(
        "endpoint",
        "Attach to a running OpenAI-compatible server at URL; nothing is launched or stopped.",
        parse=_endpoint,
        metavar="URL",
    ),
    OptionSpec(
        "engine",
        "Engine to launch (see the engine list below; `sim` is a simulator, not a real engine). "
        "Default: vllm.",
        parse=lambda value: str(value).strip().lower(),
        default="vllm",
        metavar="NAME",
    ),
    OptionSpec(
        "server-command",
        "With --engine command: the server's command line, with {port}, {host} and {model} "
        "filled in, e.g. 'python -m sglang.launch_server --model-path {model} --port {port}'.",
        parse=_server_command,
        metavar="CMD",
    ),
    OptionSpec(
        "model",
        "Model path or id to serve. Default: the built-in tiny model, written offline.",
        metavar="PATH",
    ),
    OptionSpec(
        "image",
        "With --engine docker: the container image to run (default: the pinned vLLM image).",
        metavar="IMAGE",
    ),
    OptionSpec(
        "engine-arg",
        "Extra argument passed through to the launched server (repeatable), "
        "e.g. --engine-arg=--max-model-len=2048.",
        parse=_engine_args,
        default=(),
        metavar="ARG",
        repeatable=True,
    ),
    OptionSpec(
        "server-timeout",
        f"Seconds to wait for the server to become ready (default {DEFAULT_SERVER_TIMEOUT_S:.0f}).",
        parse=_positive_float,
        default=DEFAULT_SERVER_TIMEOUT_S,
        metavar="SECONDS",
    ),
    OptionSpec(
        "server-port",
        "Port for the launched server on 127.0.0.1 (default: a free one).",
        parse=_port,
        metavar="PORT",
    ),
    OptionSpec(
        "server-scope",
        f"Scope of the inference_server fixture: {', '.join(SERVER_SCOPES)} (default session, "
        "so the model stays loaded).",
        parse=_scope,
        default="session",
        metavar="SCOPE",
    ),
    OptionSpec(
        "api-key",
        "API key for the server (default: $OPENAI_API_KEY). Never printed or written to reports.",
        metavar="KEY",
    ),
    OptionSpec(
        "slo",
        "SLO applied to every load_runner run (repeatable; comma-separated allowed), "
        "e.g. --slo 'ttft_p95<500ms' --slo 'error_rate<0.1%'. Grammar: docs/metrics.md.",
        parse=_slos,
        default=(),
        metavar="EXPR",
        repeatable=True,
    ),
    OptionSpec(
        "allow-errors",
        "Let load runs pass with failed requests (by default any failed request fails the run "
        "unless an error_rate SLO sets the limit).",
        flag_only=True,
        default=False,
    ),
    OptionSpec(
        "burst",
        "Limit for every burst_runner run (repeatable), KEY=VALUE: allow_drops, max_recovery_s, "
        "max_queue, max_preemptions, p95_tolerance; a @pytest.mark.burst marker wins.",
        parse=lambda values: tuple(str(v) for v in values or ()),
        default=(),
        metavar="KEY=VALUE",
        repeatable=True,
    ),
    OptionSpec(
        "load-scale",
        "Multiply every load-shape duration by this factor (e.g. 0.1 in CI). Default 1.",
        parse=_positive_float,
        default=1.0,
        metavar="FACTOR",
    ),
    OptionSpec(
        "gpuinfer-report",
        "Directory for machine-readable results (one JSON file per load run).",
        parse=_directory,
        metavar="DIR",
        prefixed_only=True,
    ),
    OptionSpec(
        "min-driver-version",
        "Lowest acceptable NVIDIA driver version for the compat environment checks (e.g. 550.54).",
        parse=_version,
        metavar="VERSION",
    ),
    OptionSpec(
        "min-cuda-version",
        "Lowest acceptable CUDA version the driver supports (e.g. 12.4).",
        parse=_version,
        metavar="VERSION",
    ),
    OptionSpec(
        "max-cold-start",
        "Fail the cold-start check when launch-to-first-completion takes longer (seconds).",
        parse=_positive_float,
        metavar="SECONDS",
    ),
    OptionSpec(
        "model-manifest",
        "sha256 manifest of the model files: verified when it exists, written when "
        "--write-model-manifest is given.",
        metavar="PATH",
    ),
    OptionSpec(
        "write-model-manifest",
        "Write the --model-manifest file from the current model files instead of checking it.",
        flag_only=True,
        default=False,
    ),
    OptionSpec(
        "ray-address",
        "Run the batch suite's Ray Data pipelines on an existing Ray cluster "
        "(e.g. ray://host:10001); default: a local Ray instance started per run.",
        metavar="ADDRESS",
    ),
)

VALUE_FLAGS: frozenset[str] = frozenset(
    flag
    for spec in OPTIONS
    if not spec.flag_only
    for flag in (spec.short_flag, spec.long_flag)
    if flag is not None
)
"""Every flag of ours that takes a value (its next word is a value, not a test path)."""


@dataclass(frozen=True)
class Settings:
    """Validated plugin settings for one pytest run."""

    engine: str = "vllm"
    endpoint: str | None = None
    model: str | None = None
    image: str | None = None
    engine_args: tuple[str, ...] = ()
    server_command: tuple[str, ...] = ()
    server_timeout_s: float = DEFAULT_SERVER_TIMEOUT_S
    server_port: int | None = None
    server_scope: str = "session"
    gpu: str | None = None
    api_key: str | None = field(default=None, repr=False)
    slos: tuple[SLO, ...] = ()
    allow_errors: bool = False
    load_scale: float = 1.0
    burst: tuple[str, ...] = ()
    report_dir: Path | None = None
    min_driver_version: str | None = None
    min_cuda_version: str | None = None
    max_cold_start_s: float | None = None
    model_manifest: str | None = None
    write_model_manifest: bool = False
    ray_address: str | None = None

    @property
    def uses_builtin_model(self) -> bool:
        """True when no model was given, so the built-in one is served."""
        return self.model is None and self.endpoint is None


def add_ini_keys(parser: pytest.Parser) -> None:
    """Register each option's ini key and the help group (flags come after the conftests)."""
    parser.getgroup(GROUP, GROUP_TITLE)
    for spec in OPTIONS:
        if spec.flag_only:
            continue
        if spec.repeatable:
            parser.addini(spec.ini, spec.help, type="args", default=[])
        else:
            parser.addini(spec.ini, spec.help, type="string", default=None)


def _taken(parser: pytest.Parser, flag: str) -> bool:
    """True when another plugin or a conftest already defines ``flag``."""
    return flag in parser.optparser._option_string_actions


def add_flags(parser: pytest.Parser) -> list[str]:
    """Add every option's flags, leaving out short forms someone else already defines.

    Returns the short flags left out, so the header can say which names to use instead.
    """
    group = parser.getgroup(GROUP, GROUP_TITLE)
    yielded: list[str] = []
    for spec in OPTIONS:
        names = [spec.long_flag]
        short = spec.short_flag
        if short is not None:
            if _taken(parser, short):
                yielded.append(short)
            else:
                names.insert(0, short)
        if _taken(parser, spec.long_flag):  # configured twice in one process: already there
            continue
        if spec.flag_only:
            group.addoption(*names, action="store_true", dest=spec.ini, help=spec.help)
        else:
            group.addoption(
                *names,
                action="append" if spec.repeatable else "store",
                dest=spec.ini,
                default=None,
                metavar=spec.metavar,
                help=spec.help.replace("%", "%%"),  # argparse formats help with %
            )
    return yielded


def option_values_as_paths(args: Sequence[str]) -> list[str]:
    """The words of ``args`` that follow one of our value flags in the space form."""
    values: list[str] = []
    for index, word in enumerate(args[:-1]):
        if word in VALUE_FLAGS:
            values.append(str(args[index + 1]))
    return values


def _flag_name(spec: OptionSpec, config: pytest.Config) -> str:
    """The flag the user can type for ``spec`` in this run (for error messages)."""
    short = spec.short_flag
    yielded = config.stash.get(YIELDED_FLAGS, [])
    return spec.long_flag if short is None or short in yielded else short


def _raw(config: pytest.Config, spec: OptionSpec) -> Any:
    """Command line first, then ini, then the default."""
    value = config.getoption(spec.ini, default=None)
    if spec.flag_only:
        return bool(value)
    if value is None or value == []:
        value = config.getini(spec.ini)
    if value is None or value == [] or value == "":
        return spec.default
    return value


def _value(config: pytest.Config, spec: OptionSpec) -> Any:
    """The parsed value of one option; a bad value is a one-line usage error naming the flag."""
    raw = _raw(config, spec)
    if raw is None or spec.flag_only or raw is spec.default:
        return raw
    try:
        return spec.parse(raw)
    except OptionValueError as exc:
        raise pytest.UsageError(f"{_flag_name(spec, config)} {exc}") from None


YIELDED_FLAGS = pytest.StashKey[list[str]]()
"""Short flags another plugin or conftest owns in this run (ours answer as --gpuinfer-...)."""


def load_settings(config: pytest.Config, engines: Iterable[str]) -> Settings:
    """Read and validate all options; a bad value raises a one-line pytest.UsageError."""
    values = {spec.ini: _value(config, spec) for spec in OPTIONS}
    known = list(engines)
    engine = str(values["gpuinfer_engine"])
    if engine not in known:
        raise pytest.UsageError(
            f"--engine {engine!r} is not known; choose one of: {', '.join(known)} "
            "(or use --endpoint URL to attach to any OpenAI-compatible server)"
        )
    server_command = values["gpuinfer_server_command"] or ()
    if server_command and engine != "command":
        raise pytest.UsageError("--server-command is only used with --engine command")
    endpoint = values["gpuinfer_endpoint"]
    model = values["gpuinfer_model"]
    if model and not endpoint:
        try:
            model = _model(model)
        except OptionValueError as exc:
            raise pytest.UsageError(f"{_flag_name(_spec('model'), config)} {exc}") from None
    port = values["gpuinfer_server_port"]
    if port is not None and not endpoint and port_in_use(port):
        raise pytest.UsageError(
            f"--server-port {port}: the port is already in use on 127.0.0.1; "
            "free it or omit --server-port to use a free one"
        )
    api_key = values["gpuinfer_api_key"] or os.environ.get("OPENAI_API_KEY") or None
    return Settings(
        engine=engine,
        endpoint=endpoint,
        model=str(model) if model else None,
        image=values["gpuinfer_image"],
        engine_args=values["gpuinfer_engine_arg"],
        server_command=server_command,
        server_timeout_s=values["gpuinfer_server_timeout"],
        server_port=port,
        server_scope=values["gpuinfer_server_scope"],
        gpu=values["gpuinfer_gpu"] or None,
        api_key=api_key,
        slos=values["gpuinfer_slo"],
        allow_errors=values["gpuinfer_allow_errors"],
        load_scale=values["gpuinfer_load_scale"],
        burst=values["gpuinfer_burst"],
        report_dir=values["gpuinfer_report"],
        min_driver_version=values["gpuinfer_min_driver_version"],
        min_cuda_version=values["gpuinfer_min_cuda_version"],
        max_cold_start_s=values["gpuinfer_max_cold_start"],
        model_manifest=values["gpuinfer_model_manifest"],
        write_model_manifest=values["gpuinfer_write_model_manifest"],
        ray_address=values["gpuinfer_ray_address"] or None,
    )


def _spec(name: str) -> OptionSpec:
    """The option declared as ``name``."""
    return next(spec for spec in OPTIONS if spec.name == name)


def reconsider_rootdir(config: pytest.Config, args: list[str]) -> None:
    """Find rootdir and ini file again without taking option values for test paths.

    pytest finds its rootdir and ini file before any plugin has declared its options, so in
    ``--model /models/m.gguf`` the path counts as a test path: the rootdir becomes the model's
    folder and the project's configuration (addopts, markers, timeout) is silently lost. Here the
    words after our value flags are left out and, when that changes the answer, the run is given
    the configuration it should have had (ini values, addopts and the plugins they name).
    """
    from _pytest.config.findpaths import determine_setup

    values = set(option_values_as_paths(args))
    if not values:
        return
    namespace = config.known_args_namespace
    paths = [p for p in namespace.file_or_dir if p not in values]
    if len(paths) == len(namespace.file_or_dir):
        return
    namespace.file_or_dir = paths  # the initial conftests come from these
    rootpath, inipath, inicfg, ignored = determine_setup(
        inifile=namespace.inifilename,
        override_ini=namespace.override_ini,
        args=paths,
        rootdir_cmd_arg=namespace.rootdir or None,
        invocation_dir=config.invocation_params.dir,
    )
    if (rootpath, inipath) == (config.rootpath, config.inipath):
        return
    config._rootpath = rootpath
    config._inipath = inipath
    config._inicfg = inicfg
    config._ignored_config_files = ignored
    config._inicache.clear()
    config._parser.extra_info["rootdir"] = str(rootpath)
    config._parser.extra_info["inifile"] = str(inipath)
    addopts = list(config.getini("addopts"))
    if addopts:
        args[:] = addopts + args
        config.pluginmanager.consider_preparse(addopts, exclude_only=False)
    namespace = config._parser.parse_known_args(args, namespace=copy.copy(config.option))
    namespace.file_or_dir = [p for p in namespace.file_or_dir if p not in values]
    namespace.confcutdir = str(inipath.parent if inipath else rootpath)
    config.known_args_namespace = namespace
