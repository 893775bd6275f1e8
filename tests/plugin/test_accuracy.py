"""Accuracy of the load engine against the simulator's server-side truth, and failure handling.

The simulator runs as a separate process, so the client's timings are not disturbed by sharing an
interpreter with the server. Neither is pinned to a CPU: on a shared 2-core machine a pinned
process waits whenever another one runs on its core, while an unpinned one moves to the free core.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

import pytest

from pytest_gpuinfer.load.client import Timeouts
from pytest_gpuinfer.load.runner import Limits, LoadResult, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import ClosedLoop, Constant
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.metrics.stats import distribution
from pytest_gpuinfer.sim import run_in_process

simulator = run_in_process


def server_truth(url: str) -> dict[str, dict[str, Any]]:
    """The simulator's per-request timestamps, by request id."""
    with urllib.request.urlopen(url + "/sim/requests") as response:
        return {row["request_id"]: row for row in json.load(response)}


def truth_ttfts(url: str, result: LoadResult) -> list[float]:
    """Server-side TTFT (receipt to first text chunk written) of each request of a run."""
    truth = server_truth(url)
    return [
        truth[r.request_id]["first_token"] - truth[r.request_id]["received"]
        for r in result.records
        if r.request_id in truth
    ]


def miss_is_the_machines(errors: Sequence[float], *, busy: bool, lateness_s: float) -> bool:
    """A missed bound is excused only on a busy machine and only by as much as the client's own
    measured lateness (``errors`` are the amounts by which each bound was missed)."""
    return busy and all(e <= lateness_s for e in errors)


def test_a_far_off_attempt_is_not_excused_by_a_busy_machine() -> None:
    """20 ms off with a client at most 3 ms late: failed, busy or not; 2 ms off: excused."""
    assert not miss_is_the_machines([0.020, -0.001, -0.0005], busy=True, lateness_s=0.003)
    assert miss_is_the_machines([0.002, -0.001, -0.0005], busy=True, lateness_s=0.003)
    assert not miss_is_the_machines([0.002, -0.001, -0.0005], busy=False, lateness_s=0.003)


def ttft_attempt() -> tuple[bool, bool, str]:
    """One accuracy run at concurrency 16: whether the bounds held, whether a miss is explained
    by the machine (the self-check saw the client wait for a CPU, and every error is within the
    client's own measured lateness), and the figures."""
    args = ("--ttft-ms", "50", "--itl-ms", "10", "--output-tokens", "64")
    with simulator(*args) as url:
        result = LoadRunner(url, "sim-model").run(
            ClosedLoop(16, ramp_s=0.1), Prompts(output_tokens=64), Limits(requests=128)
        )
        truth = distribution(truth_ttfts(url, result))
    assert result.summary.completed == 128 and truth.count == 128
    measured = result.ttft
    check = result.self_check
    errors = (
        abs(measured.p50 - truth.p50) - 0.002,
        abs(measured.p99 - truth.p99) - 0.002,
        abs(result.itl.p50 - 0.010) - 0.001,
    )
    held = all(e < 0 for e in errors) and not result.client_bound
    busy = any(reason.startswith("machine busy") for reason in check.reasons)
    # the client's own lateness: how late its event loop ran a due wake-up, at worst
    lateness = check.loop_lag.max if check.loop_lag.count else 0.0
    explained = miss_is_the_machines(errors, busy=busy, lateness_s=lateness)
    figures = (
        f"TTFT p50 {measured.p50 * 1e3:.3f} vs truth {truth.p50 * 1e3:.3f} ms, "
        f"p99 {measured.p99 * 1e3:.3f} vs {truth.p99 * 1e3:.3f} ms, "
        f"ITL p50 {result.itl.p50 * 1e3:.3f} ms; client lateness up to {lateness * 1e3:.1f} ms"
        f"{'' if explained or held else ' (does NOT explain the error)'}; {check.text()}"
    )
    return held, explained, figures


def test_ttft_matches_the_simulator_at_concurrency_16() -> None:
    """TTFT p50 and p99 within 2 ms of the server's truth; ITL within 1 ms of 10 ms.

    The 16 slots start 6 ms apart (``ramp_s``): started together, identical requests stay in
    lockstep and both sides queue a burst of 16 requests; the simulator's truth runs from each
    request's first byte, so its own accept backlog before that would not be counted. On a
    shared 2-core machine other processes can keep client or server off the CPU for
    milliseconds, so the run is tried up to three times and must meet every bound once. A miss
    is excused only when the self-check saw the client wait for a CPU AND the error is within
    the client's own measured lateness (its event loop's worst delay): then the test is skipped
    with the figures, naming the CPU wait. An attempt further off than the machine explains
    fails the test, busy or not.
    """
    attempts = []
    all_explained = True
    for _ in range(3):
        held, explained, figures = ttft_attempt()
        if held:
            return
        attempts.append(figures)
        all_explained = all_explained and explained
    report = "\n".join(attempts)
    if all_explained:
        pytest.skip(f"machine too busy to judge timing accuracy:\n{report}")
    pytest.fail(f"no attempt met the bounds, and not every miss is the machine's:\n{report}")


