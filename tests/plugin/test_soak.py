"""Soak drift verdicts, each shown green and red: a leaking helper process, a slowing simulator."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from pytest_gpuinfer.load.result import LoadResult
from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import Poisson
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.memory.tracker import MemoryTracker, ProcessTreeRSS
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

    def window(seconds: float) -> LoadResult:
        return runner.run(Poisson(20), Prompts(output_tokens=8), Limits(duration_s=seconds))

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


def _window(start_s: float, ttft_ms: float, client_delay_ms: float = 0.0) -> WindowStats:
    reason = "requests started late: dispatch slip p99 31.14 ms (limit 5.00 ms)"
    return WindowStats(
        start_s,
        150,
        0,
        ttft_ms / 1e3,
        ttft_ms / 1e3 + 0.05,
        client_delay_ms / 1e3,
        reason if client_delay_ms else "",
    )


STEADY = [_window(0, 13), _window(10, 21), _window(20, 26), _window(30, 25), _window(40, 28)]
"""The first windows of a CI run's soak of vLLM-CPU (2026-12-07), TTFT p95 by window."""


def test_a_last_window_the_client_delayed_is_not_judged_when_its_delay_explains_the_rise() -> None:
    """That CI run's last window read 93 ms against a limit of 82 ms. With 30 ms of the client's
    own delay in it (a flagged window) the rise is NOT JUDGED, naming the delay; with none, or
    with a rise the delay cannot explain, it fails; under the limit it passes."""
    limits = SoakLimits()
    delayed = judge_latency([*STEADY, _window(50, 93.2, client_delay_ms=30)], limits)
    assert delayed.line().startswith("NOT JUDGED (too noisy)  latency drift: TTFT p95 21.0 ms")
    assert "30.0 ms at 50 s (requests started late" in delayed.message
    assert "the client's delay could explain it" in delayed.message
    unflagged = judge_latency([*STEADY, _window(50, 93.2)], limits)
    assert unflagged.judged and not unflagged.passed, unflagged.message
    drifted = judge_latency([*STEADY, _window(50, 160, client_delay_ms=30)], limits)
    assert drifted.judged and not drifted.passed, drifted.message
    calm = judge_latency([*STEADY, _window(50, 40, client_delay_ms=30)], limits)
    assert calm.passed, calm.message


def test_a_first_window_the_client_delayed_tightens_the_pass_limit() -> None:
    """A first window inflated by 15 ms of the client's delay: the last must be under the limit
    of the first less that delay to pass (1.5 x 6 ms + 50 ms = 59 ms); between that and the
    nominal limit (81.5 ms) the verdict is NOT JUDGED, never a pass."""
    limits = SoakLimits()
    windows = [_window(0, 13), _window(10, 21, client_delay_ms=15), *STEADY[2:]]
    assert judge_latency([*windows, _window(50, 55)], limits).passed
    between = judge_latency([*windows, _window(50, 70)], limits)
    assert between.line().startswith("NOT JUDGED (too noisy)"), between.message
    assert "passing needs 59.0 ms or less" in between.message


def test_durations() -> None:
    assert parse_duration("1h") == 3600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == parse_duration("90") == 90
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("an hour")
