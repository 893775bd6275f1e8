"""Launching any server from a command template (``--engine command --server-command ...``)."""

from __future__ import annotations

import shlex

from pytest_gpuinfer.models import builtin
from pytest_gpuinfer.targets.base import LaunchContext
from pytest_gpuinfer.targets.launcher import CommandLauncher, LaunchPlan, engine_env


class CommandLineLauncher(CommandLauncher):
    """Any server given as ``--server-command`` with {port}, {host} and {model} filled in."""

    name = "command"
    summary = "your --server-command (SGLang, TGI, llama.cpp, ...)"

    def check(self, ctx: LaunchContext) -> str | None:
        """The command is required with this engine."""
        if not ctx.server_command:
            return (
                "--engine command needs --server-command 'CMD' with {port} in it, e.g. "
                "'python -m sglang.launch_server --model-path {model} --port {port}'"
            )
        return None

    def describe(self, ctx: LaunchContext) -> str:
        """The command and the model."""
        known = builtin.resolve(ctx.model)
        model = f"built-in {known.served_name}" if known else ctx.model
        return f"command `{shlex.join(ctx.server_command)}`, model {model}"

    def plan(self, ctx: LaunchContext) -> LaunchPlan:
        """The user's command with the placeholders filled in, plus the engine arguments."""
        known = builtin.resolve(ctx.model)
        model_path = str(known.ensure()) if known else str(ctx.model)
        argv = [
            word.format(port=ctx.port, host=ctx.host, model=model_path)
            for word in ctx.server_command
        ] + list(ctx.engine_args)
        served = known.served_name if known else model_path
        return LaunchPlan(argv, engine_env(ctx), None, model_path, served)
