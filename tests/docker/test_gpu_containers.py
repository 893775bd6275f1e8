"""GPU checks inside containers (from the compatibility checklist), on the image under test.

Run on a GPU runner with the NVIDIA Container Toolkit: ``pytest tests/docker --engine docker
--image YOUR_VLLM_IMAGE``. Each check skips, naming what is missing, without a GPU, without a
Docker daemon, without the NVIDIA runtime, or without the image on this machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.hardware.gpu import GPUInfo, GPUInventory, memory_used_bytes
from pytest_gpuinfer.plugin.fixtures import gpuinfer_settings_of
from pytest_gpuinfer.targets.base import InferenceServer, LaunchContext
from pytest_gpuinfer.targets.docker import DEFAULT_IMAGE, DockerLauncher

pytestmark = pytest.mark.compat

GPU_ENV = {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
"""``utility`` makes the toolkit mount nvidia-smi into the container."""


@pytest.fixture
def gpu_image(gpu: GPUInfo, docker_client: Any, request: pytest.FixtureRequest) -> str:
    """The image under test (--image, else the pinned vLLM image), with a GPU runtime to run it."""
    import docker.errors

    if not DockerLauncher.has_gpu_runtime(docker_client):
        pytest.skip(
            "the Docker daemon has no NVIDIA runtime (install the NVIDIA Container Toolkit)"
        )
    image = gpuinfer_settings_of(request.config).image or DEFAULT_IMAGE
    try:
        docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {image} is not on this machine: `docker pull {image}` first")
    return image


def run_in_container(
    client: Any, image: str, command: list[str], *, device_ids: list[str] | None = None
) -> str:
    """Run ``command`` in a throwaway container with the given GPUs (None: all); its output."""
    from docker.types import DeviceRequest

    request = (
        DeviceRequest(driver="nvidia", device_ids=device_ids, capabilities=[["gpu"]])
        if device_ids
        else DeviceRequest(driver="nvidia", count=-1, capabilities=[["gpu"]])
    )
    container = client.containers.run(
        image,
        entrypoint=command[:1],
        command=command[1:],
        device_requests=[request],
        environment=GPU_ENV,
        detach=True,
    )
    try:
        result = container.wait(timeout=300)
        output = bytes(container.logs(stdout=True, stderr=True)).decode(errors="replace")
    finally:
        container.remove(force=True)
    assert result["StatusCode"] == 0, (
        f"{' '.join(command)} exited {result['StatusCode']}:\n{output}"
    )
    return output


def listed_uuids(nvidia_smi_l: str) -> list[str]:
    """GPU UUIDs in ``nvidia-smi -L`` output."""
    return re.findall(r"UUID: (GPU-[0-9a-fA-F-]+)", nvidia_smi_l)


def test_gpu_is_visible_inside_the_container(
    gpu: GPUInfo, gpu_image: str, docker_client: Any
) -> None:
    """The GPU asked for by UUID is the one nvidia-smi sees inside."""
    output = run_in_container(docker_client, gpu_image, ["nvidia-smi", "-L"], device_ids=[gpu.uuid])
    assert listed_uuids(output) == [gpu.uuid], output


@pytest.mark.requires_gpu(count=2)
def test_all_gpus_are_listed_inside(
    gpu_inventory: GPUInventory, gpu_image: str, docker_client: Any
) -> None:
    """Asking for all GPUs shows every GPU this machine has."""
    output = run_in_container(docker_client, gpu_image, ["nvidia-smi", "-L"])
    assert sorted(listed_uuids(output)) == sorted(g.uuid for g in gpu_inventory.gpus), output


@pytest.mark.requires_gpu(count=2)
def test_restricting_to_one_device_shows_only_that_one(
    gpu_inventory: GPUInventory, gpu_image: str, docker_client: Any
) -> None:
    """A container given the second GPU sees only that GPU, as its device 0."""
    second = gpu_inventory.gpus[1]
    output = run_in_container(
        docker_client, gpu_image, ["nvidia-smi", "-L"], device_ids=[second.uuid]
    )
    assert listed_uuids(output) == [second.uuid], output
    assert output.lstrip().startswith("GPU 0:"), output


def test_cuda_runtime_version_is_reported_and_fits_the_driver(
    gpu: GPUInfo, gpu_image: str, docker_client: Any
) -> None:
    """torch in the image reports its CUDA runtime, no newer than the driver supports."""
    probe = (
        "import torch; print('runtime', torch.version.cuda); "
        "print('available', torch.cuda.is_available(), torch.cuda.device_count())"
    )
    output = run_in_container(
        docker_client, gpu_image, ["python3", "-c", probe], device_ids=[gpu.uuid]
    )
    runtime = re.search(r"runtime (\d+)\.(\d+)", output)
    assert runtime, f"the image's torch reports no CUDA runtime:\n{output}"
    assert "available True 1" in output, output
    smi = run_in_container(docker_client, gpu_image, ["nvidia-smi"], device_ids=[gpu.uuid])
    driver = re.search(r"CUDA Version: (\d+)\.(\d+)", smi)
    assert driver, smi
    runtime_v = (int(runtime[1]), int(runtime[2]))
    driver_v = (int(driver[1]), int(driver[2]))
    assert runtime_v <= driver_v, f"CUDA runtime {runtime_v} is newer than the driver's {driver_v}"


USED_BEFORE = pytest.StashKey[int]()
"""GPU memory in use before the two containers started (read by the test)."""


@pytest.fixture
def two_servers_on_one_gpu(
    gpu: GPUInfo, gpu_image: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[list[InferenceServer]]:
    """Two vLLM containers on the same GPU, each given 40% of its memory; stopped afterwards."""
    settings = gpuinfer_settings_of(request.config)
    launcher = DockerLauncher()
    ctx = LaunchContext(
        engine="docker",
        port=0,
        work_dir=tmp_path,
        model=settings.model,
        engine_args=(*settings.engine_args, "--gpu-memory-utilization", "0.4"),
        image=gpu_image,
        timeout_s=settings.server_timeout_s,
        api_key=settings.api_key,
        gpus=(gpu,),
        has_gpu=True,
    )
    servers: list[InferenceServer] = []
    request.node.stash[USED_BEFORE] = memory_used_bytes(gpu.uuid)
    try:
        for _ in range(2):
            servers.append(launcher.launch(ctx))
        yield servers
    finally:
        for server in servers:
            if server.process is not None:
                server.process.stop()


def test_two_containers_share_one_gpu_with_split_memory(
    gpu: GPUInfo, two_servers_on_one_gpu: list[InferenceServer], request: pytest.FixtureRequest
) -> None:
    """Both containers start on one GPU with 40% of its memory each, and both serve."""
    for server in two_servers_on_one_gpu:
        response = httpx.post(
            f"{server.base_url}/v1/completions",
            headers=server.auth_headers(),
            json={
                "model": server.model,
                "prompt": "Hello",
                "max_tokens": 4,
                "temperature": 0.0,
                "ignore_eos": True,
            },
            timeout=120,
        )
        assert response.status_code == 200, f"{server.describe()}: {response.text[:300]}"
        assert response.json()["usage"]["completion_tokens"] == 4
    # Two servers held to 40% each add at most 80% of the card (plus 2 GiB of CUDA contexts) to
    # what was in use before they started, and at least half of it (each reserved its share).
    before = request.node.stash[USED_BEFORE]
    added = memory_used_bytes(gpu.uuid) - before
    total = gpu.memory_total_bytes
    assert added <= 0.8 * total + 2 * 2**30, (
        f"two servers at 40% each added {added / 2**30:.1f} GiB on {gpu.uuid} "
        f"({total / 2**30:.1f} GiB in all): more than their shares"
    )
    assert added >= 0.5 * total, (
        f"two servers at 40% each added only {added / 2**30:.1f} GiB on {gpu.uuid} "
        f"({total / 2**30:.1f} GiB in all): did both reserve their share?"
    )
