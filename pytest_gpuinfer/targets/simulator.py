"""Launching the plugin's simulator as a target (``--engine sim``): never a real engine."""

from __future__ import annotations

import sys

from pytest_gpuinfer.targets.base import LaunchContext
from pytest_gpuinfer.targets.launcher import CommandLauncher, LaunchPlan, pinned_env


class SimulatorLauncher(CommandLauncher):
    """The plugin's simulator: set latencies, for checking our own measurements."""

    name = "sim"
    summary = "the simulator (set latencies; not a real engine)"
    is_simulator = True

    def describe(self, ctx: LaunchContext) -> str:
        """Say plainly that this is a simulator."""
        model = ctx.model or "sim-model"
        return f"sim (simulator, not a real engine), model {model}, launched on first use"

    def plan(self, ctx: LaunchContext) -> LaunchPlan:
        """``python -m pytest_gpuinfer.sim`` with the engine arguments as simulator options."""
        name = ctx.model or "sim-model"
        argv = [
            sys.executable,
            "-m",
            "pytest_gpuinfer.sim",
            "--host",
            ctx.host,
            "--port",
            str(ctx.port),
            "--model",
            name,
            *ctx.engine_args,
        ]
        return LaunchPlan(argv, pinned_env(ctx), None, None, name)
