"""The per-run state the plugin keeps in ``config.stash``: settings, GPUs, launched targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_gpuinfer.hardware.gpu import GPUInfo, GPUInventory
from pytest_gpuinfer.plugin.options import Settings
from pytest_gpuinfer.targets import InferenceServer, TargetManager


@dataclass
class RunState:
    """Everything the plugin's hooks and fixtures share during one pytest run."""

    settings: Settings
    inventory: GPUInventory
    selected_gpus: tuple[GPUInfo, ...]
    work_dir: Path
    manager: TargetManager
    servers_seen: list[InferenceServer] = field(default_factory=list)
    server_failure: str | None = None

    @property
    def gpus_in_use(self) -> tuple[GPUInfo, ...]:
        """The GPUs tests run on: the ``--gpu`` selection, else every GPU found."""
        return self.selected_gpus or self.inventory.gpus


RUN_STATE = pytest.StashKey[RunState]()
