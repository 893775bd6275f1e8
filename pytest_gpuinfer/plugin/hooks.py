"""pytest hooks: options, markers, run state in config.stash, report header and summary, cleanup.

This is the ``pytest11`` entry point, loaded by every pytest run in an environment that has the
plugin installed. Until a run asks for it (one of its options, or a test that uses a server or a
GPU), it registers options, markers and fixtures and does nothing else: no server, no NVML, no
Docker, no network, no output, and no import beyond the standard library and pytest.
"""

from __future__ import annotations

import importlib
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer import __version__
from pytest_gpuinfer.plugin import hookspecs, markers, options
from pytest_gpuinfer.plugin.state import RUN_STATE, RunState, xdist_worker_index

if TYPE_CHECKING:
    from pytest_gpuinfer.hardware import gpu

FIXTURE_MODULES: tuple[str, ...] = (
    "pytest_gpuinfer.plugin.fixtures",
    "pytest_gpuinfer.plugin.memory_fixtures",
    "pytest_gpuinfer.plugin.load_fixtures",
    "pytest_gpuinfer.plugin.perf_fixtures",
    "pytest_gpuinfer.plugin.batch_fixtures",
    "pytest_gpuinfer.plugin.report_plugin",
    "pytest_gpuinfer.plugin.compat_outcomes",
    "pytest_gpuinfer.plugin.fail_fast",
    "pytest_gpuinfer.plugin.fault_fixtures",
)
"""Modules whose fixtures the plugin provides; each suite's fixtures live in a module of its own."""

SERVER_FIXTURES = frozenset({"inference_server"})
"""Fixtures that talk to the target: a run whose tests use one prepares the target up front."""

GPU_FIXTURES = frozenset({"gpu", "gpu_inventory", "vram_tracker"})
"""Fixtures that read the GPU inventory."""

_ASKED = pytest.StashKey[bool]()
"""Whether this run uses the plugin (an option of ours, or tests that need a target or a GPU)."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Declare the hooks other plugins implement to extend this one (see hookspecs)."""
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ini keys; the flags follow once the conftests have declared theirs."""
    options.add_ini_keys(parser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> Generator[None, None, None]:
    """Add our flags after the conftests' own, so a conftest's ``--model`` keeps its meaning."""
    result = yield
    early_config.stash[options.YIELDED_FLAGS] = options.add_flags(parser)
    return result


def pytest_configure(config: pytest.Config) -> None:
    """Register markers and fixtures, validate the options and keep the (lazy) run state."""
    markers.register(config)
    state = RunState(config=config, settings=options.load_settings(config))
    config.stash[RUN_STATE] = state
    for name in FIXTURE_MODULES:
        if not config.pluginmanager.has_plugin(name):
            # register(), not import_plugin(): these modules are imported already, and asking
            # pytest to import them again only earns an assertion-rewrite warning.
            config.pluginmanager.register(importlib.import_module(name), name)
    asked = bool(options.given_options(config))
    config.stash[_ASKED] = asked
    if asked:
        options.check_space_form_paths(config)
        state.prepare()


@pytest.hookimpl(trylast=True)
def pytest_gpuinfer_select_gpus(
    config: pytest.Config, inventory: gpu.GPUInventory, requested: str | None
) -> tuple[gpu.GPUInfo, ...] | None:
    """Under pytest-xdist, give each worker one GPU of its own (round robin), so each runs its
    own server pinned by UUID; a single process uses the --gpu selection as is."""
    worker = xdist_worker_index(config)
    if worker is None:
        return None
    return inventory.for_worker(requested, worker)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop every server this run launched, even after Ctrl-C or SIGTERM."""
    state = config.stash.get(RUN_STATE, None)
    if state is not None:
        state.close()


def _header_lines(state: RunState) -> list[str]:
    """What is tested where: target, GPUs, plugin version."""
    selection = f"; using --gpu {state.settings.gpu}" if state.selected_gpus else ""
    return [
        f"gpuinfer {__version__}: target {state.manager.describe_planned()}",
        f"gpuinfer: {state.inventory.header_line()}{selection}",
    ]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say what is tested where, when the run gave options of ours (else after collection)."""
    if not config.stash.get(_ASKED, False):
        return []
    return _header_lines(config.stash[RUN_STATE])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Reject malformed markers; when tests need a target or a GPU, prepare the run for them."""
    markers.check_uses(items)
    if config.stash.get(_ASKED, False):
        return
    used: set[str] = set()
    for item in items:
        used.update(getattr(item, "fixturenames", ()))
    if used & (SERVER_FIXTURES | GPU_FIXTURES):
        config.stash[_ASKED] = True
        config.stash[RUN_STATE].prepare()


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    """Say what is tested where, for runs that use the plugin without any option of ours."""
    if not config.stash.get(_ASKED, False) or options.given_options(config):
        return []
    return _header_lines(config.stash[RUN_STATE])


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip tests whose GPU requirements are not met; fail fast if the server has died."""
    state = item.config.stash[RUN_STATE]
    reason = markers.skip_reason(item, state)
    if reason:
        pytest.skip(reason)
    if "inference_server" in getattr(item, "fixturenames", ()) and state.built("manager"):
        story = state.manager.dead_server_story()
        if story:
            pytest.fail(story, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the launched server's log tail to the report of a failed test that used it."""
    report = yield
    state = item.config.stash.get(RUN_STATE, None)
    if state is None or not state.built("manager"):
        return report
    _show_server_failure_once(state, call)
    if report.failed and "inference_server" in getattr(item, "fixturenames", ()):
        for server in state.manager.servers:
            tail = server.log_tail(40)
            if tail:
                report.sections.append((f"gpuinfer server log ({server.engine}), last lines", tail))
    return report


def _show_server_failure_once(state: RunState, call: pytest.CallInfo[None]) -> None:
    """After the first report of a startup failure, shorten it: pytest re-raises it per test."""
    if state.server_failure is None or call.excinfo is None:
        return
    error = call.excinfo.value
    if isinstance(error, pytest.fail.Exception) and error.msg == state.server_failure:
        first_line = state.server_failure.splitlines()[0]
        error.msg = f"the inference server failed to start earlier in this run: {first_line}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Name the server the run talked to, its cold start and where its log is."""
    from pytest_gpuinfer.plugin import load_fixture

    state = config.stash.get(RUN_STATE, None)
    if state is None or not state.servers_seen:
        return
    from pytest_gpuinfer.compat import capabilities

    terminalreporter.section("gpuinfer")
    for runner in config.stash.get(load_fixture.LOAD_RUNNERS, []):
        for index, result in enumerate(runner.results, start=1):
            terminalreporter.write_line(
                f"{runner.item.nodeid} [load {index}]: {load_fixture.result_line(result)}"
            )
    for server in state.servers_seen:
        line = f"target: {server.describe()}"
        if server.cold_start_s is not None:
            line += f"; cold start {server.cold_start_s:.1f} s"
        if server.cpu_priority:
            line += f"; CPU priority {server.cpu_priority}"
        if server.process is not None and server.process.log_path is not None:
            line += f"; log {server.process.log_path}"
        terminalreporter.write_line(line)
        found = capabilities.recorded(server)
        if found is not None:
            terminalreporter.write_line(found.line())
