"""Hooks other plugins and conftest files implement to extend pytest-gpuinfer.

Each docstring ends with an example implementation, as it would sit in a ``conftest.py``.
"""

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
    (any other lifecycle: implement ``launch``). Called once, when the run first needs its
    engines (an option of ours was given, or a test uses the server). Example::

        from pytest_gpuinfer.targets.launcher import CommandLauncher, LaunchPlan

        class SGLangLauncher(CommandLauncher):
            name = "sglang"
            summary = "SGLang's server"

            def plan(self, ctx):
                argv = ["python", "-m", "sglang.launch_server", "--model-path", str(ctx.model),
                        "--port", str(ctx.port)]
                return LaunchPlan(argv, {}, None, str(ctx.model), str(ctx.model))

        def pytest_gpuinfer_add_targets(config):
            return [SGLangLauncher()]
    """


@pytest.hookspec(firstresult=True)
def pytest_gpuinfer_select_gpus(
    config: pytest.Config, inventory: GPUInventory, requested: str | None
) -> tuple[GPUInfo, ...] | None:
    """Choose the GPUs this run (or this xdist worker) uses; None leaves it to ``--gpu``.

    The first non-None answer wins; the built-in one gives each pytest-xdist worker one GPU of its
    own. Example, keeping the run off GPUs with less than 40 GiB::

        def pytest_gpuinfer_select_gpus(config, inventory, requested):
            return tuple(g for g in inventory.select(requested) if g.memory_total_gb >= 40)
    """


@pytest.hookspec
def pytest_gpuinfer_machine_info(config: pytest.Config, machine: dict[str, Any]) -> None:
    """Add to (or change) the machine description written into reports. Example::

    import os

    def pytest_gpuinfer_machine_info(config, machine):
        machine["runner"] = os.environ.get("RUNNER_NAME", "local")
        machine["cluster"] = "inference-staging"
    """
