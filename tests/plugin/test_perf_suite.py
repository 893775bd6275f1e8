"""The perf suite's own test files run against the simulator (pytester): SLO gate, batches.

The simulator checks our measurement and verdict logic only; it is not an engine.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from busy_machine import busy_machine_conftest

PERF = Path(__file__).parents[1] / "perf"
SIM = (
    "--engine=sim",
    "--engine-arg=--ttft-ms=20",
    "--engine-arg=--itl-ms=5",
    "--load-scale=0.1",
)


def test_latency_suite_on_a_target_without_slos_reads_not_judged_for_latency(
    pytester: pytest.Pytester,
) -> None:
    """The simulator has no latency SLOs: its latency is reported and NOT JUDGED, never counted
    among the passed verdicts (only "no failed requests" passes)."""
    pytester.makepyfile(test_inner_latency=(PERF / "test_latency.py").read_text())
    result = pytester.runpytest(*SIM, "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "metric ?ms? * p50 * p99.9",
            "ttft  *",
            "workload: prompts: * x 128 tokens (APPROXIMATE*",
            "lengths: output tokens asked 32/32/32, achieved 32/32/32 *0 ended short*(exact)",
            "SLOs (defaults for sim: no failed requests): error_rate<=0%; latency NOT JUDGED: "
            "no latency SLO for this target (set --slo)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "other  2      2 passed  2/4 passed, 2 NOT JUDGED  *",
            "NOT JUDGED (no limit)  *test_latency_at_fixed_concurrency: latency: no latency SLO "
            "applies to this run: TTFT p95 * ms, TPOT p95 * ms, E2E p95 * ms (n=*)*",
        ]
    )
    assert "2/2 passed" not in result.stdout.str()


def test_latency_suite_fails_without_slos_when_judgement_is_required(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_inner_latency=(PERF / "test_latency.py").read_text())
    result = pytester.runpytest(*SIM, "--gpuinfer-require-judgement")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*judgement required (--gpuinfer-require-judgement), but NOT JUDGED:",
            "*NOT JUDGED (no limit)  latency: no latency SLO applies to this run: TTFT p95 * ms*",
        ]
    )
    # a p95 from the rate test's 18 measured requests is NOT JUDGED (it needs 20); a p90 is
    judged = pytester.runpytest(*SIM, "--gpuinfer-require-judgement", "--slo", "ttft_p90<5s")
    judged.assert_outcomes(passed=2)


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

from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.load.workloads import Prompts
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


def test_batches(sim, gpuinfer_verdicts):
    runner = LoadRunner(sim.base_url, "sim-model", options=RunnerOptions(gauge_interval_s=None))

    def batch(index):
        if index == {slow_batch}:
            sim.config = dataclasses.replace(sim.config, ttft_s=0.05, itl_s=0.01)
        else:
            sim.config = dataclasses.replace(sim.config, ttft_s=0.005, itl_s=0.002)
        return runner.run(ClosedLoop(4), Prompts(output_tokens=8), Limits(requests=40))

    report = run_batches(batch, 4, server_pid=None)
    print(report.table())
    gpuinfer_verdicts.check(report.verdicts)
"""


def test_batches_pass_on_a_steady_simulator(pytester: pytest.Pytester) -> None:
    """Steady batches pass the spread; a busy machine may make it NOT JUDGED, and then the
    test is skipped naming the CPU wait, never passed."""
    pytester.makepyfile(BATCHES.format(slow_batch=0))
    result = pytester.runpytest("--engine=sim", "-s", "-rs")
    outcomes = result.parseoutcomes()
    if outcomes.get("skipped"):
        result.stdout.fnmatch_lines(
            # either machine rule names the client's wait: in ms, or as shares of two batches
            ["*too noisy to judge*throughput spread: spread *the client waited * for a CPU*"]
        )
        return
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["PASS  throughput spread: spread *"])


def test_batches_fail_and_name_batch_3_when_the_simulator_slows_there(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(BATCHES.format(slow_batch=3))
    result = pytester.runpytest("--engine=sim")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*FAIL  throughput spread: spread *% >= *%: batch 3 ran at * req/s against a median*"]
    )


def test_batches_suite_fails_a_server_that_degrades_in_its_third_batch(
    pytester: pytest.Pytester,
) -> None:
    """The suite's own test against a simulator that runs 4x slower from its 100th request
    (batch 3 of 3 x 40): the spread fails however busy the machine, naming batch 3."""
    pytester.makepyfile(test_inner_batches=(PERF / "test_batches.py").read_text())
    result = pytester.runpytest(
        *SIM, "--engine-arg=--slow-after=100", "--engine-arg=--slow-factor=4"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*verdicts failed:",
            "*FAIL  throughput spread: spread *% >= *%: batch 3 ran at * req/s against a "
            "median of * (-*%)*",
        ]
    )


def _slowing_sim(after: int) -> list[str]:
    """Engine arguments of a simulator 2.5x slower from its ``after``-th request on (10 ms TTFT
    and 2 ms ITL after SIM's 20 ms: half the time, the same shape)."""
    return [
        "--engine-arg=--ttft-ms=10",
        "--engine-arg=--itl-ms=2",
        f"--engine-arg=--slow-after={after}",
        "--engine-arg=--slow-factor=2.5",
    ]


