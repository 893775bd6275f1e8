"""The fault proxy and its scenarios, against the simulator (an instrument, not an engine).

Each fault's stated verdict: a reset mid-stream is a classified failure (``disconnect``), never a
hang or a success; added latency shows in TTFT; a black hole or a stall for good ends in a
``timeout`` within the client's first-token timeout; a finite stall or a bandwidth limit slows
requests without failing them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import psutil
import pytest

from pytest_gpuinfer.faults import Fault, FaultProxy, FaultSpecError
from pytest_gpuinfer.faults.outcome import count_outcome
from pytest_gpuinfer.load.client import Timeouts
from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.sim.launch import run_in_process

TOKENS = 16


class SimWords:
    """Counts tokens as the simulator does (one per word), here: the runner would otherwise probe
    the target's /tokenize through the proxy, and a black hole swallows the probe."""

    source = "words (the simulator's tokens)"

    def count(self, text: str) -> int:
        """One token per whitespace-separated word."""
        return len(text.split())

    def count_chat(self, text: str) -> int | None:
        """Unknown: the simulator's chat overhead is not needed here."""
        return None

    def count_completion(self, text: str) -> int:
        """As :meth:`count` (the simulator adds no special tokens)."""
        return self.count(text)


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """A simulator process: 50 ms to the first token, 5 ms between tokens."""
    with run_in_process("--ttft-ms", "50", "--itl-ms", "5", "--output-tokens", "64") as url:
        yield url


@pytest.fixture(scope="module")
def proxy(sim_url: str) -> Iterator[FaultProxy]:
    """One fault proxy process in front of the simulator for the module."""
    with FaultProxy.start(sim_url) as started:
        yield started


def run_load(url: str, requests: int = 40, timeouts: Timeouts | None = None) -> list[RequestRecord]:
    """A small closed-loop run through ``url``; its records."""
    options = RunnerOptions(timeouts=timeouts or Timeouts(), preflight=False, gauge_interval_s=None)
    runner = LoadRunner(url, "sim-model", options=options, counter=SimWords())
    workload = Prompts(output_tokens=TOKENS)
    return runner.run(ClosedLoop(2), workload, Limits(requests=requests)).records