def test_per_token_itl_when_chunks_carry_several_tokens() -> None:
    """Four tokens per 10 ms chunk, counted from cumulative usage: ITL per token ~2.5 ms.

    30 tokens make chunks of 4 x 7 and 2. The client asks for ``continuous_usage_stats`` and
    counts each chunk by the growth of the server's cumulative usage; an even spread of the final
    usage over the 8 chunks would give [3, 3, 4, 4, 4, 4, 4, 4] instead.
    """
    args = ("--ttft-ms", "20", "--itl-ms", "10", "--tokens-per-chunk", "4", "--output-tokens", "32")
    with simulator(*args) as url:
        runner = LoadRunner(url, "sim-model", options=RunnerOptions(usage_mode="continuous"))
        result = runner.run(ClosedLoop(4), Prompts(output_tokens=30), Limits(requests=16))
    assert runner.usage_mode == "continuous"  # the simulator accepted continuous usage
    assert all(r.chunk_tokens == [4] * 7 + [2] for r in result.records), result.records[0]
    assert all(r.completion_tokens == 30 for r in result.records)
    assert result.itl_chunk.p50 == pytest.approx(0.010, abs=0.001)
    assert result.itl.p50 == pytest.approx(0.0025, abs=0.0005)
    assert result.itl.count == 16 * (6 * 4 + 2)
    assert result.tpot.p50 == pytest.approx(70 / 29 / 1000, rel=0.1)


def test_open_loop_delivers_the_asked_rate() -> None:
    """Constant 100 req/s over 3 s: sends and completions within 2% of the rate."""
    args = ("--ttft-ms", "5", "--itl-ms", "1", "--output-tokens", "8")
    with simulator(*args) as url:
        result = LoadRunner(url, "sim-model").run(
            Constant(100), Prompts(output_tokens=8), Limits(requests=300)
        )
    sent = sorted(r.sent for r in result.records if r.sent is not None)
    assert len(sent) == 300 and result.summary.completed == 300
    assert (len(sent) - 1) / (sent[-1] - sent[0]) == pytest.approx(100, rel=0.02)
    ends = sorted(r.end for r in result.records if r.end is not None)
    assert (len(ends) - 1) / (ends[-1] - ends[0]) == pytest.approx(100, rel=0.02)
    assert result.self_check.dispatch_slip.p50 < 0.001


def test_queue_time_is_reported_when_concurrency_caps_the_rate() -> None:
    """50 req/s into 4 slots of ~200 ms: the wait is in ``queue`` and in TTFT, not hidden."""
    args = ("--ttft-ms", "50", "--itl-ms", "10", "--output-tokens", "16")
    with simulator(*args) as url:
        result = LoadRunner(url, "sim-model").run(
            Constant(50, max_concurrency=4), Prompts(output_tokens=16), Limits(requests=40)
        )
        server_ttft = distribution(truth_ttfts(url, result))
    assert result.queue.p50 > 0.1
    assert result.ttft.p50 == pytest.approx(result.queue.p50 + server_ttft.p50, abs=0.01)
    assert result.ttft.p50 > 3 * server_ttft.p50


def test_hung_server_hits_the_first_token_timeout() -> None:
    """A server that never answers: every request fails with 'timeout' at the bound."""
    with simulator("--hang") as url:
        options = RunnerOptions(timeouts=Timeouts(first_token_s=0.5, total_s=5), preflight=False)
        runner = LoadRunner(url, "sim-model", options=options)
        started = time.perf_counter()
        result = runner.run(ClosedLoop(2), Prompts(), Limits(requests=4))
        elapsed = time.perf_counter() - started
    assert [r.error for r in result.records] == ["timeout"] * 4
    for record in result.records:
        assert record.end is not None and record.sent is not None
        assert 0.49 <= record.end - record.sent < 0.6
    assert elapsed < 2.5


def test_malformed_stream_is_a_stream_error() -> None:
    """A corrupt data line mid-stream: error class 'stream' quoting the bytes."""
    args = ("--ttft-ms", "5", "--itl-ms", "1", "--output-tokens", "8", "--malformed-stream")
    with simulator(*args) as url:
        result = LoadRunner(url, "sim-model", options=RunnerOptions(preflight=False)).run(
            ClosedLoop(2), Prompts(), Limits(requests=4)
        )
    assert [r.error for r in result.records] == ["stream"] * 4
    assert all("finish_re" in (r.error_message or "") for r in result.records)
    assert result.summary.errors == {"stream": 4}


def test_crashing_server_gives_connection_errors_not_a_hang() -> None:
    """After the simulator exits, requests fail fast as 'disconnect' or 'connect'."""
    args = ("--ttft-ms", "5", "--itl-ms", "1", "--output-tokens", "8", "--crash-after", "5")
    with simulator(*args) as url:
        options = RunnerOptions(
            timeouts=Timeouts(connect_s=1, first_token_s=2, total_s=4), preflight=False
        )
        runner = LoadRunner(url, "sim-model", options=options)
        started = time.perf_counter()
        result = runner.run(ClosedLoop(2), Prompts(), Limits(requests=20))
        elapsed = time.perf_counter() - started
    errors = [r.error for r in result.records]
    assert errors.count(None) >= 4
    assert set(errors) - {None} <= {"disconnect", "connect"}
    assert errors.count("connect") >= 10
    assert elapsed < 3.0
