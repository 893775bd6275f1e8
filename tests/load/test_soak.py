"""Soak: steady load for --soak (a CI-sized minute without it), verdicts on drift.

The server's memory (process-tree RSS, or NVML on GPUs) is sampled every second; the load runs at
the baseline rate in windows of a sixth of the soak (10 s to 5 min), each summarised and dropped.
Verdicts (pytest_gpuinfer/soak/drift.py, docs/verdicts.md): memory growth after warm-up at most
100 MB/h (never under 50 MB, the noise floor); TTFT p95 of the last window at most 1.5x the
first's + 50 ms, the client's own delay taken out of windows the load engine's self-check flagged
(NOT JUDGED where that delay could explain a rise). Red tests: tests/plugin/test_soak.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_gpuinfer.load.result import LoadResult
from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import Poisson
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.plugin import report_plugin
from pytest_gpuinfer.plugin.options import Settings
from pytest_gpuinfer.soak.drift import run_soak
from pytest_gpuinfer.targets import InferenceServer

CI_SOAK_S = 60.0


def test_soak_holds_memory_and_latency_steady(
    inference_server: InferenceServer,
    gpuinfer_settings: Settings,
    baseline_rps: float,
    vram_tracker: Any,
    gpuinfer_verdicts: Any,
    request: pytest.FixtureRequest,
) -> None:
    duration_s = gpuinfer_settings.soak_s or CI_SOAK_S
    window_s = min(300.0, max(10.0, duration_s / 6))
    tracker = None
    if inference_server.process is not None or vram_tracker.gpus:
        tracker = vram_tracker.start(inference_server, interval_s=1.0)
    runner = LoadRunner(
        inference_server.base_url,
        inference_server.model,
        api_key=inference_server.api_key,
        options=RunnerOptions(gauge_interval_s=None),
    )

    def window(seconds: float) -> LoadResult:
        workload = Prompts(output_tokens=16)
        return runner.run(Poisson(baseline_rps), workload, Limits(duration_s=seconds))

    def say(stats: Any) -> None:
        ttft = f"{stats.ttft_p95_s * 1000:.0f} ms" if stats.ttft_p95_s is not None else "-"
        flagged = (
            f" (client delay {stats.client_delay_s * 1000:.1f} ms: {stats.self_check})"
            if stats.client_delay_s
            else ""
        )
        print(
            f"soak window at {stats.start_s:.0f} s: {stats.requests} requests, "
            f"TTFT p95 {ttft}{flagged}"
        )

    result = run_soak(
        window, duration_s=duration_s, window_s=window_s, tracker=tracker, on_window=say
    )
    report_plugin.record(request.node, "soak", result.to_dict())
    print("\n".join(v.line() for v in result.verdicts))
    errors = sum(w.failed for w in result.windows)
    assert errors == 0, f"{errors} requests failed during the soak"
    gpuinfer_verdicts.check(result.verdicts, f"soak of {duration_s:.0f} s drifted:")
