"""The plugin's options: declared once, as the fields of Settings, read from command line or ini.

Each option is one field of :class:`Settings` whose metadata holds its :class:`OptionSpec` (flag,
ini key, help, parser). ``--gpuinfer-<name>`` is the canonical flag and always there; the short
form the card's commands use (``--gpu``, ``--model``, ``--endpoint``...) is added when nobody else
claims it: a conftest that already defines ``--model`` keeps its own, and ours answers as
``--gpuinfer-model``. Each value is parsed and checked in one place, by its spec's parser.

This module is imported by every pytest run that has the plugin installed, so it imports only the
standard library and pytest at module level.
"""

from __future__ import annotations

import inspect
import os
import shlex
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_gpuinfer.metrics.slo import SLO

SERVER_SCOPES = ("session", "package", "module", "class", "function")

DEFAULT_SERVER_TIMEOUT_S = 600.0

DEFAULT_FIRST_TOKEN_TIMEOUT_S = 60.0

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


def _integer_between(value: Any, low: int, high: int) -> int:
    """An integer from ``low`` to ``high``, given as a number or its text."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionValueError(f"expects a number, got {value!r}") from None
    if not number.is_integer() or not low <= number <= high:
        raise OptionValueError(f"must be an integer {low}-{high}, got {value!r}")
    return int(number)


def _port(value: Any) -> int:
    """A TCP port number 1-65535."""
    return _integer_between(value, 1, 65535)


def _nice(value: Any) -> int:
    """A nice value 0-19 (lower priority only: raising it needs privileges)."""
    return _integer_between(value, 0, 19)


def _ip_address(value: Any) -> str:
    """An IPv4 or IPv6 address literal."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise OptionValueError(f"expects an IP address like 0.0.0.0, got {value!r}") from None


def _duration(value: Any) -> float:
    """A duration: 1h, 30m, 90s, 1h30m or seconds."""
    from pytest_gpuinfer.soak.drift import parse_duration

    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise OptionValueError(str(exc)) from None


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


BUILTIN_MODEL_PREFIX = "builtin:"
"""``--model builtin:NAME`` picks one of the built-in models by name."""


def _model(value: Any) -> str:
    """A model path that exists (made absolute), a built-in model's name, or a hub-style id."""
    text = str(value)
    if text.startswith(BUILTIN_MODEL_PREFIX):
        from pytest_gpuinfer.models import builtin

        try:
            builtin.named(text)
        except builtin.UnknownBuiltinModel as exc:
            raise OptionValueError(str(exc)) from None
        return text
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
    from pytest_gpuinfer.metrics.slo import SLOSyntaxError, parse_slos

    try:
        return tuple(parse_slos(str(text) for text in values or ()))
    except SLOSyntaxError as exc:
        raise OptionValueError(f"is malformed: {str(exc).splitlines()[0]}") from None


def _directory(value: Any) -> Path:
    """A directory path, made absolute (created when results are written)."""
    return Path(str(value)).expanduser().resolve()


@dataclass(frozen=True)
class OptionSpec:
    """One option: its name, help text, the parser that checks its value, and its default."""

    name: str
    """The option's name without dashes or prefix, e.g. ``model`` (``--gpuinfer-model``)."""
    help: str
    parse: Callable[[Any], Any] = _text
    default: Any = None
    metavar: str | None = None
    repeatable: bool = False
    switch: bool = False
    """A flag that takes no value (store_true); it has no ini key."""
    short: bool = True
    """Whether the card's short form (``--model``) is offered when nobody else defines it."""
    attr: str = ""
    """The :class:`Settings` field that holds the parsed value (filled in from the field)."""

    @property
    def ini(self) -> str:
        """The ini key (also the argparse dest): ``gpuinfer_<name>``."""
        return "gpuinfer_" + self.name.replace("-", "_")

    @property
    def long_flag(self) -> str:
        """The canonical flag, which never clashes: ``--gpuinfer-<name>``."""
        return f"--gpuinfer-{self.name}"

    @property
    def short_flag(self) -> str | None:
        """The card's short form (``--model``), when the option offers one."""
        return f"--{self.name}" if self.short else None


