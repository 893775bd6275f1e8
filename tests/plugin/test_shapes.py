"""Burst shapes: rates relative to the baseline, burst windows, scaling, custom stages and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_gpuinfer.load import shapes
from pytest_gpuinfer.load.schedule import Stage


@pytest.mark.parametrize(("name", "peak"), [("spike5x", 5), ("spike10x", 10)])
def test_spike_rates_are_multiples_of_the_baseline(name: str, peak: float) -> None:
    shape = shapes.standard_shape(name, 2.0)
    assert shape.rate_at(0) == 2.0
    assert shape.rate_at(shape.burst_start_s + 0.01) == 2.0 * peak
    assert shape.rate_at(shape.burst_end_s + 0.01) == 2.0
    assert shape.phase_of(shape.burst_start_s - 0.01) == "before"
    assert shape.phase_of(shape.burst_start_s) == "during"
    assert shape.phase_of(shape.burst_end_s) == "after"


def test_scale_shrinks_every_duration_and_the_burst_window_not_the_rates() -> None:
    full = shapes.standard_shape("ramp_drop", 3.0)
    small = full.scaled(0.1)
    assert small.duration_s == pytest.approx(full.duration_s * 0.1)
    assert small.burst_start_s == pytest.approx(full.burst_start_s * 0.1)
    assert small.burst_end_s == pytest.approx(full.burst_end_s * 0.1)
    assert small.peak_rps == full.peak_rps == 24.0
    assert shapes.standard_shape("ramp_drop", 3.0, scale=0.1) == small


def test_oscillating_burst_window_spans_every_high_half() -> None:
    shape = shapes.oscillating(1.0, high_factor=4, period_s=10, cycles=3, before_s=5, after_s=5)
    assert shape.burst_start_s == 5
    assert shape.burst_end_s == 5 + 25  # three high halves and the two lows between them
    highs = [s for s in shape.schedule.stages if s.rate == 4.0]
    assert len(highs) == 3
    assert shape.rate_at(shape.burst_end_s + 0.1) == 1.0


def test_ramp_drop_ramps_then_drops_at_the_burst_end() -> None:
    shape = shapes.ramp_drop(2.0, peak_factor=8, before_s=10, ramp_s=20, hold_s=5, after_s=10)
    assert shape.rate_at(10 + 10) == pytest.approx(2.0 + (16.0 - 2.0) / 2)
    assert shape.rate_at(shape.burst_end_s - 0.01) == 16.0
    assert shape.rate_at(shape.burst_end_s + 0.01) == 2.0


def test_custom_stages_mark_the_burst_by_flag_or_by_peak() -> None:
    flagged = shapes.custom(
        [
            {"duration_s": 4, "factor": 1},
            {"duration_s": 2, "factor": 3, "burst": True},
            {"duration_s": 2, "factor": 6},
            {"duration_s": 4, "rate": 1.5},
        ],
        baseline_rps=1.5,
    )
    assert (flagged.burst_start_s, flagged.burst_end_s) == (4, 6)
    by_peak = shapes.custom([Stage(3, 1), Stage(1, 9), Stage(3, 1)], baseline_rps=1)
    assert (by_peak.burst_start_s, by_peak.burst_end_s) == (3, 4)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_shape_from_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"mine{suffix}"
    if suffix == ".json":
        path.write_text(
            json.dumps(
                {
                    "baseline_rps": 2,
                    "burst": [1, 1],
                    "stages": [
                        {"duration_s": 5, "factor": 1},
                        {"duration_s": 2, "factor": 7},
                        {"duration_s": 5, "factor": 1},
                    ],
                }
            )
        )
    else:
        path.write_text(
            "baseline_rps = 2\nburst = [1, 1]\n"
            "[[stages]]\nduration_s = 5\nfactor = 1\n"
            "[[stages]]\nduration_s = 2\nfactor = 7\n"
            "[[stages]]\nduration_s = 5\nfactor = 1\n"
        )
    shape = shapes.shape_from_file(path, scale=0.5)
    assert shape.name == "mine"
    assert shape.peak_rps == 14
    assert (shape.burst_start_s, shape.burst_end_s) == (2.5, 3.5)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"duration_s": 1}], "exactly one of rate"),
        ([{"duration_s": 1, "rate": 1, "factor": 2}], "exactly one of rate"),
        ([{"rate": 1}], "needs duration_s"),
        ([{"duration_s": 1, "rate": 1, "speed": 3}], "unknown keys"),
    ],
)
def test_bad_custom_stages_are_named(stages: list[dict[str, float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shapes.custom(stages, baseline_rps=1)


def test_unknown_shape_and_bad_baseline() -> None:
    with pytest.raises(ValueError, match="known: spike5x"):
        shapes.standard_shape("tsunami", 1)
    with pytest.raises(ValueError, match="baseline rate"):
        shapes.spike(0, 5)