def test_batches_retry_is_judged_with_the_first_attempt_it_repeats(
    pytester: pytest.Pytester,
) -> None:
    """A simulator 2.5x slower from its 130th request (about the last 10 of batch 3 of 3 x 40)
    on a machine the self-check reads busy: the first attempt's spread is NOT JUDGED (the
    server's own time per request rose about a third, under the 50 % that would fail it at
    once); the retry, twice
    as long, is steady at the slower rate and would pass alone, but judged with the first
    attempt's batches it fails, naming the first attempt's faster rate."""
    pytester.makeconftest(busy_machine_conftest(4))  # the warm-up, 3 batches
    pytester.makepyfile(test_inner_batches=(PERF / "test_batches.py").read_text())
    result = pytester.runpytest(*SIM, "-s", *_slowing_sim(after=130))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAIL  throughput spread: spread *% >= 50%: batch [12] ran at * req/s against a "
            "median of *; req/s by batch 1: *, 6: *; a busy machine does not explain that much*",
            "*batches 1-3: the first run, too noisy to judge alone; batches 4-6: its retry*",
        ]
    )


def test_batches_on_a_busy_machine_fail_a_server_whose_own_time_rose(
    pytester: pytest.Pytester,
) -> None:
    """Every load run read busy by the self-check, and the simulator 2.5x slower from batch 3 on
    (of 3 x 40, after 8 warm-up requests): its /metrics show its own time per request rose, so
    the spread fails naming that rise, with no retry, however busy the client was."""
    pytester.makeconftest(busy_machine_conftest(100))
    pytester.makepyfile(test_inner_batches=(PERF / "test_batches.py").read_text())
    result = pytester.runpytest(*SIM, "-s", *_slowing_sim(after=90))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAIL  throughput spread: spread *% >= 10%: batch 3 ran at * req/s against a "
            "median of *; the server's own time per request (its /metrics) was * ms in batch 3 "
            "(the slowest) and * ms in batch [12] (the fastest), +*% (limit +50%): the server "
            "itself slowed, however busy the client was",
        ]
    )
    result.stdout.no_fnmatch_line("*its retry*")


def test_batches_of_an_engine_on_the_client_cpus_still_fail_a_server_that_slowed(
    pytester: pytest.Pytester,
) -> None:
    """An engine computing on the load client's CPUs (the simulator launched as a command, so
    the plugin takes it for a real engine) is judged by the spread those CPUs allow, 50 %: a
    server 2.5x slower from batch 3 on (of 3 x 40, after 8 warm-up requests) fails it."""
    pytester.makepyfile(test_inner_batches=(PERF / "test_batches.py").read_text())
    simulator = [sys.executable, "-m", "pytest_gpuinfer.sim", "--port", "{port}"]
    slowed = ["--ttft-ms=10", "--itl-ms=2", "--slow-after=90", "--slow-factor=2.5"]
    # in a subprocess: a real engine's prompts are counted with transformers, and torch cannot
    # be imported again in a process that an in-process run unloaded it from
    result = pytester.runpytest_subprocess(
        "--engine=command",
        f"--server-command={shlex.join(simulator + slowed)}",
        "--load-scale=0.1",
        "-s",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAIL  throughput spread: spread *% >= 50%: batch 3 ran at * req/s against a "
            "median of *; req/s by batch 1: *, 2: *, 3: *",
        ]
    )


def test_sla_projection_fails_a_server_too_slow_for_the_window(
    pytester: pytest.Pytester,
) -> None:
    """One sequence at a time, 0.95 s each: about 1 req/s, so 100,000 requests need over a day
    at the pessimistic bound; the batches test fails on its SLA window, naming both."""
    pytester.makepyfile(test_inner_batches=(PERF / "test_batches.py").read_text())
    result = pytester.runpytest(
        "--engine=sim",
        "--engine-arg=--max-num-seqs=1",
        "--engine-arg=--ttft-ms=950",
        "--engine-arg=--itl-ms=0",
        "--engine-arg=--output-tokens=1",
        "--load-scale=0.025",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAIL  SLA window: PROJECTION: 100,000 requests take * h at the pessimistic "
            "* req/s (95 % lower bound of 3 runs); window 24.00 h",
        ]
    )


def test_matrix_fails_when_cells_cannot_run_naming_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context too short for the 128-token cells: those cells complete no request, which fails
    the matrix (they are not just rows that lost)."""
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_inner_matrix=(PERF / "test_matrix.py").read_text())
    result = pytester.runpytest(*SIM, "--engine-arg=--max-model-len=120")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*configuration matrix failed:",
            "*FAIL  candidates ran: c=1 in=128 out=32: no request completed (20 failed: http=20)*",
        ]
    )


def test_batches_suite_fails_when_requests_fail_naming_the_batches(
    pytester: pytest.Pytester,
) -> None:
    """A simulator failing 10 % of requests: "all succeeded" fails, naming each batch's count."""
    pytester.makepyfile(test_inner_batches=(PERF / "test_batches.py").read_text())
    result = pytester.runpytest(*SIM, "--engine-arg=--error-rate=0.1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL  all succeeded: batch 1: * of 40 failed*"])


def test_matrix_fails_when_no_cell_meets_the_slos(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_inner_matrix=(PERF / "test_matrix.py").read_text())
    result = pytester.runpytest(*SIM, "--slo", "ttft_p50<0.001ms")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL  best: no candidate met ttft_p50<0.001ms*"])
