"""The fixtures tests use: GPU inventory, the inference server, HTTP and OpenAI clients."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer.plugin.extras import require
from pytest_gpuinfer.plugin.fail_fast import watch_server
from pytest_gpuinfer.plugin.options import Settings
from pytest_gpuinfer.plugin.state import RUN_STATE
from pytest_gpuinfer.plugin.verdicts import VerdictGate

if TYPE_CHECKING:
    from pytest_gpuinfer.hardware.gpu import GPUInfo, GPUInventory
    from pytest_gpuinfer.plugin.load_fixture import TestLoadRunner
    from pytest_gpuinfer.targets import InferenceServer, TargetManager


def _server_scope(fixture_name: str, config: pytest.Config) -> Any:
    """Scope of ``inference_server``, from --server-scope (session by default)."""
    state = config.stash.get(RUN_STATE, None)
    return state.settings.server_scope if state is not None else "session"


def gpuinfer_settings_of(config: pytest.Config) -> Settings:
    """The run's validated options, for conftest hooks that have a config but no fixtures."""
    return config.stash[RUN_STATE].settings


def gpuinfer_inventory_of(config: pytest.Config) -> GPUInventory:
    """Every GPU NVML reports, for conftest hooks that have a config but no fixtures."""
    return config.stash[RUN_STATE].inventory


@pytest.fixture(scope="session")
def gpuinfer_settings(pytestconfig: pytest.Config) -> Settings:
    """The run's validated options (engine, model, endpoint, SLOs, report dir, ...)."""
    return gpuinfer_settings_of(pytestconfig)


@pytest.fixture
def gpuinfer_verdicts(pytestconfig: pytest.Config) -> VerdictGate:
    """Applies verdicts to the test: FAIL fails it; NOT JUDGED is reported as such, skipped
    naming the noise when too noisy, and fails under --gpuinfer-require-judgement."""
    return VerdictGate(pytestconfig)


@pytest.fixture(scope="session")
def gpu_inventory(pytestconfig: pytest.Config) -> GPUInventory:
    """Every GPU NVML reports (empty, with a reason, in CPU mode)."""
    return pytestconfig.stash[RUN_STATE].inventory


@pytest.fixture(scope="session")
def gpu(pytestconfig: pytest.Config) -> GPUInfo:
    """The first GPU in use (the --gpu selection, else the first found); skips without one."""
    state = pytestconfig.stash[RUN_STATE]
    if not state.gpus_in_use:
        pytest.skip(f"needs a GPU; none available ({state.inventory.unavailable_reason})")
    return state.gpus_in_use[0]


@pytest.fixture(scope=_server_scope)
def inference_server(pytestconfig: pytest.Config) -> Iterator[InferenceServer]:
    """The target under test: launched once per scope (session by default) or attached."""
    from pytest_gpuinfer.targets import TargetError

    state = pytestconfig.stash[RUN_STATE]
    if state.server_failure is not None:
        first_line = state.server_failure.splitlines()[0]
        pytest.fail(
            f"the inference server failed to start earlier in this run: {first_line}", pytrace=False
        )
    try:
        server = state.manager.start()
    except TargetError as exc:
        state.server_failure = str(exc)
    if state.server_failure is not None:  # failed outside the except: no chained traceback
        pytest.fail(state.server_failure, pytrace=False)
    state.servers_seen.append(server)
    watch_server(server, pytestconfig)
    yield server
    state.manager.stop(server)


@pytest.fixture
def http_client(inference_server: InferenceServer, pytestconfig: pytest.Config) -> Iterator[Any]:
    """An httpx client bound to the server's base URL, with the API key and bounded timeouts
    (reads wait at most --first-token-timeout)."""
    with _watched_httpx_client(inference_server, pytestconfig) as client:
        yield client


