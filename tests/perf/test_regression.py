"""Regression gate: a run against the stored baseline of the same machine identity.

With pytest-benchmark's ``--benchmark-save``/``--benchmark-autosave`` the run is stored as a
baseline; with ``--benchmark-compare[=NUM]`` it is compared with the stored one and fails on a
regression (worse beyond the tolerance and beyond noise). Asking for a comparison with no stored
baseline is an error. Without ``--benchmark-compare`` there is nothing to judge the run by: its
regression verdict reads NOT JUDGED (no baseline), with its figures. A run the load engine's
self-check flags (a client starved of CPU) is measured again with a longer window; a comparison
where either run was flagged reads NOT JUDGED (too noisy) and is skipped, naming why. The gate's
own logic (a doctored faster baseline fails it) is shown in tests/plugin/test_perf_baseline.py.
"""

from __future__ import annotations

from typing import Any

from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.plugin.perf_fixtures import PerfBaseline, PerfSizes, PerfWorkload

CONCURRENCY = 4
PROMPT_TOKENS = 128
OUTPUT_TOKENS = 32


def test_regression_gate(
    load_runner: Any,
    perf_workload: PerfWorkload,
    perf_sizes: PerfSizes,
    perf_baseline: PerfBaseline,
) -> None:
    """Compared with the stored baseline (--benchmark-compare), stored (--benchmark-save)."""
    workload = perf_workload.synthetic(PROMPT_TOKENS, OUTPUT_TOKENS)

    def attempt(number: int) -> Any:
        """One run; a retry after a run the self-check flagged is twice as long."""
        return load_runner.run(  # judged by the comparison, not by SLOs
            ClosedLoop(CONCURRENCY),
            workload,
            Limits(requests=perf_sizes.regression_requests * number, warmup_s=0.5),
            check_slos=False,
        )

    name = f"latency c={CONCURRENCY} in={PROMPT_TOKENS} out={OUTPUT_TOKENS}"
    print()
    print(perf_baseline.run_and_check(name, attempt, configuration=name))
