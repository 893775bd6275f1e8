"""Burst shapes against the real engine: zero drops, with peak throughput, queue depth from the
engine's own gauge, and recovery time printed for each (short under CI=true / --load-scale)."""

from __future__ import annotations

import pytest

from pytest_gpuinfer.load import shapes
from pytest_gpuinfer.plugin.load_fixtures import BurstRunner


@pytest.mark.burst(allow_drops=0)
@pytest.mark.parametrize("name", shapes.STANDARD_SHAPES)
def test_shape_survives_without_drops(
    burst_runner: BurstRunner, baseline_rps: float, name: str
) -> None:
    shape = shapes.standard_shape(name, baseline_rps, scale=burst_runner.scale)
    report = burst_runner.run(shape)
    print(f"\n{report.headline()}\n{report.text()}")
    assert report.sent > 0
    assert report.queue_source == "engine", (
        f"expected the engine's own queue gauge, got {report.queue_label}"
    )
    assert report.max_queue is not None
    assert report.peak_throughput_rps > 0
