"""The docker target's decisions that need no Docker daemon: arguments, mounts, environment,
labels, GPU requests, the stale-owner test, and one-line usage errors for what is missing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_gpuinfer.hardware.gpu import GPUInfo
from pytest_gpuinfer.models import tinymodel
from pytest_gpuinfer.targets import docker as docker_target
from pytest_gpuinfer.targets.base import LaunchContext

REPO = Path(__file__).resolve().parents[2]


def context(tmp_path: Path, **overrides: Any) -> LaunchContext:
    """A docker launch context in ``tmp_path`` with the given fields changed."""
    fields: dict[str, Any] = {"engine": "docker", "port": 0, "work_dir": tmp_path / "run-x"}
    fields.update(overrides)
    return LaunchContext(**fields)


def gpu(index: int) -> GPUInfo:
    """A made-up GPU with a recognisable UUID."""
    return GPUInfo(index, f"GPU-{index:08d}", "H100", 80 << 30, 0, (9, 0), False)


def test_builtin_model_is_mounted_read_only_and_served_under_its_name(tmp_path: Path) -> None:
    launcher = docker_target.DockerLauncher()
    model = launcher.model_setup(context(tmp_path))
    host_dir = str(tinymodel.ensure_model())
    assert model.volumes == {host_dir: {"bind": model.inside, "mode": "ro"}}
    assert model.inside.startswith("/models/") and model.host_path == host_dir
    args = launcher.server_args(context(tmp_path), model.inside, model.served)
    assert args[:6] == ["--model", model.inside, "--host", "0.0.0.0", "--port", "8000"]
    assert args[args.index("--served-model-name") + 1] == tinymodel.BUILTIN_MODEL_NAME
    assert args[args.index("--max-model-len") + 1] == "1024"
    assert args[args.index("--dtype") + 1] == "float32", "the checkpoint's dtype (see builtin.py)"


def test_user_model_directory_and_file_and_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = docker_target.DockerLauncher()
    weights = tmp_path / "my-model"
    weights.mkdir()
    as_dir = launcher.model_setup(context(tmp_path, model=str(weights)))
    assert as_dir.inside == "/models/my-model" and as_dir.served == str(weights)
    assert as_dir.volumes == {str(weights): {"bind": "/models/my-model", "mode": "ro"}}

    gguf = weights / "model.gguf"
    gguf.write_bytes(b"GGUF")
    as_file = launcher.model_setup(context(tmp_path, model=str(gguf)))
    assert as_file.inside == "/models/my-model/model.gguf"
    assert as_file.volumes == {str(weights): {"bind": "/models/my-model", "mode": "ro"}}

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "hf").mkdir()
    hub = launcher.model_setup(context(tmp_path, model="org/some-model"))
    assert hub.inside == "org/some-model" and hub.host_path is None
    assert hub.volumes == {str(tmp_path / "hf"): {"bind": "/root/.cache/huggingface", "mode": "rw"}}


def test_user_engine_args_win_over_defaults(tmp_path: Path) -> None:
    launcher = docker_target.DockerLauncher()
    ctx = context(
        tmp_path,
        engine_args=("--served-model-name=mine", "--max-model-len", "512", "--dtype=bfloat16"),
    )
    args = launcher.server_args(ctx, "/models/m", "default-name")
    assert args == [
        "--model", "/models/m", "--host", "0.0.0.0", "--port", "8000",
        "--served-model-name=mine", "--max-model-len", "512", "--dtype=bfloat16",
    ]  # fmt: skip


def test_environment_carries_api_key_and_offline_but_not_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_SECRET_OF_THE_HOST", "x")
    launcher = docker_target.DockerLauncher()
    env = launcher.environment(
        context(tmp_path, api_key="k-123", env={"VLLM_LOGGING_LEVEL": "DEBUG"}), wants_gpu=False
    )
    assert env["VLLM_API_KEY"] == "k-123"
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert "SOME_SECRET_OF_THE_HOST" not in env
    on_gpu = launcher.environment(context(tmp_path), wants_gpu=True)
    assert "VLLM_CPU_KVCACHE_SPACE" not in on_gpu


def test_labels_name_the_run_and_this_pytest_process(tmp_path: Path) -> None:
    labels = docker_target.DockerLauncher().labels(context(tmp_path))
    assert labels[docker_target.LABEL_MANAGED] == "true"
    assert labels[docker_target.LABEL_RUN_ID] == "run-x"
    assert labels[docker_target.LABEL_PYTEST_PID] == str(os.getpid())
    assert docker_target.owner_is_alive(labels)


def test_gpu_requests_follow_the_selection(tmp_path: Path) -> None:
    launcher = docker_target.DockerLauncher()
    assert launcher.gpu_request(context(tmp_path)) == (None, False)
    assert launcher.gpu_request(context(tmp_path, has_gpu=True)) == (None, True)
    chosen = context(tmp_path, has_gpu=True, gpus=(gpu(1), gpu(3)))
    assert launcher.gpu_request(chosen) == (["GPU-00000001", "GPU-00000003"], True)
    assert "GPUs GPU-00000001, GPU-00000003" in launcher.describe(chosen)


def test_owner_of_a_dead_or_reused_pid_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not docker_target.owner_is_alive({docker_target.LABEL_PYTEST_PID: str(child.pid)})
    mine = str(os.getpid())
    assert not docker_target.owner_is_alive(
        {docker_target.LABEL_PYTEST_PID: mine, docker_target.LABEL_PYTEST_START: "reused"}
    )
    assert not docker_target.owner_is_alive({docker_target.LABEL_PYTEST_PID: "not-a-pid"})


class FakeImages:
    """``client.images`` that knows a fixed set of image names."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def get(self, name: str) -> object:
        import docker.errors

        if name not in self.names:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return object()


