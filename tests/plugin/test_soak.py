"""Soak drift verdicts, each shown green and red: a leaking helper process, a slowing simulator."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import Poisson
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.memory.tracker import MemoryTracker, ProcessTreeRSS
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.sim.launch import run_in_process
from pytest_gpuinfer.soak.drift import (
    SoakLimits,
    WindowStats,
    judge_latency,
    parse_duration,
    run_soak,
)

LEAK = (
    "import time\nkept = []\nwhile True:\n    kept.append(bytearray({step}))\n    time.sleep(0.1)\n"
)
"""A helper that keeps ``step`` more bytes every 0.1 s (0: it holds steady)."""

LIMITS = SoakLimits(max_memory_mb_per_h=200.0, min_span_s=4.0, min_window_requests=10)


@pytest.fixture
def helper(request: pytest.FixtureRequest) -> Iterator[int]:
    """A helper process (leaking ``request.param`` bytes per 0.1 s); yields its pid."""
    process = subprocess.Popen([sys.executable, "-c", LEAK.format(step=request.param)])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def soak_against(url: str, pid: int, duration_s: float) -> list[str]:
    """A short soak on ``url`` while tracking ``pid``'s memory; its verdict lines."""
    options = RunnerOptions(preflight=False, gauge_interval_s=None)
    runner = LoadRunner(url, "sim-model", options=options)

    def window(seconds: float) -> list[RequestRecord]:
        return runner.run(Poisson(20), Prompts(output_tokens=8), Limits(duration_s=seconds)).records

    with MemoryTracker(ProcessTreeRSS(pid), interval_s=0.25) as tracker:
        result = run_soak(
            window, duration_s=duration_s, window_s=2.0, tracker=tracker, limits=LIMITS
        )
    return [v.line() for v in result.verdicts]


@pytest.mark.parametrize("helper", [0], indirect=True)
def test_steady_server_and_steady_memory_pass(helper: int) -> None:
    with run_in_process("--ttft-ms", "20", "--itl-ms", "2") as url:
        lines = soak_against(url, helper, 8.0)
    assert lines[0].startswith("PASS  memory drift"), lines
    assert lines[1].startswith("PASS  latency drift"), lines


@pytest.mark.parametrize("helper", [2_000_000], indirect=True)
def test_leaking_helper_fails_memory_drift(helper: int) -> None:
    with run_in_process("--ttft-ms", "20", "--itl-ms", "2") as url:
        lines = soak_against(url, helper, 8.0)
    assert lines[0].startswith("FAIL  memory drift: slope +"), lines


@pytest.mark.parametrize("helper", [0], indirect=True)
def test_slowing_simulator_fails_latency_drift(helper: int) -> None:
    # TTFT grows 200 ms per second run: about 0.4 s at 2 s, 1.4 s at 7 s (well above the noise
    # of a busy machine).
    with run_in_process("--ttft-ms", "20", "--itl-ms", "2", "--ttft-growth", "0.2") as url:
        lines = soak_against(url, helper, 8.0)
    assert lines[1].startswith("FAIL  latency drift: TTFT p95"), lines


def test_too_little_evidence_is_not_judged() -> None:
    windows = [WindowStats(0.0, 5, 0, 0.1, 0.2), WindowStats(2.0, 5, 0, 0.9, 1.0)]
    verdict = judge_latency(windows, LIMITS)
    assert not verdict.judged and verdict.line().startswith("NOT JUDGED (too few samples)  latency")


def test_durations() -> None:
    assert parse_duration("1h") == 3600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == parse_duration("90") == 90
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("an hour")
