"""Configuration matrix: concurrency x prompt/output lengths, one run per cell, the best cell.

The best cell is the highest request throughput that meets the SLOs in force (the test's own, else
the defaults for the target); every other cell is listed with the reason it lost. Verdicts: every
cell ran (a cell that raised fails the test, naming its error; it is not just a row) and a best
cell exists.
"""

from __future__ import annotations

from typing import Any

from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.perf.matrix import Cell, cells, run_matrix
from pytest_gpuinfer.plugin.perf_fixtures import PerfSizes, PerfWorkload
from pytest_gpuinfer.plugin.verdicts import VerdictGate


def test_configuration_matrix(
    gpuinfer_report: Any,
    gpuinfer_verdicts: VerdictGate,
    load_runner: Any,
    perf_slos: Any,
    perf_workload: PerfWorkload,
    perf_sizes: PerfSizes,
) -> None:
    """Every cell runs; the table and the best cell with reasons are printed; a cell wins."""
    chosen = perf_slos("concurrency")
    matrix = cells(perf_sizes.matrix_concurrency, perf_sizes.matrix_lengths)

    def measure(cell: Cell) -> Any:
        warmup = perf_workload.synthetic(cell.prompt_tokens, cell.output_tokens)
        load_runner.runner.run(
            ClosedLoop(cell.concurrency), warmup, Limits(requests=cell.concurrency)
        )
        return load_runner.run(  # after an unrecorded warm-up of one request per slot
            ClosedLoop(cell.concurrency, ramp_s=0.2),
            perf_workload.synthetic(cell.prompt_tokens, cell.output_tokens),
            Limits(requests=max(20, min(perf_sizes.requests, 10 * cell.concurrency))),
            check_slos=False,
        )

    ranking = run_matrix(matrix, measure, chosen.slos)
    gpuinfer_report.record("matrix", ranking)
    print()
    print(ranking.table(f"configuration matrix ({len(matrix)} cells)"))
    gpuinfer_verdicts.check(ranking.verdicts(), "configuration matrix failed:")
