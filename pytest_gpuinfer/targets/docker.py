"""The ``docker`` engine: vLLM (or any image that takes vLLM's arguments) in a container.

The container is created through the docker SDK (imported lazily: the plugin works without it)
with GPU device requests for the selected GPUs, ``ipc=host``, the server's port bound to
127.0.0.1 on a host port Docker picks, the model directory mounted read-only (or the host's
Hugging Face cache for a hub id), and labels naming the run and the pytest process that owns it.
Containers are never auto-removed: a crashed container's log is evidence, quoted in the failure,
then saved beside the run's other logs when the container is removed at teardown. Containers left
by runs whose pytest process is gone are removed at the next run's start.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest_gpuinfer.targets.vllm as vllm
from pytest_gpuinfer.models import builtin
from pytest_gpuinfer.targets.base import (
    InferenceServer,
    LaunchContext,
    TargetError,
    wait_until_ready,
)
from pytest_gpuinfer.targets.launcher import LOG_TAIL_LINES, Launcher
from pytest_gpuinfer.targets.process import read_log_tail

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

DEFAULT_IMAGE = "vllm/vllm-openai:v0.32.0"
"""The image run when --image is not given: vLLM's OpenAI server, pinned to the vLLM version
this plugin is tested with."""
CONTAINER_PORT = 8000
MODEL_MOUNT_ROOT = "/models"
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"

LABEL_MANAGED = "io.gpuinfer.managed"
LABEL_RUN_ID = "io.gpuinfer.run-id"
LABEL_PYTEST_PID = "io.gpuinfer.pytest-pid"
LABEL_PYTEST_START = "io.gpuinfer.pytest-start"
"""The pytest process's start time (/proc/PID/stat), so a reused pid is not taken for it."""
LABEL_HOST = "io.gpuinfer.host"

DAEMON_TIMEOUT_S = 30
NVIDIA_RUNTIME_TOOLS = ("nvidia-container-runtime-hook", "nvidia-container-cli", "nvidia-ctk")


class DockerUnavailable(TargetError):
    """The docker SDK is missing or the daemon does not answer."""


def docker_client(timeout_s: int = DAEMON_TIMEOUT_S) -> DockerClient:
    """A client for the daemon named by DOCKER_HOST (or the local socket), checked to answer."""
    try:
        import docker
        import docker.errors
    except ImportError:
        raise DockerUnavailable(
            "--engine docker needs the docker Python SDK: pip install 'pytest-gpuinfer[docker]'"
        ) from None
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=timeout_s)
        client.ping()
    except docker.errors.DockerException as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise DockerUnavailable(
            f"--engine docker: the Docker daemon at {where} does not answer ({reason}); "
            "start it (`sudo systemctl start docker`, or `dockerd &` as root) or set DOCKER_HOST"
        ) from None
    return client


def process_start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def owner_is_alive(labels: dict[str, str]) -> bool:
    """True while the pytest process named by a container's labels still runs."""
    try:
        pid = int(labels.get(LABEL_PYTEST_PID, ""))
    except ValueError:
        return False
    started = process_start_time(pid)
    return started is not None and started == labels.get(LABEL_PYTEST_START, started)


def sweep_stale_containers(client: DockerClient) -> list[str]:
    """Remove this host's labelled containers whose pytest process is gone; their names."""
    import docker.errors

    removed = []
    here = socket.gethostname()
    for container in client.containers.list(all=True, filters={"label": LABEL_MANAGED}):
        labels = container.labels
        if labels.get(LABEL_HOST) != here or owner_is_alive(labels):
            continue
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
            removed.append(str(container.name))
    return removed


@dataclass(frozen=True)
class ModelMount:
    """The model as the container sees it, and the mounts that put it there."""

    inside: str
    """``--model`` inside the container (a mounted path, or a hub id)."""
    served: str
    """The name the server is asked to serve it under."""
    volumes: dict[str, dict[str, str]]
    host_path: str | None
    """The model's path on this machine (None for a hub id)."""


