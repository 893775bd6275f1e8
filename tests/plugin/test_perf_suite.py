"""The perf suite's own test files run against the simulator (pytester): SLO gate, batches.

The simulator checks our measurement and verdict logic only; it is not an engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

PERF = Path(__file__).parents[1] / "perf"
SIM = (
    "--engine=sim",
    "--engine-arg=--ttft-ms=20",
    "--engine-arg=--itl-ms=5",
    "--load-scale=0.1",
)


def test_latency_suite_passes_on_defaults_and_prints_the_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_latency=(PERF / "test_latency.py").read_text())
    result = pytester.runpytest(*SIM, "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "prompts: * x 128 tokens (APPROXIMATE*",
            "metric ?ms? * p50 * p99.9",
            "ttft  *",
            "lengths: output tokens min/p50/max 32/32/32 (asked 32; 0 ended short)*",
            "SLOs (defaults for sim: no failed requests): error_rate<=0%",
        ]
    )


def test_slo_on_the_command_line_fails_with_measured_vs_limit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_latency=(PERF / "test_latency.py").read_text())
    result = pytester.runpytest(*SIM, "--slo", "ttft_p50<0.001ms")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*missed 1 of * SLOs:*", "*ttft_p50 = * > limit * (n=*)*"])


MARKED = "import pytest\n\n\n@pytest.mark.slo('e2e_p50<0.001ms')\n"


def test_slo_marker_overrides_the_defaults(pytester: pytest.Pytester) -> None:
    source = (
        (PERF / "test_latency.py")
        .read_text()
        .replace(
            "def test_latency_at_fixed_rate(",
            MARKED + "def test_latency_at_fixed_rate(",
        )
    )
    pytester.makepyfile(test_inner_latency=source)
    result = pytester.runpytest(*SIM)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*e2e_p50 = * > limit * (n=*)*"])


BATCHES = """
import contextlib, dataclasses, threading, asyncio

import pytest

from pytest_gpuinfer.load.runner import LoadRunner
from pytest_gpuinfer.perf.batches import run_batches
from pytest_gpuinfer.sim import SimConfig, SimServer


@pytest.fixture
def sim():
    # a simulator (not an engine) on a thread, so the test can change its latency between batches
    loop = asyncio.new_event_loop()
    server = SimServer(SimConfig(ttft_s=0.005, itl_s=0.002))
    loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_until_complete, args=(server.wait_closed(),))
    thread.start()
    yield server
    loop.call_soon_threadsafe(lambda: loop.create_task(server.close()))
    thread.join(timeout=10)


def test_batches(sim):
    runner = LoadRunner(sim.base_url, "sim-model", gauge_interval_s=None)

    def batch(index):
        if index == {slow_batch}:
            sim.config = dataclasses.replace(sim.config, ttft_s=0.05, itl_s=0.01)
        else:
            sim.config = dataclasses.replace(sim.config, ttft_s=0.005, itl_s=0.002)
        return runner.run(concurrency=4, requests=40, max_tokens=8)

    report = run_batches(batch, 4, server_pid=None)
    print(report.table())
    assert report.passed, "\\n".join(report.failures())
"""


def test_batches_pass_on_a_steady_simulator(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(BATCHES.format(slow_batch=0))
    result = pytester.runpytest("--engine=sim", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["PASS  throughput spread: spread *"])


def test_batches_fail_and_name_batch_3_when_the_simulator_slows_there(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(BATCHES.format(slow_batch=3))
    result = pytester.runpytest("--engine=sim")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*throughput spread* batch 3 ran at * req/s against a median*"])
