"""Engines the plugin can launch, by name: a table other plugins extend through a hook."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pytest_gpuinfer.targets.base import LaunchContext
from pytest_gpuinfer.targets.command import CommandLineLauncher
from pytest_gpuinfer.targets.docker import DockerLauncher
from pytest_gpuinfer.targets.launcher import Launcher
from pytest_gpuinfer.targets.llamacpp import LlamaCppLauncher
from pytest_gpuinfer.targets.simulator import SimulatorLauncher
from pytest_gpuinfer.targets.vllm import VLLMLauncher


@dataclass
class EngineRegistry:
    """Launchers by engine name; built-ins first, then those other plugins add."""

    launchers: dict[str, Launcher] = field(default_factory=dict)

    def add(self, launcher: Launcher) -> None:
        """Register a launcher; a second one with the same name is a mistake worth naming."""
        if not launcher.name:
            raise ValueError(f"{type(launcher).__name__} has no engine name")
        existing = self.launchers.get(launcher.name)
        if existing is not None and type(existing) is not type(launcher):
            raise ValueError(
                f"engine {launcher.name!r} is registered twice: by {type(existing).__name__} "
                f"and by {type(launcher).__name__}"
            )
        self.launchers[launcher.name] = launcher

    def extend(self, launchers: Iterable[Launcher]) -> None:
        """Register several launchers."""
        for launcher in launchers:
            self.add(launcher)

    def get(self, name: str) -> Launcher:
        """The launcher for ``name``; KeyError names the engines there are."""
        try:
            return self.launchers[name]
        except KeyError:
            raise KeyError(f"unknown engine {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Engine names in registration order."""
        return list(self.launchers)

    def help_text(self) -> str:
        """One line per engine for --help."""
        return "; ".join(f"{name}: {lau.summary}" for name, lau in self.launchers.items())


BUILTIN_LAUNCHERS: tuple[type[Launcher], ...] = (
    VLLMLauncher,
    SimulatorLauncher,
    CommandLineLauncher,
    LlamaCppLauncher,
    DockerLauncher,
)
"""The engines every run knows; more come from ``pytest_gpuinfer_add_targets``."""


def builtin_registry() -> EngineRegistry:
    """A registry holding the built-in engines."""
    registry = EngineRegistry()
    registry.extend(cls() for cls in BUILTIN_LAUNCHERS)
    return registry


def with_overrides(
    ctx: LaunchContext, *, engine_args: Iterable[str] = (), env: Mapping[str, str] | None = None
) -> LaunchContext:
    """A copy of ``ctx`` with extra engine arguments and environment variables."""
    return replace(
        ctx,
        engine_args=(*ctx.engine_args, *engine_args),
        env={**ctx.env, **(env or {})},
    )