class DockerContainer:
    """A launched container as a ServerHandle: state, logs, stop-and-remove."""

    def __init__(self, container: Container, log_path: Path) -> None:
        self.container = container
        self.name = str(container.name)
        self._log_path = log_path
        self._removed = False
        self._last_code: int | None = None

    @property
    def pid(self) -> int | None:
        """The container's main process id on the host (State.Pid), while it runs."""
        state = self._state()
        pid = int(state.get("Pid") or 0) if state else 0
        return pid or None

    @property
    def log_path(self) -> Path | None:
        """The file the container's whole log is saved to when it is removed."""
        return self._log_path

    def _state(self) -> dict[str, Any] | None:
        """The container's State from ``docker inspect``; None once it is gone."""
        import docker.errors

        if self._removed:
            return None
        try:
            self.container.reload()
        except docker.errors.NotFound:
            self._removed = True
            return None
        state = self.container.attrs.get("State")
        return state if isinstance(state, dict) else None

    def returncode(self) -> int | None:
        """The exit code once the container has stopped; None while it is created or running."""
        state = self._state()
        if state is None:
            # Removed (by teardown or by someone else): its last known code, else "killed".
            return self._last_code if self._last_code is not None else -9
        if state.get("Status") in ("exited", "dead"):
            self._last_code = int(state.get("ExitCode", -1))
            return self._last_code
        return None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The container's last log lines (from the saved file once it has been removed)."""
        import docker.errors

        if not self._removed:
            try:
                raw = self.container.logs(stdout=True, stderr=True, tail=lines)
                return bytes(raw).decode("utf-8", errors="replace")
            except docker.errors.NotFound:
                self._removed = True
        return read_log_tail(self._log_path, lines)

    def save_log(self) -> None:
        """Write the container's whole log to ``log_path`` (kept after the container is gone)."""
        import docker.errors

        with contextlib.suppress(docker.errors.DockerException, OSError):
            raw = self.container.logs(stdout=True, stderr=True)
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_path.write_bytes(bytes(raw))

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the container (SIGTERM, then SIGKILL after ``grace_s``), save its log, remove it."""
        import docker.errors

        if self._removed:
            return
        try:
            with contextlib.suppress(docker.errors.APIError):
                self.container.stop(timeout=max(1, int(grace_s)))
            self.returncode()
            self.save_log()
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        self._removed = True


class DockerLauncher(Launcher):
    """vLLM's OpenAI server (or any image taking vLLM's arguments) in a Docker container."""

    name = "docker"
    summary = f"vLLM in a Docker container (--image, default {DEFAULT_IMAGE})"
    picks_own_port = True

    def __init__(self) -> None:
        self._swept: list[str] | None = None
        self._names = itertools.count(1)

    def image(self, ctx: LaunchContext) -> str:
        """The image this run starts."""
        return ctx.image or DEFAULT_IMAGE

    def gpu_request(self, ctx: LaunchContext) -> tuple[list[str] | None, bool]:
        """(GPU UUIDs to request, or None for all GPUs; whether any GPU is requested at all)."""
        if ctx.gpus:
            return [g.uuid for g in ctx.gpus], True
        return None, ctx.has_gpu

    def check(self, ctx: LaunchContext) -> str | None:
        """At session start: the SDK, the daemon, the image, the GPU runtime, a fixed port.

        Also removes containers left behind by runs whose pytest process is gone.
        """
        try:
            client = docker_client()
        except DockerUnavailable as exc:
            return str(exc)
        try:
            self.sweep_once(client)
            return self._problem(client, ctx)
        finally:
            client.close()

    def _problem(self, client: DockerClient, ctx: LaunchContext) -> str | None:
        """The first reason this run cannot start its container, or None."""
        import docker.errors

        image = self.image(ctx)
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            return (
                f"--engine docker: image {image} is not on this machine, and pytest-gpuinfer "
                f"does not pull images (a registry may be unreachable, and a pull can take "
                f"long): `docker pull {image}` first, or pass --image with a local image "
                "(dockerfiles/build-images.sh builds gpuinfer/vllm-cpu:local)"
            )
        _, wants_gpu = self.gpu_request(ctx)
        if wants_gpu and not self.has_gpu_runtime(client):
            return (
                "--engine docker: GPUs were asked for but the Docker daemon has no NVIDIA "
                "runtime (no 'nvidia' runtime, no nvidia-container-runtime-hook): install the "
                "NVIDIA Container Toolkit and restart dockerd"
            )
        return None

    @staticmethod
    def has_gpu_runtime(client: DockerClient) -> bool:
        """True when the daemon can hand GPUs to containers (NVIDIA runtime or hook present)."""
        import shutil

        runtimes = client.info().get("Runtimes") or {}
        return "nvidia" in runtimes or any(shutil.which(tool) for tool in NVIDIA_RUNTIME_TOOLS)

    def sweep_once(self, client: DockerClient) -> list[str]:
        """Remove stale containers of dead runs, once per run."""
        if self._swept is None:
            self._swept = sweep_stale_containers(client)
        return self._swept

    def describe(self, ctx: LaunchContext) -> str:
        """Image, model, GPUs, and any stale containers removed at start."""
        known = builtin.resolve(ctx.model)
        model = f"built-in {known.served_name}" if known else ctx.model
        gpus = ", ".join(g.uuid for g in ctx.gpus) if ctx.gpus else "all" if ctx.has_gpu else "none"
        swept = f"; removed stale containers: {', '.join(self._swept)}" if self._swept else ""
        return f"docker image {self.image(ctx)}, model {model}, GPUs {gpus}{swept}"

    def model_setup(self, ctx: LaunchContext) -> ModelMount:
        """Where the model is inside the container, its served name, and what to mount."""
        known = builtin.resolve(ctx.model)
        if known is not None:
            host_dir = known.ensure()
            inside = f"{MODEL_MOUNT_ROOT}/{host_dir.name}"
            return ModelMount(inside, known.served_name, {str(host_dir): ro(inside)}, str(host_dir))
        assert ctx.model is not None
        local = Path(ctx.model).expanduser()
        if local.exists():
            local = local.resolve()
            host_dir = local if local.is_dir() else local.parent
            inside_dir = f"{MODEL_MOUNT_ROOT}/{host_dir.name}"
            inside = inside_dir if local.is_dir() else f"{inside_dir}/{local.name}"
            return ModelMount(inside, ctx.model, {str(host_dir): ro(inside_dir)}, str(local))
        # A hub id: the host's Hugging Face cache, writable (the hub client takes locks in it).
        hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        volumes = {}
        if hf_home.is_dir():
            volumes[str(hf_home)] = {"bind": HF_CACHE_IN_CONTAINER, "mode": "rw"}
        return ModelMount(ctx.model, ctx.model, volumes, None)

    def server_args(self, ctx: LaunchContext, model: str, served: str) -> list[str]:
        """vLLM's arguments: model, served name, listen on all interfaces in the container."""
        args = ["--model", model, "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]
        extra = list(ctx.engine_args)
        if not vllm.has_flag(extra, "--served-model-name"):
            args += ["--served-model-name", served]
        known = builtin.resolve(ctx.model)
        if known and not vllm.has_flag(extra, "--max-model-len"):
            args += ["--max-model-len", "1024"]
        if known and known.dtype and not vllm.has_flag(extra, "--dtype"):
            args += ["--dtype", known.dtype]
        return args + extra

    def environment(self, ctx: LaunchContext, wants_gpu: bool) -> dict[str, str]:
        """The container's environment: only what the server needs, never this process's."""
        base = dict(ctx.env)
        if ctx.api_key:
            base["VLLM_API_KEY"] = ctx.api_key
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE"):
            if name in os.environ and name not in base:
                base[name] = os.environ[name]
        local = builtin.resolve(ctx.model) is not None or Path(str(ctx.model)).expanduser().exists()
        offline = local
        env = vllm.environment(base, has_gpu=wants_gpu, offline=offline)
        if offline:
            env.setdefault("HF_HUB_OFFLINE", "1")
        return env

    def labels(self, ctx: LaunchContext) -> dict[str, str]:
        """Labels naming the run and the pytest process, for teardown and the stale sweep."""
        pid = os.getpid()
        return {
            LABEL_MANAGED: "true",
            LABEL_RUN_ID: ctx.work_dir.name,
            LABEL_PYTEST_PID: str(pid),
            LABEL_PYTEST_START: process_start_time(pid) or "",
            LABEL_HOST: socket.gethostname(),
        }

    def launch(self, ctx: LaunchContext) -> InferenceServer:
        """Create and start the container, read its host port back, wait until it serves."""
        import docker.errors
        from docker.types import DeviceRequest

        client = docker_client()
        self.sweep_once(client)
        image = self.image(ctx)
        model = self.model_setup(ctx)
        args = self.server_args(ctx, model.inside, model.served)
        uuids, wants_gpu = self.gpu_request(ctx)
        devices = (
            [DeviceRequest(driver="nvidia", device_ids=uuids, capabilities=[["gpu"]])]
            if uuids
            else [DeviceRequest(driver="nvidia", count=-1, capabilities=[["gpu"]])]
            if wants_gpu
            else []
        )
        name = f"gpuinfer-{ctx.work_dir.name.removeprefix('pytest-gpuinfer-')}-{next(self._names)}"
        environment = self.environment(ctx, wants_gpu)
        command_line = docker_run_line(image, args, model.volumes, environment, uuids, wants_gpu)
        try:
            container = client.containers.create(
                image,
                command=args,
                name=name,
                detach=True,
                labels=self.labels(ctx),
                environment=environment,
                ports={f"{CONTAINER_PORT}/tcp": (ctx.host, ctx.port or None)},
                volumes=model.volumes,
                device_requests=devices,
                ipc_mode="host",
                auto_remove=False,
            )
        except docker.errors.ImageNotFound:
            raise TargetError(
                f"--engine docker: image {image} is not on this machine: `docker pull {image}`"
            ) from None
        except docker.errors.APIError as exc:
            raise TargetError(
                f"--engine docker: could not create the container: {_why(exc)}"
            ) from None
        handle = DockerContainer(container, ctx.work_dir / f"{name}.log")
        try:
            return self._start_and_wait(ctx, handle, model, command_line, uuids)
        except BaseException:
            handle.stop(grace_s=2)
            raise
        finally:
            client.close()

    def _start_and_wait(
        self,
        ctx: LaunchContext,
        handle: DockerContainer,
        model: ModelMount,
        command_line: str,
        uuids: Sequence[str] | None,
    ) -> InferenceServer:
        """Start the created container and wait for readiness; raise TargetError with its log."""
        import docker.errors

        started = time.monotonic()
        try:
            handle.container.start()
        except docker.errors.APIError as exc:
            raise TargetError(_start_failure(exc, ctx, ctx.port or None)) from None
        handle.container.reload()
        bindings = (handle.container.attrs["NetworkSettings"]["Ports"] or {}).get(
            f"{CONTAINER_PORT}/tcp"
        ) or []
        if not bindings:
            raise TargetError(
                f"--engine docker: container {handle.name} has no host port for "
                f"{CONTAINER_PORT}/tcp (it exited at once?): {handle.log_tail(20).strip()}"
            )
        host_port = int(bindings[0]["HostPort"])
        simulator = handle.container.labels.get("io.gpuinfer.simulator") == "true"
        server = InferenceServer(
            base_url=f"http://{ctx.client_host}:{host_port}",
            model=model.served,
            # The engine inside: vLLM (this target passes vLLM's arguments), or the simulator.
            engine=self.name if simulator else "vllm",
            model_path=model.host_path,
            is_simulator=simulator,
            launched=True,
            gpu_uuids=tuple(uuids or ()),
            api_key=ctx.api_key,
            process=handle,
        )

        def story(reason: str) -> str:
            tail = handle.log_tail(LOG_TAIL_LINES).rstrip() or "(the container wrote nothing)"
            code = handle.returncode()
            status = f"exit code {code}" if code is not None else "still running"
            return (
                f"pytest-gpuinfer could not start container {handle.name} ({status}): {reason}.\n"
                f"command: {command_line}\n"
                f"--- last {LOG_TAIL_LINES} lines of the container log ---\n{tail}"
            )

        ready = wait_until_ready(
            server.base_url,
            timeout_s=ctx.timeout_s,
            headers=server.auth_headers(),
            exited=handle.returncode,
            describe_failure=story,
        )
        server.cold_start_s = time.monotonic() - started
        server.max_model_len = ready.max_model_len
        server.engine_version = ready.version
        if server.model not in ready.model_ids:
            server.model = ready.model_ids[0]
        return server


def docker_run_line(
    image: str,
    args: Sequence[str],
    volumes: dict[str, dict[str, str]],
    environment: dict[str, str],
    uuids: Sequence[str] | None,
    wants_gpu: bool,
) -> str:
    """The ``docker run`` command that starts the same container by hand (secrets not shown)."""
    words = ["docker", "run", "--ipc=host", "-p", f"127.0.0.1::{CONTAINER_PORT}"]
    if wants_gpu:
        words.append("--gpus=" + (f'"device={",".join(uuids)}"' if uuids else "all"))
    for host, mount in volumes.items():
        words += ["-v", f"{host}:{mount['bind']}:{mount['mode']}"]
    for key in sorted(environment):
        words += ["-e", key if "KEY" in key or "TOKEN" in key else f"{key}={environment[key]}"]
    return shlex.join([*words, image, *args])


def ro(bind: str) -> dict[str, str]:
    """A read-only bind mount at ``bind`` in the container."""
    return {"bind": bind, "mode": "ro"}


def _why(exc: Exception) -> str:
    """The daemon's explanation of an API error, on one line."""
    explanation = getattr(exc, "explanation", None) or str(exc)
    return " ".join(str(explanation).split())[:400]


def _start_failure(exc: Exception, ctx: LaunchContext, fixed_port: int | None) -> str:
    """A one-paragraph reason the daemon refused to start the container."""
    why = _why(exc)
    lowered = why.lower()
    if "port is already allocated" in lowered or "address already in use" in lowered:
        port = fixed_port or "the chosen port"
        return (
            f"--engine docker: port conflict: {ctx.host}:{port} is already in use "
            f"(pick another --server-port, or leave it out so Docker picks one): {why}"
        )
    if "could not select device driver" in lowered or "nvidia" in lowered:
        return (
            "--engine docker: GPUs were asked for but the Docker daemon cannot provide them "
            f"(install the NVIDIA Container Toolkit and restart dockerd): {why}"
        )
    return f"--engine docker: the container did not start: {why}"


_REACH_SCRIPT = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as answer:
        print(answer.status, answer.read(200).decode(errors="replace"))
except Exception as exc:
    print(type(exc).__name__, exc, file=sys.stderr)
    sys.exit(1)
"""


@dataclass(frozen=True)
class Reach:
    """Whether a container on a network reached a URL, and what it saw."""

    ok: bool
    url: str
    network: str
    detail: str

    def line(self) -> str:
        """One line for failure messages."""
        verdict = "reached" if self.ok else "could not reach"
        return f"a container on network {self.network} {verdict} {self.url}: {self.detail}"


def reach_from_container(
    client: DockerClient, image: str, *, network: str, url: str, timeout_s: float = 10.0
) -> Reach:
    """Run a throwaway container of ``image`` (it needs python) on ``network`` that GETs ``url``.

    On a user-defined network Docker's DNS resolves other containers by name; on the default
    bridge it does not, so the same call says why it failed.
    """
    import docker.errors

    try:
        output = client.containers.run(
            image,
            entrypoint=["python", "-c", _REACH_SCRIPT, url, str(timeout_s)],
            network=network,
            remove=True,
            stderr=True,
        )
        return Reach(True, url, network, bytes(output).decode(errors="replace").strip())
    except docker.errors.ContainerError as exc:
        text = bytes(exc.stderr or b"").decode(errors="replace").strip() or str(exc)
        return Reach(False, url, network, " ".join(text.split())[-300:])
