"""pytest hooks: options, markers, run state in config.stash, report header and summary, cleanup."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from pytest_gpuinfer import __version__
from pytest_gpuinfer.hardware import gpu
from pytest_gpuinfer.plugin import gpu_markers, hookspecs, load_fixture, options
from pytest_gpuinfer.plugin.state import RUN_STATE, RunState
from pytest_gpuinfer.targets import TargetManager, capabilities
from pytest_gpuinfer.targets.base import LaunchContext
from pytest_gpuinfer.targets.registry import builtin_registry

MARKERS = (
    "compat: compatibility checks of engine, model, GPU, driver and API",
    "perf: latency and throughput measurements",
    "load: burst and sustained load runs",
    "burst(allow_drops=0, max_recovery_s=None, max_queue=None, max_preemptions=None, "
    "p95_tolerance=0.5, p95_slack_s=0.05, latency='ttft'): verdicts for burst_runner runs",
    "oom: out-of-memory boundary searches",
    "leak(max_growth_mb=None, settle_s=None): memory leak checks across batches",
    "batch: offline batch inference (vLLM LLM, Ray Data)",
    "requires_gpu(count=1, min_memory_gb=None): skip unless enough GPUs (with enough memory) "
    "are available",
    "slo(*expressions): SLOs every load_runner run in this test must meet, "
    "e.g. slo('ttft_p95<500ms', 'error_rate<1%')",
)

_PREVIOUS_SIGTERM = pytest.StashKey[Any]()

FIXTURE_MODULES: tuple[str, ...] = (
    "pytest_gpuinfer.plugin.fixtures",
    "pytest_gpuinfer.plugin.memory_fixtures",
    "pytest_gpuinfer.plugin.load_fixtures",
    "pytest_gpuinfer.plugin.perf_fixtures",
    "pytest_gpuinfer.plugin.batch_fixtures",
    "pytest_gpuinfer.plugin.report_plugin",
)
"""Modules whose fixtures the plugin provides; each suite's fixtures live in a module of its own."""


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
    """Keep option values out of rootdir discovery; add our flags after the conftests' own."""
    options.reconsider_rootdir(early_config, args)
    result = yield
    early_config.stash[options.YIELDED_FLAGS] = options.add_flags(parser)
    return result


def pytest_configure(config: pytest.Config) -> None:
    """Register markers, validate options, take the GPU inventory and set up the run state."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    for module in FIXTURE_MODULES:
        if not config.pluginmanager.has_plugin(module):
            config.pluginmanager.import_plugin(module)
    registry = builtin_registry()
    try:
        for launchers in config.hook.pytest_gpuinfer_add_targets(config=config):
            registry.extend(launchers or ())
    except ValueError as exc:
        raise pytest.UsageError(f"pytest_gpuinfer_add_targets: {exc}") from None
    run_settings = options.load_settings(config, registry.names())
    inventory = gpu.discover()
    try:
        selected = config.hook.pytest_gpuinfer_select_gpus(
            config=config, inventory=inventory, requested=run_settings.gpu
        )
        if selected is None:
            selected = inventory.select(run_settings.gpu)
    except gpu.GPUSelectionError as exc:
        raise pytest.UsageError(str(exc)) from None
    work_dir = Path(tempfile.mkdtemp(prefix="pytest-gpuinfer-"))
    context = launch_context(run_settings, selected, inventory.has_gpu, work_dir)
    problem = registry.get(context.engine).check(context)
    if problem and not run_settings.endpoint:
        raise pytest.UsageError(problem)
    manager = TargetManager(context=context, registry=registry, endpoint=run_settings.endpoint)
    config.stash[RUN_STATE] = RunState(
        settings=run_settings,
        inventory=inventory,
        selected_gpus=selected,
        work_dir=work_dir,
        manager=manager,
    )
    config.stash[_PREVIOUS_SIGTERM] = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


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


def xdist_worker_index(config: pytest.Config) -> int | None:
    """This process's pytest-xdist worker number (gw3 -> 3), or None outside xdist workers."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput:
        return None
    return int(str(workerinput.get("workerid", "gw0")).removeprefix("gw") or 0)


def launch_context(
    settings: options.Settings, gpus: tuple[gpu.GPUInfo, ...], has_gpu: bool, work_dir: Path
) -> LaunchContext:
    """What every launch of this run starts from: the options, the GPUs, a work folder."""
    return LaunchContext(
        engine=settings.engine,
        port=settings.server_port or 0,
        work_dir=work_dir,
        model=settings.model,
        engine_args=settings.engine_args,
        server_command=settings.server_command,
        image=settings.image,
        timeout_s=settings.server_timeout_s,
        api_key=settings.api_key,
        gpus=gpus,
        has_gpu=has_gpu,
    )


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into KeyboardInterrupt so pytest unwinds and launched servers get stopped."""
    raise KeyboardInterrupt(f"pytest-gpuinfer: received signal {signum}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop every server this run launched, even after Ctrl-C or SIGTERM."""
    state = config.stash.get(RUN_STATE, None)
    if state is not None:
        state.manager.stop_all()
    previous = config.stash.get(_PREVIOUS_SIGTERM, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say what is tested where: target, GPUs, plugin version."""
    state = config.stash[RUN_STATE]
    return [
        f"gpuinfer {__version__}: target {state.manager.describe_planned()}",
        f"gpuinfer: {state.inventory.header_line()}"
        + (f"; using --gpu {state.settings.gpu}" if state.selected_gpus else ""),
    ]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Reject malformed ``slo`` markers before anything runs."""
    load_fixture.check_slo_markers(items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip tests whose GPU requirements are not met; fail fast if the server has died."""
    state = item.config.stash[RUN_STATE]
    for marker in item.iter_markers(name="requires_gpu"):
        reason = gpu_markers.unmet(marker, state.gpus_in_use, state.inventory)
        if reason:
            pytest.skip(reason)
    if "inference_server" in getattr(item, "fixturenames", ()):
        story = state.manager.dead_server_story()
        if story:
            pytest.fail(story, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the launched server's log tail to the report of a failed test that used it."""
    report = yield
    state = item.config.stash[RUN_STATE]
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
    state = config.stash.get(RUN_STATE, None)
    if state is None or not state.servers_seen:
        return
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
        if server.process is not None and server.process.log_path is not None:
            line += f"; log {server.process.log_path}"
        terminalreporter.write_line(line)
        found = capabilities.recorded(server)
        if found is not None:
            terminalreporter.write_line(found.line())
