"""Configuration matrix: concurrency x prompt/output lengths, one load run per cell, then a ranking.

``run_matrix`` takes the measuring step as a callable, so the perf suite (a ``load_runner``), the
batch suite or a script can each measure a cell their own way; a cell that raises becomes a row
with its reason, not an aborted matrix.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from pytest_gpuinfer.load.runner import LoadResult
from pytest_gpuinfer.metrics import slo
from pytest_gpuinfer.perf.ranking import Candidate, Objective, Ranking, params_label, rank


@dataclass(frozen=True)
class Cell:
    """One point of the matrix."""

    concurrency: int
    prompt_tokens: int
    output_tokens: int

    @property
    def label(self) -> str:
        """``c=4 in=128 out=32``."""
        return params_label(
            {"c": self.concurrency, "in": self.prompt_tokens, "out": self.output_tokens}
        )


def cells(concurrencies: Iterable[int], lengths: Iterable[tuple[int, int]]) -> list[Cell]:
    """Every combination of concurrency and (prompt, output) length pair."""
    return [Cell(c, p, o) for c, (p, o) in itertools.product(concurrencies, lengths)]


def run_matrix(
    matrix: Sequence[Cell],
    measure: Callable[[Cell], LoadResult],
    slos: Sequence[slo.SLO],
    objective: str | Objective = "throughput",
) -> Ranking:
    """Measure every cell (an exception becomes that cell's reason) and rank them."""
    candidates: list[Candidate] = []
    for cell in matrix:
        cand = Candidate(cell.label, asdict(cell))
        try:
            cand.result = measure(cell)
        except Exception as exc:  # a cell that cannot run is a row, not the end of the matrix
            cand.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        candidates.append(cand)
    return rank(candidates, slos, objective)
