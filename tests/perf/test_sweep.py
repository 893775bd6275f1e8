"""Server-argument sweep: one freshly launched server per configuration, the best by throughput.

Each configuration's server is launched through the run's own lifecycle code and stopped before
the next starts. On vLLM-CPU, ``--max-num-seqs 1`` serialises requests, so at concurrency 16 it
must lose to ``--max-num-seqs 16``. Outside CI the sweep also tries a configuration that cannot
start, which becomes a row with its reason.
"""

from __future__ import annotations

from typing import Any

from pytest_gpuinfer.load.runner import Limits, LoadRunner
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.perf.slos import SLOsInForce, slos_in_force
from pytest_gpuinfer.perf.sweep import ServerConfig, run_sweep
from pytest_gpuinfer.plugin.fixtures import ServerFactory
from pytest_gpuinfer.plugin.perf_fixtures import PerfSizes, workload_for
from pytest_gpuinfer.targets import InferenceServer

CONCURRENCY = 16
PROMPT_TOKENS = 64
OUTPUT_TOKENS = 32


def test_max_num_seqs_sweep(
    gpuinfer_report: Any,
    server_factory: ServerFactory,
    perf_own_slos: tuple[Any, ...],
    perf_sizes: PerfSizes,
) -> None:
    """--max-num-seqs 1 vs 16 at concurrency 16: the table, the best, and 16 winning."""
    chosen: list[SLOsInForce] = []
    configs = [
        ServerConfig(("--max-num-seqs", "1")),
        ServerConfig(("--max-num-seqs", "16")),
    ]
    if not perf_sizes.ci:
        configs.append(ServerConfig(("--max-num-seqs", "0"), name="--max-num-seqs 0 (invalid)"))

    def measure(server: InferenceServer) -> Any:
        if not chosen:  # the defaults depend on the engine and model the servers turn out to be
            chosen.append(
                slos_in_force(
                    perf_own_slos,
                    engine=server.engine,
                    model=server.model,
                    gpu_uuids=server.gpu_uuids,
                    scenario="concurrency",
                )
            )
        workload = workload_for(server)
        runner = LoadRunner(server.base_url, server.model, api_key=server.api_key)
        # Warm up with a run of its own: a time-based warm-up cut can leave nothing to measure
        # when a fast configuration finishes a short CI run within it.
        runner.run(
            ClosedLoop(CONCURRENCY),
            workload.synthetic(PROMPT_TOKENS, OUTPUT_TOKENS),
            Limits(requests=CONCURRENCY),
        )
        return runner.run(
            ClosedLoop(CONCURRENCY),
            workload.synthetic(PROMPT_TOKENS, OUTPUT_TOKENS),
            Limits(requests=perf_sizes.sweep_requests),
        )

    ranking = run_sweep(
        configs,
        launch=lambda config: server_factory.launch(config.engine_args, dict(config.env)),
        stop=server_factory.stop,
        measure=measure,
        slos=lambda: chosen[0].slos if chosen else (),
        progress=gpuinfer_report.progress().update,
    )
    gpuinfer_report.record("sweep", ranking)
    print()
    print(ranking.table(f"server-argument sweep at concurrency {CONCURRENCY}"))
    print(chosen[0].text() if chosen else "no server started")
    assert not server_factory.launched, "a sweep server was left running"
    by_label = {c.label: c for c in ranking.candidates}
    one, sixteen = by_label["--max-num-seqs 1"], by_label["--max-num-seqs 16"]
    assert one.result is not None and sixteen.result is not None, ranking.table()
    assert ranking.best is sixteen, "--max-num-seqs 16 should win at concurrency 16:\n" + (
        ranking.table()
    )
    assert (
        sixteen.result.summary.request_throughput > 1.5 * one.result.summary.request_throughput
    ), "no real difference between --max-num-seqs 1 and 16:\n" + ranking.table()
    for cand in ranking.candidates:
        if cand.label.endswith("(invalid)"):
            assert cand.result is None and cand.error and "failed to start" in cand.error
