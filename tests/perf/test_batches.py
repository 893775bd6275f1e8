"""Multi-batch consistency and model persistence, and the SLA projection from the batches.

K sequential batches of M requests against the session's server: per-batch figures and server
memory (its whole process tree), verdicts (all succeeded, throughput spread, no reload: first
request vs steady state, same server PID and start time); then the SLA projection (labelled so)
from the batches' sustained throughput. A spread the machine, not the server, may have caused
(the load engine's self-check saw the client wait for a CPU) is NOT JUDGED: the batches run
again twice as long (in CI, at the CI size again) and are judged together with the first run (a
server that slowed during it and stayed slow fails), and if that is still too noisy the test is
skipped naming the CPU wait. Where the server reports its own time per request (``/metrics``),
that time tells a server that slowed (it rose: FAIL) from a client that left it idle (NOT
JUDGED). An engine computing on the client's own CPUs (vLLM-CPU) is judged
by the spread those CPUs allow (``perf_batch_limits``), a GPU server by the default 10 %.
"""

from __future__ import annotations

from typing import Any

from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.perf.batches import BatchLimits, BatchReport, judge_with_retry, run_batches
from pytest_gpuinfer.perf.projection import project
from pytest_gpuinfer.plugin.perf_fixtures import PerfSizes, PerfWorkload
from pytest_gpuinfer.plugin.verdicts import VerdictGate
from pytest_gpuinfer.targets import InferenceServer

CONCURRENCY = 4
PROMPT_TOKENS = 128
OUTPUT_TOKENS = 32


def test_batches_are_consistent_and_the_model_stays_loaded(
    gpuinfer_report: Any,
    gpuinfer_verdicts: VerdictGate,
    load_runner: Any,
    perf_workload: PerfWorkload,
    perf_sizes: PerfSizes,
    perf_batch_limits: BatchLimits,
    inference_server: InferenceServer,
) -> None:
    """K x M batches: all succeed, spread under the limit, no reload; projection fits a day."""
    workload = perf_workload.synthetic(PROMPT_TOKENS, OUTPUT_TOKENS)
    load_runner.runner.run(ClosedLoop(CONCURRENCY), workload, Limits(requests=2 * CONCURRENCY))
    pid = inference_server.process.pid if inference_server.process else None

    def attempt(number: int) -> BatchReport:
        """The batches, each ``number`` times the configured size (a longer window); in CI the
        retry keeps the CI size: judged with the first attempt, it still doubles the window."""
        size = perf_sizes.batch_requests * (1 if perf_sizes.ci else number)

        def batch(index: int) -> Any:
            return load_runner.run(  # judged by the batch verdicts, not by SLOs
                ClosedLoop(CONCURRENCY, ramp_s=0.1),
                workload,
                Limits(requests=size),
                check_slos=False,
            )

        return run_batches(
            batch,
            perf_sizes.batches,
            server_pid=pid,
            limits=perf_batch_limits,
            server_url=inference_server.base_url,
        )

    report = gpuinfer_verdicts.until_judged(attempt, lambda r: r.verdicts, combine=judge_with_retry)
    projection = project([b.req_per_s for b in report.batches])
    gpuinfer_report.record("batches", report)
    gpuinfer_report.record("projection", projection)
    print()
    print(report.table())
    print(projection.text())
    gpuinfer_verdicts.check([*report.verdicts, projection.verdict()])
