"""The batch suite's questions, answered with the perf and memory suites' own code.

- **Matrix** (batch size x replicas x output length): :func:`run_batch_matrix` measures each cell
  with a batch engine and ranks the cells with :func:`pytest_gpuinfer.perf.matrix.run_matrix`
  (rows count as requests: the objective "throughput" is rows/s).
- **Limits**: :func:`batch_boundary` finds the largest batch size (or prompt length) that
  completes with :func:`pytest_gpuinfer.memory.boundary.search_boundary`; each failing probe is
  classified (:func:`classify`) and followed by a small canary job to see that the engine
  recovered.
- **SLA window**: :func:`sla_projection` projects measured sustained rows/s (several runs, their
  spread) onto N rows with :func:`pytest_gpuinfer.perf.projection.project`, a PROJECTION.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pytest_gpuinfer.batch.engines import (
    BatchEngine,
    BatchJob,
    BatchRejected,
    EngineDied,
)
from pytest_gpuinfer.batch.results import BatchError, BatchResult, BatchTimeout, InputRow
from pytest_gpuinfer.load.runner import LoadResult
from pytest_gpuinfer.memory.boundary import BoundaryResult, Outcome, ProbeResult, search_boundary
from pytest_gpuinfer.metrics import slo
from pytest_gpuinfer.perf.matrix import Cell, run_matrix
from pytest_gpuinfer.perf.projection import Projection, project
from pytest_gpuinfer.perf.ranking import Ranking, params_label

RowMaker = Callable[[int, int], list[InputRow]]
"""Makes ``count`` rows of ``prompt_tokens`` tokens: ``rows(count, prompt_tokens)``."""


@dataclass(frozen=True)
class BatchCell(Cell):
    """One matrix point: ``concurrency`` is the number of engine replicas."""

    batch_size: int = 1

    @property
    def label(self) -> str:
        """``bs=32 r=1 out=16``."""
        return params_label(
            {"bs": self.batch_size, "r": self.concurrency, "out": self.output_tokens}
        )


def batch_cells(
    batch_sizes: Iterable[int],
    replicas: Iterable[int],
    output_tokens: Iterable[int],
    *,
    prompt_tokens: int,
) -> list[BatchCell]:
    """Every combination of batch size, replica count and output length."""
    return [
        BatchCell(concurrency=r, prompt_tokens=prompt_tokens, output_tokens=o, batch_size=b)
        for b in batch_sizes
        for r in replicas
        for o in output_tokens
    ]


@dataclass
class BatchMatrix:
    """The ranked cells and each cell's batch result."""

    ranking: Ranking
    results: dict[str, BatchResult]

    def table(self, title: str = "") -> str:
        """The perf suite's table (rows as requests), plus each cell's row check."""
        lines = [self.ranking.table(title)]
        for label, result in self.results.items():
            lines.append(f"  {label}: {result.check.describe()}")
        return "\n".join(lines)


def run_batch_matrix(
    engine: BatchEngine,
    matrix: Sequence[BatchCell],
    rows: RowMaker,
    *,
    rows_per_cell: int,
    time_limit_s: float,
    slos: Sequence[slo.SLO] = (),
    objective: str = "throughput",
) -> BatchMatrix:
    """Run one job per cell on ``engine`` and rank the cells (best: highest rows/s)."""
    results: dict[str, BatchResult] = {}

    def measure(cell: Cell) -> LoadResult:
        assert isinstance(cell, BatchCell)
        job = BatchJob(
            rows(rows_per_cell, cell.prompt_tokens),
            max_tokens=cell.output_tokens,
            batch_size=cell.batch_size,
            replicas=cell.concurrency,
            time_limit_s=time_limit_s,
        )
        result = engine.run(job)
        if not result.check.ok:
            raise BatchError(f"rows not accounted for: {result.check.describe()}")
        results[cell.label] = result
        return result.as_load_result()

    ranking = run_matrix(matrix, measure, slos, objective)
    for cand in ranking.candidates:
        found = results.get(cand.label)
        if found is not None:
            cand.extra.update(
                {
                    "engine_s": found.engine_s,
                    "first_result_s": found.first_result_s,
                    "peak_memory_bytes": found.peak_memory_bytes,
                }
            )
    return BatchMatrix(ranking, results)