_SPEC = "gpuinfer_option"


def option(name: str, help: str, **spec: Any) -> Any:
    """Declare a Settings field as an option (its spec lives in the field's metadata)."""
    declared = OptionSpec(name, help, **spec)
    default = declared.default
    if isinstance(default, list | dict | set):
        raise TypeError(f"option {name}: use an immutable default, not {default!r}")
    return field(default=default, metadata={_SPEC: declared}, repr=name != "api-key")


@dataclass(frozen=True)
class Settings:
    """Validated plugin settings for one pytest run: one field per option, declared once here."""

    gpu: str | None = option(
        "gpu", "GPUs to use: indexes or UUIDs, comma-separated (e.g. 0,1).", metavar="IDS"
    )
    endpoint: str | None = option(
        "endpoint",
        "Attach to a running OpenAI-compatible server at URL; nothing is launched or stopped.",
        parse=_endpoint,
        metavar="URL",
    )
    engine: str = option(
        "engine",
        "Engine to launch: vllm (default), llamacpp, docker, command, sim (a simulator, not a "
        "real engine), or one a plugin adds.",
        parse=lambda value: str(value).strip().lower(),
        default="vllm",
        metavar="NAME",
    )
    server_command: tuple[str, ...] = option(
        "server-command",
        "With --engine command: the server's command line, with {port}, {host} and {model} "
        "filled in, e.g. 'python -m sglang.launch_server --model-path {model} --port {port}'.",
        parse=_server_command,
        default=(),
        metavar="CMD",
    )
    model: str | None = option(
        "model",
        "Model path or id to serve, or builtin:NAME. Default: the built-in tiny Llama, written "
        "offline; builtin:qwen3 serves the built-in Qwen3-shaped model (tool and reasoning "
        "parsers, a LoRA adapter), builtin:qwen3-embed the same for embeddings. Give paths as "
        "--model=PATH.",
        metavar="PATH",
    )
    image: str | None = option(
        "image",
        "With --engine docker: the container image to run (never pulled).",
        metavar="IMAGE",
    )
    engine_args: tuple[str, ...] = option(
        "engine-arg",
        "Extra argument passed through to the launched server (repeatable), "
        "e.g. --engine-arg=--max-model-len=2048.",
        parse=_engine_args,
        default=(),
        metavar="ARG",
        repeatable=True,
    )
    server_timeout_s: float = option(
        "server-timeout",
        f"Seconds to wait for the server to become ready (default {DEFAULT_SERVER_TIMEOUT_S:.0f}).",
        parse=_positive_float,
        default=DEFAULT_SERVER_TIMEOUT_S,
        metavar="SECONDS",
    )
    first_token_timeout_s: float = option(
        "first-token-timeout",
        "Seconds a check waits for a server's first answer; after a check times out, one "
        "probe waits this long and, unanswered, fails the rest of the session at once "
        f"(default {DEFAULT_FIRST_TOKEN_TIMEOUT_S:.0f}).",
        parse=_positive_float,
        default=DEFAULT_FIRST_TOKEN_TIMEOUT_S,
        metavar="SECONDS",
    )
    server_port: int | None = option(
        "server-port",
        "Port for the launched server on 127.0.0.1 (default: a free one).",
        parse=_port,
        metavar="PORT",
    )
    server_nice: int = option(
        "server-nice",
        "CPU priority (nice 0-19) of a server launched here, its session's autogroup included "
        "(default 0: equal to the load client's). 19 keeps a client that shares the server's "
        "CPUs from starving, at a cost to a CPU engine's steadiness (docs/perf.md). "
        "Containers are left as they are.",
        parse=_nice,
        default=0,
        metavar="N",
    )
    server_host: str = option(
        "server-host",
        "Address the launched server (or the container's published port) binds on this machine: "
        "127.0.0.1 by default, so nothing outside can reach it; 0.0.0.0 when it must be.",
        parse=_ip_address,
        default="127.0.0.1",
        metavar="ADDRESS",
    )
    server_scope: str = option(
        "server-scope",
        f"Scope of the inference_server fixture: {', '.join(SERVER_SCOPES)} (default session, "
        "so the model stays loaded).",
        parse=_scope,
        default="session",
        metavar="SCOPE",
    )
    api_key: str | None = option(
        "api-key",
        "API key for the server (default: $OPENAI_API_KEY). Never printed or written to reports.",
        metavar="KEY",
    )
    slos: tuple[SLO, ...] = option(
        "slo",
        "SLO applied to every load_runner run (repeatable; comma-separated allowed), "
        "e.g. --slo 'ttft_p95<500ms' --slo 'error_rate<0.1%'. Grammar: docs/metrics.md.",
        parse=_slos,
        default=(),
        metavar="EXPR",
        repeatable=True,
    )
    allow_errors: bool = option(
        "allow-errors",
        "Let load runs pass with failed requests (by default any failed request fails the run "
        "unless an error_rate SLO sets the limit).",
        switch=True,
        default=False,
    )
    require_judgement: bool = option(
        "require-judgement",
        "Fail every verdict that reads NOT JUDGED (no SLO or limit, no baseline, too few "
        "samples, too noisy) instead of reporting it: a run that must judge everything.",
        switch=True,
        default=False,
        short=False,
    )
    burst: tuple[str, ...] = option(
        "burst",
        "Limit for every burst_runner run (repeatable), KEY=VALUE: allow_drops, max_recovery_s, "
        "max_queue, max_preemptions, p95_tolerance; a @pytest.mark.burst marker wins.",
        parse=lambda values: tuple(str(v) for v in values or ()),
        default=(),
        metavar="KEY=VALUE",
        repeatable=True,
    )
    load_scale: float = option(
        "load-scale",
        "Multiply every load-shape duration by this factor (e.g. 0.1 in CI). Default 1.",
        parse=_positive_float,
        default=1.0,
        metavar="FACTOR",
    )
    soak_s: float | None = option(
        "soak",
        "Run the soak test (tests/load/test_soak.py) this long, e.g. 1h: steady load, memory and "
        "latency sampled throughout, verdicts on drift. Default: a CI-sized minute.",
        parse=_duration,
        metavar="DURATION",
    )
    report_dir: Path | None = option(
        "report",
        "Directory for the run's reports: JSON, HTML and per-run files.",
        parse=_directory,
        metavar="DIR",
        short=False,
    )
    min_driver_version: str | None = option(
        "min-driver-version",
        "Lowest acceptable NVIDIA driver version for the compat environment checks (e.g. 550.54).",
        parse=_version,
        metavar="VERSION",
    )
    min_cuda_version: str | None = option(
        "min-cuda-version",
        "Lowest acceptable CUDA version the driver supports (e.g. 12.4).",
        parse=_version,
        metavar="VERSION",
    )
    max_cold_start_s: float | None = option(
        "max-cold-start",
        "Fail the cold-start check when launch-to-first-completion takes longer (seconds).",
        parse=_positive_float,
        metavar="SECONDS",
    )
    model_manifest: str | None = option(
        "model-manifest",
        "sha256 manifest of the model files: verified when it exists, written when "
        "--write-model-manifest is given.",
        metavar="PATH",
    )
    write_model_manifest: bool = option(
        "write-model-manifest",
        "Write the --model-manifest file from the current model files instead of checking it.",
        switch=True,
        default=False,
    )
    ray_address: str | None = option(
        "ray-address",
        "Run the batch suite's Ray Data pipelines on an existing Ray cluster "
        "(e.g. ray://host:10001); default: a local Ray instance started per run.",
        metavar="ADDRESS",
    )

    @property
    def uses_builtin_model(self) -> bool:
        """True when no model or a ``builtin:NAME`` was given, so a built-in one is served."""
        builtin = self.model is None or self.model.startswith("builtin:")
        return builtin and self.endpoint is None


