"""Hooks other plugins and conftest files implement to extend pytest-gpuinfer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_gpuinfer.hardware.gpu import GPUInfo, GPUInventory
    from pytest_gpuinfer.targets.launcher import Launcher


@pytest.hookspec
def pytest_gpuinfer_add_targets(config: pytest.Config) -> list[Launcher] | None:
    """Return launchers for more engines (each selectable as ``--engine NAME``).

    A launcher subclasses :class:`pytest_gpuinfer.targets.registry.CommandLauncher` (an engine run
    as a local command: implement ``plan``) or :class:`~pytest_gpuinfer.targets.registry.Launcher`
    (any other lifecycle: implement ``launch``). Called once, at configure time.
    """


@pytest.hookspec(firstresult=True)
def pytest_gpuinfer_select_gpus(
    config: pytest.Config, inventory: GPUInventory, requested: str | None
) -> tuple[GPUInfo, ...] | None:
    """Choose the GPUs this run (or this xdist worker) uses; None leaves it to ``--gpu``."""


@pytest.hookspec
def pytest_gpuinfer_machine_info(config: pytest.Config, machine: dict[str, Any]) -> None:
    """Add to (or change) the machine description written into reports."""
