"""Load suite: every test here carries the ``load`` marker; the baseline rate shapes scale from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_gpuinfer.load import bursts
from pytest_gpuinfer.load.runner import LoadRunner
from pytest_gpuinfer.load.workloads import Synthetic
from pytest_gpuinfer.targets import InferenceServer

BASELINE_SHARE = 0.15
"""Baseline rate as a share of the measured capacity: 5x stays under it, 10x goes over it."""


HERE = Path(__file__).parent
"""This suite's folder (tests/load in a checkout, pytest_gpuinfer/suites/load installed)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests collected from this folder as load tests."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.load)


@pytest.fixture(scope="session")
def capacity_rps(inference_server: InferenceServer) -> float:
    """Completed requests per second at concurrency 8 (16-token replies), measured once."""
    runner = LoadRunner(
        inference_server.base_url, inference_server.model, api_key=inference_server.api_key
    )
    return bursts.measure_capacity(
        runner, Synthetic(output_tokens=16), concurrency=8, duration_s=3.0
    )


@pytest.fixture(scope="session")
def baseline_rps(request: pytest.FixtureRequest) -> float:
    """The rate the shapes scale from: GPUINFER_BASELINE_RPS, else a share of the capacity."""
    given = os.environ.get("GPUINFER_BASELINE_RPS")
    if given:
        return float(given)
    capacity: float = request.getfixturevalue("capacity_rps")
    return max(0.5, capacity * BASELINE_SHARE)