OPTIONS: tuple[OptionSpec, ...] = tuple(
    replace(item.metadata[_SPEC], attr=item.name) for item in fields(Settings)
)
"""Every option, in the order of the Settings fields."""

VALUE_FLAGS: frozenset[str] = frozenset(
    flag
    for spec in OPTIONS
    if not spec.switch
    for flag in (spec.short_flag, spec.long_flag)
    if flag is not None
)
"""Every flag of ours that takes a value (its next word is a value, not a test path)."""


def add_ini_keys(parser: pytest.Parser) -> None:
    """Register each option's ini key and the help group (flags come after the conftests)."""
    parser.getgroup(GROUP, GROUP_TITLE)
    for spec in OPTIONS:
        if spec.switch:
            continue
        if spec.repeatable:
            parser.addini(spec.ini, spec.help, type="args", default=[])
        else:
            parser.addini(spec.ini, spec.help, type="string", default=None)


def _declared_flags(parser: pytest.Parser) -> set[str] | None:
    """Every flag other plugins and conftests have declared so far, or None if unknowable.

    pytest has no public way to list declared options. The option groups (``Parser._groups``,
    each with its ``options`` and their ``names()``) have the same shape from pytest 8.0 through
    9.x; should that change, the answer is None and only the ``--gpuinfer-`` flags are added.
    """
    groups = getattr(parser, "_groups", None)
    anonymous = getattr(parser, "_anonymous", None)
    if not isinstance(groups, list):
        return None
    declared: set[str] = set()
    try:
        for group in [anonymous, *groups]:
            for argument in getattr(group, "options", ()):
                declared.update(argument.names())
    except (AttributeError, TypeError):
        return None
    return declared


