"""Latency percentiles under SLOs at a fixed concurrency and at a fixed open-loop rate.

TTFT, TPOT, ITL (per token and per chunk) and E2E at p50/p90/p95/p99/p99.9 with sample counts,
request and output-token throughput and goodput; the first requests (warm-up) are left out. The
SLOs are the test's own (``@pytest.mark.slo``, ``--slo``, ini ``gpuinfer_slo``) or, without
them, the defaults for the target (pytest_gpuinfer/perf/slos.py): latency limits for the built-in
model on vLLM-CPU, only "no failed request" elsewhere, where latency reads NOT JUDGED (with its
percentiles) until the team sets SLOs, and fails under ``--gpuinfer-require-judgement``. Prompts
are exactly ``PROMPT_TOKENS`` tokens of the target's tokenizer; outputs ``OUTPUT_TOKENS`` with
``ignore_eos``.
"""

from __future__ import annotations

from typing import Any

from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import ClosedLoop, Poisson
from pytest_gpuinfer.plugin.perf_fixtures import PerfSizes, PerfWorkload

PROMPT_TOKENS = 128
OUTPUT_TOKENS = 32
CONCURRENCY = 4
RATE_RPS = 4.0
WARMUP_S = 0.5


def _report(result: Any, chosen: Any, workload: PerfWorkload) -> None:
    """Print what was sent, the percentile table and the SLOs in force."""
    print()
    print(f"ignore_eos honoured: {workload.ignore_eos}")
    print(result.summary_text())
    print(chosen.text())


def test_latency_at_fixed_concurrency(
    load_runner: Any, perf_slos: Any, perf_workload: PerfWorkload, perf_sizes: PerfSizes
) -> None:
    """Closed loop at a fixed concurrency: percentiles printed, the SLOs in force met (latency
    NOT JUDGED on a target without latency SLOs), lengths exact."""
    chosen = perf_slos("concurrency")
    result = load_runner.run(
        ClosedLoop(CONCURRENCY, ramp_s=0.5),
        perf_workload.synthetic(PROMPT_TOKENS, OUTPUT_TOKENS),
        Limits(requests=perf_sizes.requests, warmup_s=WARMUP_S),
    )
    _report(result, chosen, perf_workload)
    summary = result.summary
    assert summary.warmup_excluded > 0, "the warm-up requests were not left out"
    assert summary.ttft.count == summary.completed
    if perf_workload.ignore_eos:
        short = [r.index for r in result.records if r.ok and r.completion_tokens != OUTPUT_TOKENS]
        assert not short, f"requests {short[:10]} did not produce {OUTPUT_TOKENS} tokens"


def test_latency_at_fixed_rate(
    load_runner: Any, perf_slos: Any, perf_workload: PerfWorkload, perf_sizes: PerfSizes
) -> None:
    """Open loop (Poisson) at a fixed rate: latency from the scheduled time, the SLOs in force
    met (latency NOT JUDGED on a target without latency SLOs)."""
    chosen = perf_slos("rate")
    result = load_runner.run(
        Poisson(RATE_RPS, seed=1),
        perf_workload.synthetic(PROMPT_TOKENS, OUTPUT_TOKENS),
        Limits(requests=perf_sizes.rate_requests, warmup_s=WARMUP_S),
    )
    _report(result, chosen, perf_workload)
    summary = result.summary
    assert summary.warmup_excluded > 0, "the warm-up requests were not left out"
    assert summary.ttft.count == summary.completed
