"""Batch matrix: batch size x replicas x output length, ranked by rows/s with the perf suite's code.

The cells run on the session's offline vLLM engine (one replica; its model loads once). With Ray,
the replica dimension is the size of the Ray Data actor pool: ``test_ray_replica_matrix`` runs it
outside CI, where each cell's replicas load their own engines. The matrix's verdicts: every cell
ran (a cell that raised fails the test, naming its error) and a best cell exists.
"""

from __future__ import annotations

import pytest

from pytest_gpuinfer.batch.analysis import batch_cells, run_batch_matrix

PROMPT_TOKENS = 16


def test_batch_matrix_picks_best_cell(
    offline_batch_engine, batch_rows, batch_settings, batch_report, gpuinfer_verdicts
):
    """Every cell runs and accounts for its rows; the best cell has the highest rows/s."""
    matrix = batch_cells(
        (8, 64) if batch_settings.ci else (8, 32, 128),
        (1,),
        (8, 32) if batch_settings.ci else (16, 64),
        prompt_tokens=PROMPT_TOKENS,
    )
    outcome = run_batch_matrix(
        offline_batch_engine,
        matrix,
        batch_rows,
        rows_per_cell=batch_settings.size(128, 256),
        time_limit_s=120,
    )
    ranking = outcome.ranking
    batch_report(
        "matrix",
        ranking,
        text=outcome.table("batch matrix (rows count as requests)"),
        kind="matrix",
    )
    gpuinfer_verdicts.check(ranking.verdicts(), ranking.table())
    assert all(r.check.ok for r in outcome.results.values())


def test_ray_replica_matrix(
    batch_engines, batch_rows, batch_settings, batch_report, gpuinfer_verdicts
):
    """Replicas 1 and 2 as Ray Data actor pools (outside CI: every cell loads its engines)."""
    if batch_settings.ci:
        pytest.skip("CI runs the matrix on the offline engine only (Ray cells reload the model)")
    engine = batch_engines.start("ray")
    outcome = run_batch_matrix(
        engine,
        batch_cells((32,), (1, 2), (16,), prompt_tokens=PROMPT_TOKENS),
        batch_rows,
        rows_per_cell=200,
        time_limit_s=420,
    )
    batch_report(
        "ray-matrix", outcome.ranking, text=outcome.table("Ray Data replicas"), kind="matrix"
    )
    gpuinfer_verdicts.check(outcome.ranking.verdicts(), outcome.table())
