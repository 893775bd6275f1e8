"""Tests of the arrival processes: rates, shapes, caps, scaling and reproducibility."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from pytest_gpuinfer.load.schedule import (
    SCHEDULES,
    ClosedLoop,
    Constant,
    Gamma,
    Poisson,
    Stage,
    Stages,
    oscillate,
    ramp_then_drop,
    schedule_from_text,
    spike,
)


def gaps(times: list[float]) -> list[float]:
    """Differences between consecutive arrival times."""
    return [b - a for a, b in itertools.pairwise(times)]


def count_between(times: list[float], start: float, end: float) -> int:
    """Arrivals in [start, end)."""
    return sum(1 for t in times if start <= t < end)


def test_constant_rate_is_evenly_spaced_from_zero() -> None:
    """Constant arrivals start at 0 and are exactly 1/rate apart."""
    times = Constant(200).arrival_times(max_requests=1000)
    assert len(times) == 1000 and times[0] == 0.0
    assert all(gap == pytest.approx(0.005, abs=1e-9) for gap in gaps(times))


def test_poisson_has_the_asked_mean_rate_and_exponential_gaps() -> None:
    """Poisson: mean gap 1/rate and coefficient of variation near 1."""
    times = Poisson(100, seed=3).arrival_times(max_requests=20000)
    intervals = gaps(times)
    mean = statistics.fmean(intervals)
    assert mean == pytest.approx(0.01, rel=0.03)
    assert statistics.pstdev(intervals) / mean == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_keeps_the_mean_rate_and_sets_the_spread(burstiness: float) -> None:
    """Gamma with shape b: same mean rate, coefficient of variation 1/sqrt(b)."""
    times = Gamma(100, burstiness, seed=1).arrival_times(max_requests=20000)
    intervals = gaps(times)
    mean = statistics.fmean(intervals)
    assert mean == pytest.approx(0.01, rel=0.05)
    cv = statistics.pstdev(intervals) / mean
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.08)


def test_same_seed_same_arrivals_other_seed_other_arrivals() -> None:
    """Schedules are reproducible from the seed."""
    first = Poisson(50, seed=7).arrival_times(max_requests=100)
    assert first == Poisson(50, seed=7).arrival_times(max_requests=100)
    assert first != Poisson(50, seed=8).arrival_times(max_requests=100)


def test_caps_bound_the_arrivals() -> None:
    """The request cap and the time cap both stop the list, whichever comes first."""
    schedule = Constant(100)
    assert len(schedule.arrival_times(max_requests=10, max_duration_s=100)) == 10
    by_time = schedule.arrival_times(max_requests=10_000, max_duration_s=1.0)
    assert len(by_time) == 100 and max(by_time) < 1.0
    with pytest.raises(ValueError, match="endless"):
        schedule.arrival_times()


def test_finite_stages_end_on_their_own() -> None:
    """A schedule with an end needs no caps; its arrivals stay inside it."""
    schedule = Stages((Stage(1.0, 50), Stage(1.0, 100)), arrival="constant")
    times = schedule.arrival_times()
    assert max(times) < 2.0
    assert count_between(times, 0, 1) == 50 and count_between(times, 1, 2) == 100


def test_spike_multiplies_the_rate_only_during_the_spike() -> None:
    """A 10x spike: ten times the arrivals per second inside it."""
    schedule = spike(20, 10, before_s=2, spike_s=1, after_s=2, arrival="constant")
    times = schedule.arrival_times()
    assert count_between(times, 0, 2) == 40
    assert count_between(times, 2, 3) == 200
    assert count_between(times, 3, 5) == 40
    assert schedule.rate_at(2.5) == 200 and schedule.stage_index(2.5) == 1


def test_poisson_spike_rates_per_stage() -> None:
    """Poisson arrivals follow each stage's rate within sampling error."""
    schedule = spike(100, 5, before_s=10, spike_s=4, after_s=10, seed=2)
    times = schedule.arrival_times()
    assert count_between(times, 0, 10) == pytest.approx(1000, rel=0.1)
    assert count_between(times, 10, 14) == pytest.approx(2000, rel=0.1)
    assert count_between(times, 14, 24) == pytest.approx(1000, rel=0.1)


