"""Burst shapes against the real engine: zero drops and recovery before the shape ends, with peak
throughput, queue depth from the engine's own gauge, and recovery time printed for each (short
under CI=true / --load-scale).

Recovery must come within the shape's after phase (6 s at CI scale: the shapes end 6 s after
their burst) unless ``@pytest.mark.burst(max_recovery_s=...)`` or ``--burst max_recovery_s=N``
says otherwise. Measured on vLLM-CPU at CI scale on a shared 2-core machine (2026-12-06): 4.2 s
after a 10x spike, 4.2 s oscillating, 4.6 s ramp-and-drop. A recovery whose latency part was
late on a run the self-check flagged (busy machine) is NOT JUDGED: the shape runs again twice as
long, and if that is still too noisy the test is skipped naming the CPU wait.
"""

from __future__ import annotations

import pytest

from pytest_gpuinfer.load import bursts, shapes
from pytest_gpuinfer.plugin.load_fixtures import BurstRunner
from pytest_gpuinfer.plugin.verdicts import VerdictGate


def recovery_limits(runner: BurstRunner, shape: shapes.LoadShape) -> bursts.BurstLimits:
    """The run's limits, with recovery due before the shape ends unless a limit was given."""
    if runner.limits.max_recovery_s is not None:
        return runner.limits
    after_s = shape.schedule.duration_s - shape.burst_end_s
    return runner.limits.updated(
        {
            "max_recovery_s": after_s,
            "recovery_source": f"tests/load: back before the shape ends ({after_s:g} s after "
            "the burst)",
        }
    )


@pytest.mark.burst(allow_drops=0)
@pytest.mark.parametrize("name", shapes.STANDARD_SHAPES)
def test_shape_survives_without_drops(
    burst_runner: BurstRunner, gpuinfer_verdicts: VerdictGate, baseline_rps: float, name: str
) -> None:
    """No request dropped, recovered before the shape ends; queue from the engine's gauge."""

    def attempt(number: int) -> bursts.BurstReport:
        shape = shapes.standard_shape(name, baseline_rps, scale=burst_runner.scale * number)
        return burst_runner.run(shape, check=False, limits=recovery_limits(burst_runner, shape))

    report = gpuinfer_verdicts.until_judged(attempt, lambda r: r.verdicts)
    print(f"\n{report.headline()}\n{report.text()}")
    assert report.queue_source == "engine", (
        f"expected the engine's own queue gauge, got {report.queue_label}"
    )
    gpuinfer_verdicts.check(report.verdicts, f"burst {report.shape.name!r} failed:")