def classify(exc: BaseException) -> Outcome:
    """The memory suite's outcome class for a failed batch job."""
    if isinstance(exc, BatchRejected):
        return Outcome.CLIENT_ERROR  # refused cleanly, as a 4xx is online
    if isinstance(exc, BatchTimeout):
        return Outcome.TIMEOUT
    if isinstance(exc, EngineDied):
        return Outcome.CRASH
    text = str(exc).lower()
    if "out of memory" in text or "outofmemory" in text:
        return Outcome.CRASH
    return Outcome.SERVER_ERROR


def batch_probe(
    engine: BatchEngine,
    make_job: Callable[[int], BatchJob],
) -> Callable[[int], ProbeResult]:
    """A boundary probe: run ``make_job(value)``; a failure or a bad row check is classified."""

    def probe(value: int) -> ProbeResult:
        began = time.monotonic()
        try:
            result = engine.run(make_job(value))
        except BatchError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return ProbeResult(value, classify(exc), first[:300], time.monotonic() - began)
        if _cut_at_context(result, engine.spec.max_model_len):
            return ProbeResult(
                value,
                Outcome.CLIENT_ERROR,
                "output cut at the context length "
                f"({engine.spec.max_model_len}; the online API refuses these with a 400): "
                + result.check.describe(),
                time.monotonic() - began,
            )
        if not result.check.ok:
            return ProbeResult(
                value, Outcome.SERVER_ERROR, result.check.describe(), time.monotonic() - began
            )
        if result.preemptions:
            return ProbeResult(
                value,
                Outcome.PREEMPTION_STORM,
                f"{result.preemptions} preemptions: the KV cache ran out ({result.line()})",
                time.monotonic() - began,
            )
        return ProbeResult(value, Outcome.OK, result.line(), time.monotonic() - began)

    return probe


def _cut_at_context(result: BatchResult, max_model_len: int) -> bool:
    """True when the only fault is rows stopped short because they reached the context length."""
    check = result.check
    if not check.wrong_output_tokens or check.lost or check.duplicated or check.unexpected:
        return False
    if check.wrong_prompt_tokens:
        return False
    short = {row_id for row_id, _want, _got in check.wrong_output_tokens}
    return all(
        row.prompt_tokens + row.output_tokens >= max_model_len
        for row in result.rows
        if row.id in short
    )


def canary_job(engine: BatchEngine, job: BatchJob) -> Callable[[], bool]:
    """After a failing probe: does a small job still complete with every row?"""

    def canary() -> bool:
        if not engine.alive:
            return False
        try:
            return engine.run(job).check.ok
        except BatchError:
            return False

    return canary


def batch_boundary(
    engine: BatchEngine,
    dimension: str,
    make_job: Callable[[int], BatchJob],
    canary: BatchJob,
    *,
    start: int,
    max_value: int,
    max_probes: int = 16,
    resolution: int = 1,
) -> BoundaryResult:
    """The largest value of ``dimension`` whose job completes, each failure classified."""
    return search_boundary(
        dimension,
        batch_probe(engine, make_job),
        start=start,
        max_value=max_value,
        canary=canary_job(engine, canary),
        log_tail=engine.log_tail,
        max_probes=max_probes,
        resolution=resolution,
    )


def sla_projection(runs: Sequence[BatchResult], *, rows: int, window_s: float) -> Projection:
    """Whether ``rows`` fit in ``window_s`` at the pessimistic bound of the measured rows/s."""
    return project([r.rows_per_s for r in runs], requests=rows, window_s=window_s)
