"""The per-run state the plugin keeps in ``config.stash``: settings, GPUs, launched targets.

Installed but unused, the plugin must cost next to nothing: the state holds the validated options
from the start, and builds everything else (the engine table, the NVML inventory, the GPU choice,
the work folder, the target manager, the SIGTERM handler) the first time a hook or fixture needs
it. A run that gives any option of ours, or whose tests use a server, builds it up front so that
usage errors still come before the first test.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer.plugin import work_dirs
from pytest_gpuinfer.plugin.options import Settings, check_engine

if TYPE_CHECKING:
    from pytest_gpuinfer.hardware.gpu import GPUInfo, GPUInventory
    from pytest_gpuinfer.targets import InferenceServer, TargetManager
    from pytest_gpuinfer.targets.base import LaunchContext
    from pytest_gpuinfer.targets.registry import EngineRegistry


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into KeyboardInterrupt so pytest unwinds and launched servers get stopped."""
    raise KeyboardInterrupt(f"pytest-gpuinfer: received signal {signum}")


def xdist_worker_index(config: pytest.Config) -> int | None:
    """This process's pytest-xdist worker number (gw3 -> 3), or None outside xdist workers."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput:
        return None
    return int(str(workerinput.get("workerid", "gw0")).removeprefix("gw") or 0)


@dataclass
class RunState:
    """Everything the plugin's hooks and fixtures share during one pytest run (built lazily)."""

    config: pytest.Config = field(repr=False)
    settings: Settings
    servers_seen: list[InferenceServer] = field(default_factory=list)
    server_failure: str | None = None
    _previous_sigterm: Any = field(default=None, repr=False)

    @functools.cached_property
    def registry(self) -> EngineRegistry:
        """The engines this run knows: the built-in ones, then those other plugins add."""
        from pytest_gpuinfer.targets.registry import builtin_registry

        registry = builtin_registry()
        try:
            for launchers in self.config.hook.pytest_gpuinfer_add_targets(config=self.config):
                registry.extend(launchers or ())
        except ValueError as exc:
            raise pytest.UsageError(f"pytest_gpuinfer_add_targets: {exc}") from None
        check_engine(self.config, self.settings.engine, registry.names())
        return registry

    @functools.cached_property
    def inventory(self) -> GPUInventory:
        """Every GPU NVML reports (empty, with a reason, on a machine without one)."""
        from pytest_gpuinfer.hardware import gpu

        return gpu.discover()

    @functools.cached_property
    def selected_gpus(self) -> tuple[GPUInfo, ...]:
        """The GPUs --gpu (or the selection hook) picked; empty when none was asked for."""
        from pytest_gpuinfer.hardware import gpu

        try:
            selected = self.config.hook.pytest_gpuinfer_select_gpus(
                config=self.config, inventory=self.inventory, requested=self.settings.gpu
            )
            if selected is None:
                selected = self.inventory.select(self.settings.gpu)
        except gpu.GPUSelectionError as exc:
            raise pytest.UsageError(str(exc)) from None
        return tuple(selected)

    @property
    def gpus_in_use(self) -> tuple[GPUInfo, ...]:
        """The GPUs tests run on: the ``--gpu`` selection, else every GPU found."""
        return self.selected_gpus or self.inventory.gpus

    @functools.cached_property
    def work_dir(self) -> Path:
        """A folder of this run's own (logs, converted models), made on first use; the folders
        of finished runs beyond the newest few are removed then (plugin/work_dirs.py)."""
        return work_dirs.new_work_dir()

    def launch_context(self) -> LaunchContext:
        """What every launch of this run starts from: the options, the GPUs, a work folder."""
        from pytest_gpuinfer.targets.base import LaunchContext

        settings = self.settings
        return LaunchContext(
            engine=settings.engine,
            port=settings.server_port or 0,
            host=settings.server_host,
            work_dir=self.work_dir,
            model=settings.model,
            engine_args=settings.engine_args,
            server_command=settings.server_command,
            image=settings.image,
            timeout_s=settings.server_timeout_s,
            api_key=settings.api_key,
            gpus=self.selected_gpus,
            has_gpu=self.inventory.has_gpu,
            server_nice=settings.server_nice,
        )

    @functools.cached_property
    def manager(self) -> TargetManager:
        """The target manager; from here on SIGTERM stops launched servers like Ctrl-C does."""
        from pytest_gpuinfer.targets import TargetManager

        context = self.launch_context()
        problem = self.registry.get(context.engine).check(context)
        if problem and not self.settings.endpoint:
            raise pytest.UsageError(problem)
        manager = TargetManager(
            context=context, registry=self.registry, endpoint=self.settings.endpoint
        )
        with contextlib.suppress(ValueError):  # only the main thread may set a handler
            self._previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        return manager

    def built(self, part: str) -> bool:
        """Whether ``part`` (``manager``, ``inventory``, ...) has been built in this run."""
        return part in self.__dict__

    def prepare(self) -> None:
        """Build what validates the options (engine, GPUs, target) so errors come up front."""
        _ = self.selected_gpus
        _ = self.manager

    def close(self) -> None:
        """Stop every server this run launched and give SIGTERM back its old handler."""
        if self.built("manager"):
            self.manager.stop_all()
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None


RUN_STATE = pytest.StashKey[RunState]()
