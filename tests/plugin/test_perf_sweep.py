"""The server-argument sweep through ``server_factory`` with the simulator (pytester).

Each configuration is a fresh simulator process launched through the run's lifecycle code and
stopped before the next; one that cannot start is a row with its reason. The simulator's
``--max-num-seqs`` serialises requests like vLLM's, so 1 must lose to 16 at concurrency 16.
"""

from __future__ import annotations

import pytest

SWEEP = """
from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.metrics.slo import parse_slos
from pytest_gpuinfer.perf.sweep import ServerConfig, run_sweep


def test_sweep(server_factory):
    configs = [
        ServerConfig(("--max-num-seqs", "1")),
        ServerConfig(("--no-such-flag",)),
        ServerConfig(("--max-num-seqs", "16")),
    ]
    seen = []

    def launch(config):
        server = server_factory.launch(config.engine_args)
        seen.append(server)
        return server

    def measure(server):
        options = RunnerOptions(gauge_interval_s=None)
        runner = LoadRunner(server.base_url, server.model, options=options)
        return runner.run(ClosedLoop(16), Prompts(output_tokens=8), Limits(requests=48))

    ranking = run_sweep(configs, launch, server_factory.stop, measure, parse_slos("error_rate<=0%"))
    print(ranking.table())
    assert ranking.best.label == "--max-num-seqs 16"
    assert all(not server.alive() for server in seen), "a sweep server is still running"
    assert not server_factory.launched
"""


def test_sweep_launches_each_config_and_reports_a_failed_start(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(SWEEP)
    result = pytester.runpytest(
        "--engine=sim", "--engine-arg=--ttft-ms=10", "--engine-arg=--itl-ms=5", "-s"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "--max-num-seqs 1 * throughput * lower than the best's *",
            "--no-such-flag * (no run)*did not run: failed to start: *",
            "--max-num-seqs 16 * BEST",
            "best: --max-num-seqs 16 *",
        ]
    )