def add_flags(parser: pytest.Parser) -> list[str]:
    """Add every option's flags, leaving out short forms someone else already defines.

    Returns the short flags left out, so errors can name the flag to use instead.
    """
    group = parser.getgroup(GROUP, GROUP_TITLE)
    declared = _declared_flags(parser)
    yielded: list[str] = []
    for spec in OPTIONS:
        if declared is not None and spec.long_flag in declared:
            continue  # configured twice in one process (pytester in-process runs): already there
        names = [spec.long_flag]
        if spec.short_flag is not None:
            if declared is None or spec.short_flag in declared:
                yielded.append(spec.short_flag)
            else:
                names.insert(0, spec.short_flag)
        if spec.switch:
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


YIELDED_FLAGS = pytest.StashKey[list[str]]()
"""Short flags another plugin or conftest owns in this run (ours answer as --gpuinfer-...)."""


def _flag_name(spec: OptionSpec, config: pytest.Config) -> str:
    """The flag the user can type for ``spec`` in this run (for error messages)."""
    short = spec.short_flag
    yielded = config.stash.get(YIELDED_FLAGS, [])
    return spec.long_flag if short is None or short in yielded else short


def _raw(config: pytest.Config, spec: OptionSpec) -> Any:
    """Command line first, then ini, then the default."""
    value = config.getoption(spec.ini, default=None)
    if spec.switch:
        return bool(value)
    if value is None or value == []:
        value = config.getini(spec.ini)
    if value is None or value == [] or value == "":
        return spec.default
    return value


def given_options(config: pytest.Config) -> list[str]:
    """The flags of ours this run sets, on the command line or in the ini file."""
    given = []
    for spec in OPTIONS:
        raw = _raw(config, spec)
        if raw is not spec.default and raw != spec.default:
            given.append(_flag_name(spec, config))
    return given


def _value(config: pytest.Config, spec: OptionSpec) -> Any:
    """The parsed value of one option; a bad value is a one-line usage error naming the flag."""
    raw = _raw(config, spec)
    if raw is None or spec.switch or raw is spec.default:
        return raw
    try:
        return spec.parse(raw)
    except OptionValueError as exc:
        raise pytest.UsageError(f"{_flag_name(spec, config)} {exc}") from None


def _spec(name: str) -> OptionSpec:
    """The option declared as ``name``."""
    return next(spec for spec in OPTIONS if spec.name == name)