def _watched_httpx_client(server: InferenceServer, config: pytest.Config) -> Any:
    """An httpx client for ``server`` whose timeouts judge the server's responsiveness."""
    import httpx

    from pytest_gpuinfer.targets.responsiveness import WatchedTransport, watch_for

    wait_s = gpuinfer_settings_of(config).first_token_timeout_s
    return httpx.Client(
        base_url=server.base_url,
        headers=server.auth_headers(),
        timeout=httpx.Timeout(wait_s, connect=5.0),
        transport=WatchedTransport(watch_for(server)),
    )


@pytest.fixture
def openai_client(inference_server: InferenceServer, pytestconfig: pytest.Config) -> Iterator[Any]:
    """The official ``openai`` Python client pointed at the server (skips if not installed)."""
    openai = require("openai")
    with _watched_httpx_client(inference_server, pytestconfig) as transport_client:
        yield openai.OpenAI(
            base_url=f"{inference_server.base_url}/v1",
            api_key=inference_server.api_key or "not-needed",
            timeout=gpuinfer_settings_of(pytestconfig).first_token_timeout_s,
            http_client=transport_client,
            max_retries=0,
        )


@pytest.fixture
def load_runner(
    request: pytest.FixtureRequest, inference_server: InferenceServer
) -> TestLoadRunner:
    """Runs load against the server (through the fault proxy in a test marked ``fault``); each
    run is judged by the test's SLOs and reported."""
    from pytest_gpuinfer.load.runner import LoadRunner
    from pytest_gpuinfer.plugin.load_fixture import LOAD_RUNNERS, TestLoadRunner, slos_for

    state = request.config.stash[RUN_STATE]
    server = inference_server
    counter = None
    if request.node.get_closest_marker("fault") is not None:
        from pytest_gpuinfer.load.prompts import token_counter_for

        server = request.getfixturevalue("faulty_server")
        # Prompts are counted on the server itself: a black hole must not swallow /tokenize.
        counter = token_counter_for(
            inference_server.base_url,
            inference_server.model,
            model_dir=inference_server.model_path,
            headers=inference_server.auth_headers(),
        )
    runner = TestLoadRunner(
        runner=LoadRunner(
            server.base_url,
            server.model,
            api_key=server.api_key,
            model_dir=server.model_path,
            counter=counter,
        ),
        server=server,
        slos=slos_for(request.node, state.settings.slos),
        item=request.node,
        report_dir=state.settings.report_dir,
        allow_errors=state.settings.allow_errors,
    )
    request.config.stash.setdefault(LOAD_RUNNERS, []).append(runner)
    return runner


@dataclass
class ServerFactory:
    """Launches extra servers of the run's engine with other arguments, and stops them."""

    manager: TargetManager
    launched: list[InferenceServer] = field(default_factory=list)

    def launch(
        self, engine_args: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> InferenceServer:
        """A fresh server with extra engine arguments/environment (TargetError if it fails)."""
        server = self.manager.launch(engine_args=tuple(engine_args), env=env)
        self.launched.append(server)
        return server

    def stop(self, server: InferenceServer) -> None:
        """Stop a server this factory launched (all of it)."""
        self.manager.stop(server)
        if server in self.launched:
            self.launched.remove(server)

    def stop_all(self) -> None:
        """Stop every server still running."""
        for server in list(self.launched):
            self.stop(server)


@pytest.fixture(scope="module")
def server_factory(pytestconfig: pytest.Config) -> Iterator[ServerFactory]:
    """Launch servers with other engine arguments or environment (a sweep, a small KV cache, an
    impossible configuration); whatever is still running stops at the end of the module.
    Skips against an attached --endpoint, which cannot be relaunched."""
    state = pytestconfig.stash[RUN_STATE]
    if state.settings.endpoint:
        pytest.skip("needs to launch its own servers; an attached --endpoint cannot be relaunched")
    factory = ServerFactory(state.manager)
    try:
        yield factory
    finally:
        factory.stop_all()
