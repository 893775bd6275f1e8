"""What an engine launcher is: a name, a check of the options, and how to start it.

Engines run as a local command (vLLM, the simulator, llama.cpp, any ``--server-command``)
subclass :class:`CommandLauncher` and only say which command to run; engines with another
lifecycle (a container) implement :meth:`Launcher.launch` themselves and hand back a server whose
``process`` is any :class:`~pytest_gpuinfer.targets.base.ServerHandle`. The registry
(``targets/registry.py``) lists them by name.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from pytest_gpuinfer.hardware.gpu import visible_devices
from pytest_gpuinfer.models import builtin
from pytest_gpuinfer.targets.base import InferenceServer, LaunchContext, wait_until_ready
from pytest_gpuinfer.targets.process import ManagedProcess
from pytest_gpuinfer.targets.startup_failure import startup_failure_reason

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
    picks_own_port: ClassVar[bool] = False
    """True when the engine lets something else pick the host port (Docker) unless the run
    fixed one with --server-port; then ``ctx.port`` is 0 for "any"."""

    def check(self, ctx: LaunchContext) -> str | None:
        """A usage problem with the run's options for this engine (None when they are fine)."""
        return None

    def describe(self, ctx: LaunchContext) -> str:
        """One line saying what will be launched, for the report header."""
        known = builtin.resolve(ctx.model)
        return f"{self.name}, model {'built-in ' + known.served_name if known else ctx.model}"

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
        process = ManagedProcess(plan.argv, log_path=log_path, env=plan.env, nice=ctx.server_nice)
        server = InferenceServer(
            base_url=f"http://{ctx.client_host}:{ctx.port}",
            model=plan.served_name,
            engine=self.name,
            engine_version=plan.version,
            model_path=plan.model_path,
            launched=True,
            gpu_uuids=tuple(g.uuid for g in ctx.gpus),
            api_key=ctx.api_key,
            process=process,
            is_simulator=self.is_simulator,
            cpu_priority=process.cpu_priority,
        )
        started = time.monotonic()

        def story(reason: str) -> str:
            log = process.log_tail(LOG_TAIL_LINES)
            tail = log.rstrip() or "(the server wrote nothing)"
            cause = startup_failure_reason(log)
            if cause:
                reason = f"{reason}; engine failed to start: {cause}"
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


TEST_PROCESS_PREFIXES = ("COVERAGE_", "PYTEST_")
"""Variables that belong to the test process (coverage's subprocess hook, pytest's own): an engine
whose code is not ours starts without them, so measuring the suites never slows the engine."""


def pinned_env(ctx: LaunchContext, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with CUDA_VISIBLE_DEVICES set to the selected GPUs' UUIDs."""
    env = dict(os.environ if base is None else base)
    env.update(ctx.env)
    if ctx.gpus:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(ctx.gpus)
    return env


def engine_env(ctx: LaunchContext, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`pinned_env` for an engine that is not ours, without the test process's variables
    (the run's own ``ctx.env`` is kept whatever its names)."""
    env = {
        name: value
        for name, value in pinned_env(ctx, base).items()
        if not name.startswith(TEST_PROCESS_PREFIXES)
    }
    env.update(ctx.env)
    return env
