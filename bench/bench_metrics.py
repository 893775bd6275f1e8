"""Benchmark of the metrics layer: how long summaries take for large runs (a script, not a test).

Prints the best of three timings of ``summarize`` over 100,000 synthetic 8-chunk records, without
and with a per-request SLO (goodput). Usage: ``python bench/bench_metrics.py``.
"""

from __future__ import annotations

import os
import time

from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.slo import parse_slos
from pytest_gpuinfer.metrics.stats import summarize


def synthetic_records(count: int) -> list[RequestRecord]:
    """``count`` completed records, 8 chunks each, one every 10 ms."""
    return [
        RequestRecord(
            index=i,
            scheduled=i * 0.01,
            sent=i * 0.01,
            first_token=i * 0.01 + 0.05,
            end=i * 0.01 + 0.12,
            chunk_times=[i * 0.01 + 0.05 + 0.01 * j for j in range(8)],
            chunk_tokens=[1] * 7 + [2],
            completion_tokens=9,
        )
        for i in range(count)
    ]


def main() -> None:
    """Time summarize with and without goodput SLOs."""
    records = synthetic_records(100_000)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for label, slos in (("no SLO", []), ("goodput SLO", parse_slos(["ttft_p99<1s"]))):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            summarize(records, warmup_s=1.0, slos=slos)
            best = min(best, time.perf_counter() - started)
        print(f"summarize 100,000 records, {label}: {best:.3f} s (best of 3)")


if __name__ == "__main__":
    main()
