"""Compat suite wiring: the compat marker, shared session fixtures, and the cold-start report line.

Expensive things (tokenizer load, feature probes) are session-scoped. Every feature a target may
lack is probed through :mod:`pytest_gpuinfer.compat.probe`: absent (404/405/501, or documented
as off) skips naming it; broken fails with the response (``plugin.compat_outcomes``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat import capabilities, reasoning
from pytest_gpuinfer.compat.probe import ServerProbe, probe_for
from pytest_gpuinfer.compat.target import CompatTarget
from pytest_gpuinfer.compat.tokens import TokenCounter, exact_length_prompt, local_counter
from pytest_gpuinfer.models import builtin, gguf
from pytest_gpuinfer.plugin.extras import install_hint
from pytest_gpuinfer.plugin.fixtures import gpuinfer_settings_of
from pytest_gpuinfer.targets import InferenceServer

from .compat_helpers import COLD_START_KEY, server_scope
from .engine_env import require_launched_vllm

FIRST_MODULES = ("test_cold_start.py",)
"""Modules moved to the front: the cold start must time the server's first completion."""

LAST_MODULES = ("test_speculative_decoding.py", "test_offline_engine.py", "test_batch_format.py")
"""Modules moved to the end: each starts a second engine in a subprocess (about a minute)."""


HERE = Path(__file__).parent
"""This suite's folder (tests/compat in a checkout, pytest_gpuinfer/suites/compat installed)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark compat tests; cold start runs first, the slow subprocess checks last."""
    compat = [i for i in items if HERE in i.path.parents]
    for item in compat:
        item.add_marker(pytest.mark.compat)
    first = [i for i in compat if Path(str(i.path)).name in FIRST_MODULES]
    last = [i for i in compat if Path(str(i.path)).name in LAST_MODULES]
    if not (first or last):
        return
    # Reorder within the compat block only, where it stands: the plugin's own tests (timing
    # checks among them) run before the session's vLLM server starts.
    moved = set(first) | set(last)
    block = first + [i for i in compat if i not in moved] + last
    in_block = set(compat)
    reordered: list[pytest.Item] = []
    for item in items:
        if item not in in_block:
            reordered.append(item)
        elif block:
            reordered.extend(block)
            block = []
    items[:] = reordered


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """One line with the cold-start figures, when the cold-start check measured them."""
    figures = config.stash.get(COLD_START_KEY, None)
    if not figures:
        return
    line = (
        "gpuinfer compat: cold start {total_s:.1f} s = launch to ready {ready_s:.1f} s "
        "+ first completion {first_completion_s:.2f} s".format(**figures)
    )
    limit = gpuinfer_settings_of(config).max_cold_start_s
    verdict = f"limit {limit:g} s" if limit is not None else "NOT JUDGED (no --max-cold-start)"
    terminalreporter.write_line(f"{line}; {verdict}")


@pytest.fixture(scope=server_scope)
def probe(inference_server: InferenceServer, pytestconfig: pytest.Config) -> ServerProbe:
    """Cached feature probes for the target; the first use probes and reports every capability."""
    server_probe = probe_for(inference_server)
    first = capabilities.recorded(inference_server) is None
    found = capabilities.probe_capabilities(inference_server, server_probe)
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if first and reporter is not None:
        # Said when the server is first probed (the header is written before it starts), and
        # again in the summary.
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(f"\ngpuinfer: {found.line()}")
    return server_probe


@pytest.fixture(scope=server_scope)
def session_http(inference_server: InferenceServer) -> Iterator[httpx.Client]:
    """An httpx client living as long as the server (for hypothesis tests and shared fixtures)."""
    with httpx.Client(
        base_url=inference_server.base_url,
        headers=inference_server.auth_headers(),
        timeout=httpx.Timeout(120.0, connect=5.0),
    ) as client:
        yield client


def _local_model_dir(config: pytest.Config) -> tuple[Path | None, str]:
    """The model this run serves as a local directory, or None with the reason."""
    # From the settings, not the server: model-file checks still run (and say what is wrong)
    # when a damaged checkpoint keeps the server from starting.
    settings = gpuinfer_settings_of(config)
    if settings.endpoint:
        given = _model_files(settings.model)
        if given is not None:
            return given, ""
        return None, (
            "the target is an --endpoint server whose model files are not on this machine "
            "(give --model DIR, or serve the model under its directory's path); model-file "
            "checks need them"
        )
    if settings.engine == "sim":
        return None, "the simulator serves no real model files"
    known = builtin.resolve(settings.model)
    if known is not None:
        return known.ensure(), ""
    return gguf.checkpoint_dir(str(settings.model))


def _model_files(candidate: str | None) -> Path | None:
    """``candidate`` as a local Hugging Face model directory (config.json in it), else None."""
    if not candidate:
        return None
    path = Path(candidate).expanduser()
    return path if (path / "config.json").is_file() else None


@pytest.fixture(scope=server_scope)
def launched_vllm(inference_server: InferenceServer) -> InferenceServer:
    """The target when it is vLLM launched by this run; skips naming the engine otherwise.

    Checks that need vLLM list it before ``model_dir``, so on another engine they skip for
    the engine, not for a model-file reason.
    """
    require_launched_vllm(inference_server)
    return inference_server


@pytest.fixture(scope="session")
def model_dir(pytestconfig: pytest.Config) -> Path:
    """The served model's local directory; skips for targets without one (``--endpoint``)."""
    path, reason = _local_model_dir(pytestconfig)
    if path is None:
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def optional_tokenizer(pytestconfig: pytest.Config) -> Any:
    """The transformers tokenizer of the local model, or None without a model dir/transformers."""
    path, _ = _local_model_dir(pytestconfig)
    return _load_tokenizer(path)


