"""The NVML layer against a fake NVML module: inventory, selection, memory, CPU mode."""

from __future__ import annotations

import pytest
from fake_nvml import H100, L4, make_fake_nvml

from pytest_gpuinfer.hardware import gpu


def test_inventory_reads_every_field() -> None:
    fake = make_fake_nvml([H100, L4], driver=b"580.65.06", cuda=12040)
    inventory = gpu.discover(fake)
    assert inventory.has_gpu
    assert inventory.driver_version == "580.65.06"
    assert inventory.cuda_version == "12.4"
    first, second = inventory.gpus
    assert (first.index, first.uuid, first.name) == (0, H100["uuid"], H100["name"])
    assert first.memory_total_bytes == 80 * 2**30 and first.memory_used_bytes == 2**30
    assert first.compute_capability == (9, 0) and first.mig_enabled is False
    assert second.name == "NVIDIA L4", "bytes names from old bindings are decoded"
    assert second.mig_enabled is None, "GPUs without MIG report None"
    assert fake.calls == ["init", "shutdown"], "NVML is shut down after the inventory"


def test_no_nvml_library_means_cpu_mode_with_reason() -> None:
    inventory = gpu.discover(make_fake_nvml(init_error="NVML Shared Library Not Found"))
    assert not inventory.has_gpu
    assert "NVML Shared Library Not Found" in (inventory.unavailable_reason or "")
    assert inventory.header_line().startswith("GPUs: none, CPU mode (NVML did not initialise")


def test_zero_gpus_is_cpu_mode() -> None:
    inventory = gpu.discover(make_fake_nvml([]))
    assert not inventory.has_gpu and inventory.unavailable_reason == "NVML found no GPU"


def test_header_line_lists_gpus() -> None:
    line = gpu.discover(make_fake_nvml([H100])).header_line()
    assert "GPUs: 1 (driver 580.65.06, CUDA 13.0)" in line
    assert "NVIDIA H100 80GB HBM3 80 GiB, sm_90" in line and H100["uuid"] in line


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0", [0]),
        ("1", [1]),
        ("1,0", [1, 0]),
        ("0, 0", [0]),
        (L4["uuid"], [1]),
        ("GPU-1111", [0]),
        (f"{H100['uuid']},1", [0, 1]),
    ],
)
def test_select_by_index_uuid_or_prefix(spec: str, expected: list[int]) -> None:
    inventory = gpu.discover(make_fake_nvml([H100, L4]))
    assert [g.index for g in inventory.select(spec)] == expected


@pytest.mark.parametrize("spec", ["2", "GPU-zzz", "0,,1", "GPU-"])
def test_select_unknown_gpu_names_what_is_available(spec: str) -> None:
    inventory = gpu.discover(make_fake_nvml([H100, L4]))
    with pytest.raises(gpu.GPUSelectionError) as info:
        inventory.select(spec)
    assert "--gpu" in str(info.value)


def test_select_without_gpus_says_why() -> None:
    inventory = gpu.discover(make_fake_nvml(init_error="driver not loaded"))
    with pytest.raises(gpu.GPUSelectionError, match="driver not loaded"):
        inventory.select("0")


def test_visible_devices_pins_by_uuid() -> None:
    inventory = gpu.discover(make_fake_nvml([H100, L4]))
    assert gpu.visible_devices(inventory.select("1,0")) == f"{L4['uuid']},{H100['uuid']}"


def test_memory_queries_by_uuid() -> None:
    fake = make_fake_nvml([dict(H100, procs={123: 5 * 2**30, 456: None})])
    assert gpu.memory_used_bytes(H100["uuid"], fake) == 2**30
    assert gpu.process_memory_bytes(H100["uuid"], fake) == {123: 5 * 2**30, 456: 0}


def test_real_nvml_when_a_gpu_is_present() -> None:
    """On a GPU machine this checks the real bindings; elsewhere it says what is missing."""
    inventory = gpu.discover()
    if not inventory.has_gpu:
        pytest.skip(f"no NVIDIA GPU here: {inventory.unavailable_reason}")
    for info in inventory.gpus:
        assert info.uuid.startswith(("GPU-", "MIG-"))
        assert info.memory_total_bytes > 0
        assert 0 <= info.memory_used_bytes <= info.memory_total_bytes
    assert inventory.driver_version and inventory.cuda_version
    assert gpu.memory_used_bytes(inventory.gpus[0].uuid) > 0


def test_each_xdist_worker_pins_its_own_gpu() -> None:
    """Round robin over the selection (or every GPU): gw0 -> first, gw1 -> second, gw2 -> first."""
    inventory = gpu.discover(make_fake_nvml([H100, L4]))
    pinned = [inventory.for_worker(None, w)[0].uuid for w in range(3)]
    assert pinned == [H100["uuid"], L4["uuid"], H100["uuid"]]
    assert [g.uuid for g in inventory.for_worker("1", 0)] == [L4["uuid"]]
    assert gpu.discover(make_fake_nvml([])).for_worker(None, 1) == ()


def test_worker_index_comes_from_xdist_workerinput() -> None:
    from types import SimpleNamespace

    from pytest_gpuinfer.plugin.hooks import xdist_worker_index

    assert xdist_worker_index(SimpleNamespace()) is None  # type: ignore[arg-type]
    worker = SimpleNamespace(workerinput={"workerid": "gw3"})
    assert xdist_worker_index(worker) == 3  # type: ignore[arg-type]


def test_xdist_workers_each_run_their_own_server(pytester: pytest.Pytester) -> None:
    """With -n 2 and no GPU, each worker launches (and stops) a server of its own."""
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_server(inference_server, n):
            assert inference_server.launched
            print(os.environ.get("PYTEST_XDIST_WORKER"), inference_server.base_url)
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "--engine=sim", "-p", "xdist", "-rA")
    result.assert_outcomes(passed=4)
    urls = {line.split()[-1] for line in result.stdout.lines if "gw" in line and "http" in line}
    assert len(urls) == 2, result.stdout.str()
