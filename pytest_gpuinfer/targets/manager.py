"""Starts the configured target, remembers what it launched, and stops all of it at the end."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pytest_gpuinfer.targets.base import (
    InferenceServer,
    LaunchContext,
    TargetError,
    wait_until_ready,
)
from pytest_gpuinfer.targets.launcher import Launcher
from pytest_gpuinfer.targets.process import free_port
from pytest_gpuinfer.targets.registry import EngineRegistry, with_overrides

LOG_TAIL_LINES = 100


@dataclass
class TargetManager:
    """Owns every server this run launched; the plugin keeps one in ``config.stash``."""

    context: LaunchContext
    """The run's launch options; ``port`` 0 means a free port is picked per launch."""
    registry: EngineRegistry
    endpoint: str | None = None
    """Attach to this URL instead of launching."""
    servers: list[InferenceServer] = field(default_factory=list)

    @property
    def launcher(self) -> Launcher:
        """The launcher of the configured engine."""
        return self.registry.get(self.context.engine)

    def start(self) -> InferenceServer:
        """Start (or attach to) the configured target; raise TargetError with the whole story."""
        if self.endpoint:
            return self._attach(self.endpoint)
        return self.launch()

    def launch(
        self, *, engine_args: Iterable[str] = (), env: Mapping[str, str] | None = None
    ) -> InferenceServer:
        """Launch a fresh server of the configured engine, with extra engine args/environment.

        Used by the session's server and by tests that need a differently configured one (a
        server-argument sweep, a small KV cache): stop it with :meth:`stop`.
        """
        if self.endpoint:
            raise TargetError(
                f"--endpoint {self.endpoint}: this test launches its own server with other "
                "engine arguments, which an attached endpoint cannot do"
            )
        ctx = with_overrides(self.context, engine_args=engine_args, env=env)
        launcher = self.launcher
        if not ctx.port and not launcher.picks_own_port:
            ctx = replace(ctx, port=free_port(ctx.host))
        server = launcher.launch(ctx)
        self.servers.append(server)
        return server

    def stop(self, server: InferenceServer) -> None:
        """Stop one launched server (all of it); attached endpoints are left alone."""
        if server.process is not None:
            server.process.stop()
        if server in self.servers:
            self.servers.remove(server)

    def stop_all(self) -> None:
        """Stop every server still running; safe to call more than once."""
        for server in list(self.servers):
            self.stop(server)

    def describe_planned(self) -> str:
        """One line saying what target this run will use, before it is started."""
        if self.endpoint:
            return f"endpoint {self.endpoint} (attached; nothing is launched)"
        return self.launcher.describe(self.context)

    def dead_server_story(self) -> str | None:
        """A message with the log tail when a launched server has exited, else None."""
        for server in self.servers:
            handle = server.process
            code = handle.returncode() if handle is not None else None
            if handle is None or code is None:
                continue
            tail = server.log_tail(LOG_TAIL_LINES).rstrip() or "(the server wrote nothing)"
            where = f"log: {handle.log_path}\n" if handle.log_path is not None else ""
            return (
                f"the {server.engine} server at {server.base_url} exited with code {code} "
                f"during the run; later tests cannot reach it.\n{where}"
                f"--- last {LOG_TAIL_LINES} lines of the server log ---\n{tail}"
            )
        return None

    def _attach(self, base_url: str) -> InferenceServer:
        """Check that an external server answers and serves the requested model."""
        api_key = self.context.api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        ready = wait_until_ready(
            base_url,
            timeout_s=self.context.timeout_s,
            headers=headers,
            describe_failure=lambda reason: f"--endpoint {base_url}: {reason}",
        )
        model = self.context.model
        if model and model not in ready.model_ids:
            raise TargetError(
                f"--endpoint {base_url} does not serve model {model!r}; "
                f"it lists: {', '.join(ready.model_ids)}"
            )
        return InferenceServer(
            base_url=base_url,
            model=model or ready.model_ids[0],
            engine="endpoint",
            engine_version=ready.version,
            max_model_len=ready.max_model_len,
            api_key=api_key,
        )
