"""Memory across batches on the session's real engine: no creep, and the leak marker on it.

K batches of M concurrent requests; memory before, after and peak per batch (VRAM through NVML
on a GPU, the server's process-tree RSS on CPU); the verdict is on the total delta and on the
least-squares trend of the per-batch levels. A warm-up batch runs first: the first requests
fill allocator pools and caches once, which is not a leak.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_gpuinfer.memory.http_probes import OpenAIBoundaryProbes
from pytest_gpuinfer.memory.leak import judge_batches, run_batches
from pytest_gpuinfer.memory.tracker import MemoryTracker
from pytest_gpuinfer.plugin.ci import in_ci
from pytest_gpuinfer.plugin.memory_fixtures import LeakLimits, VramTracker
from pytest_gpuinfer.targets import InferenceServer

IN_CI = in_ci()
BATCHES = 6 if IN_CI else 12
REQUESTS_PER_BATCH = 16
MAX_TOKENS = 32
PROMPT = "Memory on the device holds the weights, the activations and the cache. " * 4


def _batch_runner(server: InferenceServer) -> Callable[[int], object]:
    """A function running batch i: M concurrent completions that must all succeed."""
    probes = OpenAIBoundaryProbes(
        server.base_url, server.model, headers=server.auth_headers(), timeout_s=120.0
    )

    def batch(index: int) -> object:
        result = probes.run(REQUESTS_PER_BATCH, REQUESTS_PER_BATCH, f"{index} {PROMPT}", MAX_TOKENS)
        if result.outcome.failed:
            pytest.fail(f"batch {index + 1} did not complete: {result.detail}", pytrace=False)
        return result

    return batch


def _tracker(vram_tracker: VramTracker, server: InferenceServer) -> MemoryTracker:
    """Track the server (skip for an attached endpoint without a GPU: nothing to read)."""
    if server.process is None and not vram_tracker.gpus:
        pytest.skip("an attached endpoint without a GPU here: no process or NVML to read memory")
    return vram_tracker.start(server, interval_s=0.2, settle_s=1.0)


def test_memory_does_not_creep_across_batches(
    inference_server: InferenceServer,
    vram_tracker: VramTracker,
    memory_report: Callable[[str], None],
) -> None:
    batch = _batch_runner(inference_server)
    batch(-1)  # warm-up: allocator pools and caches fill once
    tracker = _tracker(vram_tracker, inference_server)
    phases = run_batches(tracker, batch, batches=BATCHES, settle_s=0.5)
    limit = LeakLimits(None, 1.0, 10.0).growth_limit_mb(tracker.source)
    verdict = judge_batches(tracker, phases, max_growth_mb=limit)
    memory_report(verdict.message())
    assert len(verdict.phases) == BATCHES
    assert all(p.peak_bytes >= max(p.before_bytes, p.after_bytes) for p in phases)
    assert verdict.passed, verdict.message()


@pytest.mark.leak(settle_s=1.0)
def test_leak_marker_tracks_the_server(inference_server: InferenceServer) -> None:
    # the marker tracks the server by itself; this body only sends work
    batch = _batch_runner(inference_server)
    for index in range(3):
        batch(index)
