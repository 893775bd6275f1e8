"""Benchmark of the fault proxy against the simulator (a script, not a test).

Prints, with the simulator as its own process (TTFT 50 ms, ITL 5 ms):

* how long the proxy process takes from spawn to listening;
* TTFT p50/p99 and E2E p50 direct and through the proxy with no fault (the proxy's overhead);
* TTFT p50 with 50, 200 and 1000 ms of added latency, minus the proxy's own p50 (accuracy);
* the spread that ``jitter_ms`` adds (TTFT p5..p95 with 200 +- 50 ms);
* the highest completed request rate direct and through the proxy (16-token replies, zero-latency
  simulator, closed loop at concurrency 32): the proxy's capacity.

Usage: ``python bench/bench_fault_proxy.py [--requests N]``. Load average is printed first: the
figures mean little on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics

from pytest_gpuinfer.faults import Fault, FaultProxy
from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.sim.launch import run_in_process

QUIET = RunnerOptions(preflight=False, gauge_interval_s=None)
"""No preflight request and no /metrics polling: only the measured requests go through."""


def run(url: str, requests: int, concurrency: int = 2) -> list[RequestRecord]:
    """A closed-loop run of 16-token streamed requests; its records."""
    runner = LoadRunner(url, "sim-model", options=QUIET)
    return runner.run(ClosedLoop(concurrency), Prompts(output_tokens=16), Limits(requests)).records


def ttft_ms(records: list[RequestRecord], q: float) -> float:
    """TTFT quantile ``q`` (0..1) of the successful requests, in ms."""
    times = sorted(r.first_token - r.scheduled for r in records if r.ok and r.first_token)
    return times[min(len(times) - 1, int(q * len(times)))] * 1000


def e2e_ms(records: list[RequestRecord]) -> float:
    """E2E median of the successful requests, in ms."""
    return statistics.median(r.end - r.scheduled for r in records if r.ok and r.end) * 1000


def rate(url: str, requests: int) -> float:
    """Completed requests per second at concurrency 32."""
    runner = LoadRunner(url, "sim-model", options=QUIET)
    result = runner.run(ClosedLoop(32), Prompts(output_tokens=16), Limits(requests))
    return result.summary.request_throughput


def main() -> None:
    """Print the figures listed in the module docstring."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100)
    n = parser.parse_args().requests
    print(f"load average {os.getloadavg()}")
    with run_in_process("--ttft-ms", "50", "--itl-ms", "5") as url, FaultProxy.start(url) as proxy:
        print(f"proxy start: {proxy.started_s * 1000:.0f} ms")
        direct, through = run(url, n), run(proxy.base_url, n)
        for label, records in (("direct", direct), ("proxy", through)):
            print(
                f"{label:>7}: TTFT p50 {ttft_ms(records, 0.5):.2f} ms, p99 "
                f"{ttft_ms(records, 0.99):.2f} ms, E2E p50 {e2e_ms(records):.2f} ms"
            )
        base = ttft_ms(through, 0.5)
        for added in (50.0, 200.0, 1000.0):
            proxy.set([Fault.of("latency", ms=added)])
            got = ttft_ms(run(proxy.base_url, max(10, n // 4)), 0.5) - base
            print(f"latency {added:.0f} ms: TTFT p50 grew {got:.2f} ms (error {got - added:+.2f})")
        proxy.set([Fault.of("latency", ms=200, jitter_ms=50)])
        jittered = run(proxy.base_url, n)
        print(
            f"latency 200 +- 50 ms: TTFT p5 {ttft_ms(jittered, 0.05) - base:.1f} ms, "
            f"p95 {ttft_ms(jittered, 0.95) - base:.1f} ms above the proxy's p50"
        )
        proxy.clear()
    with run_in_process("--ttft-ms", "0", "--itl-ms", "0") as url, FaultProxy.start(url) as proxy:
        print(
            f"capacity at concurrency 32: direct {rate(url, 20 * n):.0f} req/s, "
            f"proxy {rate(proxy.base_url, 20 * n):.0f} req/s"
        )


if __name__ == "__main__":
    main()