def test_ramp_is_linear_then_drops_at_once() -> None:
    """A ramp 0 -> 100 req/s over 2 s has 25 then 75 arrivals in its halves; then the drop."""
    schedule = ramp_then_drop(0, 100, ramp_s=2, drop_rps=10, after_s=1, arrival="constant")
    times = schedule.arrival_times()
    assert count_between(times, 0, 1) == pytest.approx(25, abs=1)
    assert count_between(times, 1, 2) == pytest.approx(75, abs=1)
    assert count_between(times, 2, 3) == pytest.approx(10, abs=1)
    assert schedule.rate_at(1.0) == pytest.approx(50)
    assert schedule.expected_requests == pytest.approx(110)


def test_oscillation_alternates_high_and_low() -> None:
    """A square wave between 10 and 50 req/s with a 2 s period."""
    schedule = oscillate(10, 50, period_s=2, cycles=3, arrival="constant")
    times = schedule.arrival_times()
    assert schedule.duration_s == pytest.approx(6)
    for cycle in range(3):
        assert count_between(times, 2 * cycle, 2 * cycle + 1) == pytest.approx(50, abs=1)
        assert count_between(times, 2 * cycle + 1, 2 * cycle + 2) == pytest.approx(10, abs=1)


def test_triangle_oscillation_ramps() -> None:
    """The triangle wave ramps between the rates (mean rate halfway)."""
    schedule = oscillate(0, 100, period_s=2, cycles=1, waveform="triangle", arrival="constant")
    assert schedule.rate_at(0.5) == pytest.approx(50)
    assert len(schedule.arrival_times()) == pytest.approx(100, abs=1)


def test_scale_shrinks_durations_not_rates() -> None:
    """scale=0.1 makes a 10 s spike shape 1 s long at the same rates."""
    full = spike(100, 5, before_s=4, spike_s=2, after_s=4, arrival="constant")
    small = spike(100, 5, before_s=4, spike_s=2, after_s=4, arrival="constant", scale=0.1)
    assert small.duration_s == pytest.approx(1.0)
    assert small.rate_at(0.5) == full.rate_at(5.0) == 500
    times = small.arrival_times()
    assert count_between(times, 0.4, 0.6) == pytest.approx(100, abs=1)
    assert full.scaled(0.1) == small


def test_zero_rate_stage_has_no_arrivals() -> None:
    """A pause (rate 0) in the middle leaves a gap."""
    times = Stages((Stage(1, 10), Stage(1, 0), Stage(1, 10)), arrival="constant").arrival_times()
    assert count_between(times, 1, 2) == 0 and len(times) == 20


@pytest.mark.parametrize(
    "make",
    [
        lambda: ClosedLoop(0),
        lambda: Stage(0, 10),
        lambda: Stage(1, -1),
        lambda: ClosedLoop(2, ramp_s=-1),
        lambda: Stages(()),
        lambda: Stages((Stage(1, 1),), arrival="weird"),  # type: ignore[arg-type]
        lambda: Gamma(10, 0),
        lambda: Poisson(0),
        lambda: Poisson(10, max_concurrency=0),
        lambda: Stages((Stage(math.inf, 1), Stage(1, 1))),
        lambda: Constant(10).scaled(0),
        lambda: schedule_from_text("poison:rate=1"),
        lambda: schedule_from_text("poisson:rate=fast"),
        lambda: schedule_from_text("poisson:rat=1"),
        lambda: schedule_from_text("poisson:rate"),
    ],
)
def test_invalid_schedules_are_rejected(make: object) -> None:
    """Nonsense parameters raise ValueError."""
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_schedules_are_registered_by_name_and_built_from_text() -> None:
    """The text form the command line takes builds the same objects as the constructors."""
    assert schedule_from_text("poisson:rate=4,seed=1") == Poisson(4, seed=1)
    assert schedule_from_text("gamma:rate=4, burstiness=0.5") == Gamma(4, 0.5)
    assert schedule_from_text("constant:rate=2,max_concurrency=3") == Constant(2, max_concurrency=3)
    assert schedule_from_text("closed:concurrency=8,ramp_s=0.5") == ClosedLoop(8, 0.5)
    assert {"closed", "constant", "poisson", "gamma"} <= set(SCHEDULES.names())


def test_closed_loop_ramp_spreads_every_slot_of_every_process() -> None:
    """8 slots over 0.8 s in 2 processes: process 0 takes the even offsets, 1 the odd ones."""
    loop = ClosedLoop(8, ramp_s=0.8)
    assert loop.slot_offsets(0, 2, 4) == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert loop.slot_offsets(1, 2, 4) == pytest.approx([0.1, 0.3, 0.5, 0.7])
