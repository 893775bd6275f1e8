"""On an NVIDIA GPU: NVML sampling of a real process that allocates and frees GPU memory
through PyTorch; a process that leaks on purpose must be caught, a steady one must pass.

Run on a GPU machine (no vLLM needed): ``pytest tests/memory/test_gpu_memory.py -p no:locust``.
Here (no GPU) every test skips with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pytest_gpuinfer.hardware.gpu import GPUInfo
from pytest_gpuinfer.memory.hog import MemoryHog
from pytest_gpuinfer.memory.leak import GrowthLimits, judge_batches, run_batches
from pytest_gpuinfer.memory.tracker import NVMLMemory, process_tree_pids
from pytest_gpuinfer.plugin.extras import require
from pytest_gpuinfer.plugin.memory_fixtures import VramTracker

HOG_MB = 512
BATCHES = 5
HOG_LIMITS = GrowthLimits(
    per_unit_mb=HOG_MB / 4,
    allowance_mb=HOG_MB,
    unit="batch",
    source="a quarter of what the leaking hog keeps per batch",
)
"""One batch is the unit of work: the leaking hog keeps 512 MB per batch, four times the rate."""


@pytest.fixture
def cuda_hog(request: pytest.FixtureRequest, gpu: GPUInfo) -> Iterator[MemoryHog]:
    """A hog allocating 512 MB per batch on ``gpu`` (pinned by UUID), leaking or not."""
    require("torch", "the hog allocates through it")
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu.uuid
    try:
        hog = MemoryHog(mb=HOG_MB, leak=request.param, device="cuda:0")
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
    with hog:
        yield hog


@pytest.mark.requires_gpu
@pytest.mark.parametrize(
    ("cuda_hog", "should_pass"),
    [(True, False), (False, True)],
    ids=["leaking", "steady"],
    indirect=["cuda_hog"],
)
def test_nvml_batches_catch_a_leaking_gpu_process(
    cuda_hog: MemoryHog, should_pass: bool, gpu: GPUInfo
) -> None:
    source = NVMLMemory([gpu.uuid], pids=process_tree_pids(cuda_hog.pid))
    tracker = VramTracker(gpus=(gpu,)).start(source, interval_s=0.05, settle_s=0.5)
    assert tracker.baseline_bytes is not None and tracker.baseline_bytes > 0, (
        "NVML shows no device memory for the hog's pid (a PID namespace hides it?)"
    )
    phases = run_batches(tracker, lambda _i: cuda_hog.batch(), batches=BATCHES, settle_s=0.3)
    tracker.stop()
    verdict = judge_batches(tracker, phases, work_per_batch=1, limits=HOG_LIMITS)
    assert verdict.passed is should_pass, verdict.message()
    assert all(p.peak_bytes >= p.before_bytes for p in phases), verdict.message()
    if not should_pass:
        assert verdict.growth_bytes >= (BATCHES - 1) * HOG_MB * 1_000_000 * 0.9


@pytest.mark.requires_gpu
@pytest.mark.leak(max_growth_mb=HOG_MB, settle_s=0.5, release_timeout_s=10)
@pytest.mark.parametrize("cuda_hog", [False], ids=["steady"], indirect=True)
def test_leak_marker_with_nvml_passes_a_steady_gpu_process(
    cuda_hog: MemoryHog, vram_tracker: VramTracker
) -> None:
    tracker = vram_tracker.start(cuda_hog.pid, interval_s=0.05, settle_s=0.5)
    assert "NVML" in tracker.source.describe()
    for _ in range(BATCHES):
        cuda_hog.batch()


@pytest.mark.requires_gpu
def test_leak_marker_with_nvml_fails_a_leaking_gpu_process(
    pytester: pytest.Pytester, gpu: GPUInfo
) -> None:
    require("torch", "the hog allocates through it")
    pytester.makepyfile(
        f"""
        import os
        import pytest
        from pytest_gpuinfer.memory.hog import MemoryHog

        @pytest.fixture
        def hog():
            os.environ["CUDA_VISIBLE_DEVICES"] = {gpu.uuid!r}
            with MemoryHog(mb={HOG_MB}, leak=True, device="cuda:0") as process:
                yield process

        @pytest.mark.leak(max_growth_mb={HOG_MB}, settle_s=0.5, release_timeout_s=5)
        def test_leaks(hog, vram_tracker):
            vram_tracker.start(hog.pid, interval_s=0.05, settle_s=0.5)
            for _ in range({BATCHES}):
                hog.batch()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:locust", f"--gpu={gpu.uuid}")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "memory leak check FAILED" in text and "VRAM" in text and "timeline:" in text