def ttft_p50_ms(records: list[RequestRecord]) -> float:
    """Median time from schedule to first token of the successful requests, in ms."""
    times = sorted(r.first_token - r.scheduled for r in records if r.ok and r.first_token)
    return times[len(times) // 2] * 1000


def test_proxy_without_faults_changes_nothing(sim_url: str, proxy: FaultProxy) -> None:
    proxy.clear()
    direct = run_load(sim_url)
    through = run_load(proxy.base_url)
    outcome = count_outcome(through, expected_tokens=TOKENS)
    assert outcome.problems() == [] and outcome.ok == 40, outcome.line()
    overhead = ttft_p50_ms(through) - ttft_p50_ms(direct)
    assert overhead < 10, f"the proxy alone added {overhead:.1f} ms to TTFT p50"


def test_reset_mid_stream_is_a_classified_failure(proxy: FaultProxy) -> None:
    proxy.set([Fault.of("reset_mid_stream", p=0.3)], seed=1)
    started = time.monotonic()
    records = run_load(proxy.base_url)
    elapsed = time.monotonic() - started
    outcome = count_outcome(records, expected_tokens=TOKENS)
    applied = proxy.stats()["applied"].get("reset_mid_stream", 0)
    assert outcome.problems() == [], outcome.problems()
    assert applied > 0, "the proxy reset nothing: the scenario did not apply"
    assert outcome.failed == {"disconnect": applied}, (
        f"{applied} resets injected, outcome {outcome.line()}"
    )
    assert outcome.ok == 40 - applied
    assert elapsed < 20, f"the run took {elapsed:.1f} s: a reset must not hang"


def test_added_latency_shows_in_ttft(sim_url: str, proxy: FaultProxy) -> None:
    proxy.clear()
    base = ttft_p50_ms(run_load(proxy.base_url))
    proxy.set([Fault.of("latency", ms=200)])
    delayed = ttft_p50_ms(run_load(proxy.base_url))
    added = delayed - base
    assert abs(added - 200) < 20, f"200 ms added, TTFT p50 grew by {added:.1f} ms"


def test_black_hole_ends_in_timeouts(proxy: FaultProxy) -> None:
    proxy.set([Fault.of("black_hole")])
    started = time.monotonic()
    records = run_load(proxy.base_url, requests=4, timeouts=Timeouts(2.0, 1.0, 5.0))
    elapsed = time.monotonic() - started
    outcome = count_outcome(records)
    assert outcome.problems() == []
    assert outcome.failed == {"timeout": 4}, outcome.line()
    assert elapsed < 5, f"took {elapsed:.1f} s for two rounds of 1 s timeouts"


def test_stall_for_good_ends_in_timeouts_and_finite_stall_only_slows(proxy: FaultProxy) -> None:
    proxy.set([Fault.of("stall", seconds=None)])
    records = run_load(proxy.base_url, requests=2, timeouts=Timeouts(2.0, 5.0, 1.5))
    assert count_outcome(records).failed == {"timeout": 2}
    proxy.set([Fault.of("stall", seconds=0.5)])
    records = run_load(proxy.base_url, requests=4)
    outcome = count_outcome(records, expected_tokens=TOKENS)
    assert outcome.problems() == [] and outcome.ok == 4, outcome.line()
    slowest = min(r.end - r.scheduled for r in records if r.end is not None)
    assert slowest >= 0.5, f"a 0.5 s stall, yet a request took {slowest:.2f} s"


def test_bandwidth_limit_slows_without_failing(proxy: FaultProxy) -> None:
    proxy.set([Fault.of("bandwidth", kb_per_s=4)])
    records = run_load(proxy.base_url, requests=2)
    outcome = count_outcome(records, expected_tokens=TOKENS)
    assert outcome.problems() == [] and outcome.ok == 2
    size_kb = 4.5  # head plus 16 token chunks with usage, about 4.5 KB
    fastest = min(r.end - r.scheduled for r in records if r.end is not None)
    assert fastest > 0.5 * size_kb / 4, f"4 KB/s, yet a request ended in {fastest:.2f} s"


def test_schedule_window_and_probability() -> None:
    fault = Fault.of("latency", ms=10, p=0.5, start_s=1, duration_s=2)
    assert not fault.active_at(0.5) and fault.active_at(1.0) and not fault.active_at(3.0)
    assert fault.describe() == "latency(ms=10, jitter_ms=0) p=0.5 from 1 s to 3 s"
    with pytest.raises(FaultSpecError, match="unknown fault 'lag'"):
        Fault.of("lag")
    with pytest.raises(FaultSpecError, match="takes no seconds"):
        Fault.of("latency", seconds=1)


def test_false_success_and_hang_are_named() -> None:
    whole = RequestRecord(0, 0.0, end=1.0, finish_reason="length", completion_tokens=TOKENS)
    cut = RequestRecord(1, 0.0, end=1.0, finish_reason="length", completion_tokens=3)
    hung = RequestRecord(2, 0.0)
    outcome = count_outcome([whole, cut, hung], expected_tokens=TOKENS)
    assert outcome.problems() == [
        "1 request(s) never ended: [2]",
        "1 request(s) counted ok without a whole answer: #1 3 of 16 tokens",
    ]


FAULT_SUITE = """
import pytest
from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.load.workloads import Prompts

@pytest.mark.fault("reset_mid_stream", p=0.5)
def test_through_proxy(load_runner, faulty_server, inference_server):
    assert faulty_server.base_url != inference_server.base_url
    result = load_runner.run(
        ClosedLoop(2), Prompts(output_tokens=8), Limits(requests=20), check_slos=False
    )
    failed = [r.error for r in result.records if not r.ok]
    assert failed and set(failed) == {"disconnect"}

def test_plain(load_runner, inference_server):
    assert load_runner.server is inference_server
"""


def proxy_processes() -> set[int]:
    """Pids of fault proxy processes running now."""
    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        if "pytest_gpuinfer.faults" in " ".join(process.info["cmdline"] or ()):
            found.add(process.pid)
    return found


def test_marker_routes_load_runner_through_the_proxy(pytester: pytest.Pytester) -> None:
    before = proxy_processes()
    pytester.makepyfile(FAULT_SUITE)
    result = pytester.runpytest("--engine=sim", f"--gpuinfer-report={pytester.path / 'r'}")
    result.assert_outcomes(passed=2)
    report = json.loads((pytester.path / "r" / "report.json").read_text())  # intact JSON
    faults = [
        entry["payload"]
        for test in report["tests"]
        for entry in test.get("results", ())
        if entry["kind"] == "fault"
    ]
    assert any(f["fault_proxy"]["applied"] for f in faults), faults
    assert proxy_processes() - before == set(), "the fault proxy outlived the run"


def test_bad_fault_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fault("reset_mid_stream", after=3)
        def test_x(faulty_server):
            pass
        """
    )
    result = pytester.runpytest("--engine=sim")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*fault 'reset_mid_stream' takes no after*"])


def test_server_dying_behind_the_proxy_fails_requests_promptly() -> None:
    """The server's side closing mid-stream reaches the client through the proxy at once."""
    with (
        run_in_process("--ttft-ms", "20", "--itl-ms", "20", "--crash-after", "3") as url,
        FaultProxy.start(url) as proxy,
    ):
        started = time.monotonic()
        records = run_load(proxy.base_url, requests=6, timeouts=Timeouts(2.0, 10.0, 10.0))
        elapsed = time.monotonic() - started
    outcome = count_outcome(records, expected_tokens=TOKENS)
    assert outcome.problems() == [], outcome.problems()
    assert outcome.failures >= 3, outcome.line()
    assert elapsed < 5, f"{elapsed:.1f} s: the proxy held the client after the server died"


def test_a_server_that_never_serves_again_fails_the_mttr_wait() -> None:
    """MTTR's red side: nothing serves within the limit, even after the restart."""
    from pytest_gpuinfer.faults.kill import time_until_serving

    restarts: list[str] = []

    def restart() -> tuple[str, str]:
        restarts.append("restarted")
        return "http://127.0.0.1:9", "m"  # the discard port: nothing answers

    with pytest.raises(TimeoutError, match="nothing served a completion within 2 s"):
        time_until_serving(
            time.monotonic(),
            "http://127.0.0.1:9",
            "m",
            dead=lambda: True,
            restart=restart,
            timeout_s=2.0,
            poll_s=0.2,
        )
    assert restarts == ["restarted"]