def fake_client(images: set[str], runtimes: dict[str, Any]) -> Any:
    """A stand-in for DockerClient with images and daemon runtimes."""
    return SimpleNamespace(images=FakeImages(images), info=lambda: {"Runtimes": runtimes})


def test_gpus_without_an_nvidia_runtime_are_a_usage_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("docker", reason="the docker SDK is not installed")
    monkeypatch.setattr("shutil.which", lambda tool: None)
    launcher = docker_target.DockerLauncher()
    ctx = context(tmp_path, image="img:1", has_gpu=True, gpus=(gpu(0),))
    problem = launcher._problem(fake_client({"img:1"}, {"runc": {}}), ctx)
    assert problem is not None and "no NVIDIA runtime" in problem and "\n" not in problem
    assert launcher._problem(fake_client({"img:1"}, {"runc": {}, "nvidia": {}}), ctx) is None
    assert launcher._problem(fake_client({"img:1"}, {}), context(tmp_path, image="img:1")) is None


def test_missing_image_is_a_one_line_problem(tmp_path: Path) -> None:
    pytest.importorskip("docker", reason="the docker SDK is not installed")
    problem = docker_target.DockerLauncher()._problem(fake_client(set(), {}), context(tmp_path))
    assert problem is not None and "\n" not in problem
    assert f"image {docker_target.DEFAULT_IMAGE} is not on this machine" in problem


def test_without_the_docker_sdk_check_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)
    problem = docker_target.DockerLauncher().check(context(tmp_path))
    assert problem is not None and "pip install 'pytest-gpuinfer[docker]'" in problem


def test_daemon_not_running_is_a_one_line_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("docker", reason="the docker SDK is not installed")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--engine=docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --engine docker: the Docker daemon at unix://*does not*"])
    assert "Traceback" not in result.stderr.str()


def load_sim_entrypoint() -> Any:
    """dockerfiles/sim-entrypoint.py as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        "sim_entrypoint", REPO / "dockerfiles" / "sim-entrypoint.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sim_image_takes_vllm_arguments() -> None:
    translate = load_sim_entrypoint().simulator_argv
    assert translate(
        ["--model", "/models/m", "--served-model-name", "tiny", "--port", "8000", "--ttft-ms=5"]
    ) == ["--model", "tiny", "--port", "8000", "--ttft-ms=5"]
    assert translate(["--model=/models/dir/"]) == ["--model", "dir"]
    assert translate(["--bogus"]) == ["--bogus"]
    assert translate(["--dtype", "float32", "--max-model-len", "1024", "--dtype=bfloat16"]) == [
        "--max-model-len",
        "1024",
    ], "a simulator has no weights: the dtype the docker target passes is dropped"


def test_failure_shows_a_docker_run_line_without_secrets() -> None:
    line = docker_target.docker_run_line(
        "img:1",
        ["--model", "/models/m"],
        {"/host/m": {"bind": "/models/m", "mode": "ro"}},
        {"VLLM_API_KEY": "sekrit", "HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "1"},
        ["GPU-1", "GPU-2"],
        True,
    )
    assert "sekrit" not in line and "hf_x" not in line
    assert "-e VLLM_API_KEY " in line and "-e HF_HUB_OFFLINE=1" in line
    assert "-v /host/m:/models/m:ro" in line and "'--gpus=\"device=GPU-1,GPU-2\"'" in line
    assert line.endswith("img:1 --model /models/m")