def _load_tokenizer(path: Path | None) -> Any:
    """The transformers tokenizer in ``path``, or None (no path, or no transformers here)."""
    if path is None:
        return None
    try:
        import transformers
    except ImportError:
        return None
    return transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope=server_scope)
def server_tokenizer(optional_tokenizer: Any, inference_server: InferenceServer) -> Any:
    """The model's tokenizer for counting: the run's model files, else (on an --endpoint) the
    directory the server names its model after or loaded it from (vLLM's /v1/models ``root``)
    when that directory is on this machine; None when there are no files here."""
    if optional_tokenizer is not None or inference_server.launched:
        return optional_tokenizer
    candidates = [inference_server.model]
    try:
        response = httpx.get(
            f"{inference_server.base_url}/v1/models",
            headers=inference_server.auth_headers(),
            timeout=30.0,
        )
        entries = response.json().get("data") or [] if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError):
        entries = []
    candidates += [
        str(e.get("root"))
        for e in entries
        if isinstance(e, dict) and e.get("id") == inference_server.model and e.get("root")
    ]
    for candidate in candidates:
        path = _model_files(candidate)
        if path is not None:
            return _load_tokenizer(path)
    return None


@pytest.fixture(scope="session")
def local_tokenizer(model_dir: Path, optional_tokenizer: Any) -> Any:
    """The model's transformers tokenizer; skips when it cannot be loaded here."""
    if optional_tokenizer is None:
        pytest.skip(
            "transformers is not installed, so the local tokenizer cannot be loaded: "
            + install_hint("transformers")
        )
    return optional_tokenizer


@pytest.fixture(scope=server_scope)
def token_counter(
    server_tokenizer: Any, probe: ServerProbe, pytestconfig: pytest.Config
) -> TokenCounter:
    """Independent token counts: the model's own tokenizer when its files are here (also on an
    --endpoint), else the server's /tokenize (which then only checks the server against itself)."""
    if server_tokenizer is not None:
        counter = local_counter(server_tokenizer)
        engine_args = gpuinfer_settings_of(pytestconfig).engine_args
        if any(arg.startswith("--chat-template") for arg in engine_args):
            # The server renders chat with another template than the tokenizer's own.
            chat = probe.tokenize_chat_route()
            counter.chat_ids = probe.tokenize_chat if chat.available else None
            counter.notes = [] if chat.available else [f"--chat-template is set; {chat.reason}"]
        return counter
    probe.tokenize_route().require()
    chat = probe.tokenize_chat_route()
    return TokenCounter(
        "the server's /tokenize",
        lambda text: probe.tokenize(text, add_special_tokens=True),
        probe.tokenize_chat if chat.available else None,
        [] if chat.available else [chat.reason],
    )


@pytest.fixture(scope=server_scope)
def prompt_builder(server_tokenizer: Any, probe: ServerProbe) -> Callable[[int], str]:
    """Builds prompts of an exact token count (tokenizer, else /tokenize, else server usage).

    A prompt that cannot be built is not skipped: the probe's finding decides (a server fault
    or a count that never lands fails; only a capability the server lacks skips)."""
    counter: Callable[[str], int]
    if server_tokenizer is not None:
        counter = local_counter(server_tokenizer).count
    elif probe.tokenize_route().available:

        def counter(text: str) -> int:
            return len(probe.tokenize(text, add_special_tokens=True))
    else:
        probe.completions().require()
        counter = probe.usage_prompt_tokens
    cache: dict[int, str] = {}

    def build(n_tokens: int) -> str:
        if n_tokens not in cache:
            cache[n_tokens] = exact_length_prompt(counter, n_tokens)
        return cache[n_tokens]

    return build


@pytest.fixture(scope=server_scope)
def max_context(inference_server: InferenceServer) -> int:
    """The target's context length as /v1/models reports it; skips when it reports none."""
    if inference_server.max_model_len is None:
        pytest.skip("the target's /v1/models reports no context length (max_model_len)")
    return int(inference_server.max_model_len)


@pytest.fixture(scope=server_scope)
def engine_identity(
    inference_server: InferenceServer, probe: ServerProbe
) -> tuple[str, str | None]:
    """(engine family, version) for the deviation table; endpoints are recognised by what they say.

    vLLM: launched, or an endpoint whose models vLLM owns. llama.cpp (llama-cpp-python):
    launched with --engine llamacpp, or an endpoint whose OpenAPI title names llama.cpp (its
    info.version is the llama-cpp-python version).
    """
    engine, version = inference_server.engine, inference_server.engine_version
    if engine == "endpoint" and probe.owned_by() == "vllm":
        engine = "vllm"
    elif engine == "endpoint":
        title, openapi_version = probe.openapi_info()
        if title and "llama.cpp" in title:
            engine, version = "llamacpp", version or openapi_version
    return engine, version


@pytest.fixture(scope=server_scope)
def compat_target(
    inference_server: InferenceServer,
    probe: ServerProbe,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
    server_tokenizer: Any,
) -> CompatTarget:
    """The server as the feature checks (tools, structured outputs, ...) see it."""
    return CompatTarget(
        client=session_http,
        model=inference_server.model,
        identity=engine_identity,
        probe=probe,
        tokenizer=server_tokenizer,
    )


@pytest.fixture(scope=server_scope)
def chat_extra(compat_target: CompatTarget) -> dict[str, Any]:
    """Fields every core chat check adds: on a reasoning server, thinking off (through the chat
    template), so the answer is content; the reasoning checks cover thinking on."""
    return reasoning.thinking_off(compat_target)