def load_settings(config: pytest.Config) -> Settings:
    """Read and validate every option; a bad value raises a one-line pytest.UsageError.

    Cheap when no option is given (no import beyond this module, no file or network access):
    every pytest run with the plugin installed goes through here.
    """
    values = {spec.attr: _value(config, spec) for spec in OPTIONS}
    if values["server_command"] and values["engine"] != "command":
        raise pytest.UsageError(
            f"{_flag_name(_spec('server-command'), config)} is only used with --engine command"
        )
    endpoint = values["endpoint"]
    model = values["model"]
    if model and not endpoint:
        try:
            values["model"] = _model(model)
        except OptionValueError as exc:
            raise pytest.UsageError(f"{_flag_name(_spec('model'), config)} {exc}") from None
    port = values["server_port"]
    if port is not None and not endpoint:
        from pytest_gpuinfer.targets.process import port_in_use

        if port_in_use(port):
            raise pytest.UsageError(
                f"{_flag_name(_spec('server-port'), config)} {port}: the port is already in use "
                "on 127.0.0.1; free it or leave the option out to use a free one"
            )
    values["api_key"] = values["api_key"] or os.environ.get("OPENAI_API_KEY") or None
    values["gpu"] = values["gpu"] or None
    values["ray_address"] = values["ray_address"] or None
    return Settings(**values)


def check_engine(config: pytest.Config, engine: str, known: Sequence[str]) -> None:
    """A usage error naming the engines there are, when ``engine`` is not one of them."""
    if engine not in known:
        raise pytest.UsageError(
            f"{_flag_name(_spec('engine'), config)} {engine!r} is not known; choose one of: "
            f"{', '.join(known)} (or use --endpoint URL to attach to any OpenAI-compatible server)"
        )


def _space_form_values(args: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(flag, value) for each of our value flags written with its value as the next word."""
    for index, word in enumerate(args[:-1]):
        if word in VALUE_FLAGS:
            yield word, str(args[index + 1])


def _rootdir_without(config: pytest.Config, values: set[str]) -> Path | None:
    """The rootdir pytest would have found had ``values`` not been taken for test paths.

    pytest finds rootdir and ini file before any installed plugin declares its options, so the
    value in ``--model /models/m`` counts as a test path there. This asks pytest's own finder
    (``_pytest.config.findpaths.determine_setup``, whose keyword arguments differ between 8.x and
    9.x: only those it takes are passed) for the answer without them. None when it cannot tell.
    """
    try:
        from _pytest.config.findpaths import determine_setup
    except ImportError:
        return None
    params = config.invocation_params
    paths = [
        arg
        for arg in params.args
        if isinstance(arg, str) and not arg.startswith("-") and arg not in values
    ]
    offered = {
        "inifile": config.getoption("inifilename", None),
        "override_ini": config.getoption("override_ini", None),
        "args": paths,
        "rootdir_cmd_arg": config.getoption("rootdir", None) or None,
        "invocation_dir": params.dir,
    }
    try:
        accepted = inspect.signature(determine_setup).parameters
        found = determine_setup(**{key: v for key, v in offered.items() if key in accepted})
        return Path(found[0])
    except Exception:  # a pytest whose finder changed shape: say nothing rather than guess
        return None


def check_space_form_paths(config: pytest.Config) -> None:
    """A usage error when an option's path value, given in the space form, moved the rootdir.

    ``--model /models/m`` (space form) is read as a test path by pytest's rootdir discovery, which
    runs before any installed plugin declares options: the rootdir becomes the model's folder and
    the project's ini file (addopts, markers, timeouts) is silently not read. ``--model=/models/m``
    avoids it. Only paths that exist take part in that discovery, so only they are checked.
    """
    values = {
        value: flag
        for flag, value in _space_form_values(config.invocation_params.args)
        if os.path.exists(os.path.expanduser(value))
    }
    if not values:
        return
    expected = _rootdir_without(config, set(values))
    if expected is None:
        flag, value = next(iter(values.items()))[::-1]
        warnings.warn(
            pytest.PytestConfigWarning(
                f"{flag} {value}: pytest may take the value for a test path when it looks for "
                f"rootdir; write {flag}={value}"
            ),
            stacklevel=1,
        )
        return
    if expected != config.rootpath:
        value, flag = next(iter(values.items()))
        raise pytest.UsageError(
            f"{flag} {value}: pytest took the value for a test path, so the rootdir became "
            f"{config.rootpath} instead of {expected} and that project's configuration was not "
            f"read; write {flag}={value}"
        )
