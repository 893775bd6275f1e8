"""Arrival processes: when each request of a load run is due.

Two kinds of schedule:

* :class:`ClosedLoop` - ``concurrency`` requests in flight; a request starts when another ends.
* :class:`OpenLoop` - arrivals at absolute offsets (seconds from run start) that do not depend on
  how fast the server answers, so latency is measured from each request's *scheduled* time and a
  slow server (or client) cannot hide behind fewer requests (no coordinated omission).

An open-loop schedule is a sequence of :class:`Stage` s, each with a rate (optionally ramping
linearly to ``end_rate``), and an arrival process that fixes the gaps: ``constant`` (evenly
spaced), ``poisson`` (exponential gaps) or ``gamma``. Gamma uses vLLM's ``--burstiness``
convention: shape = burstiness, same mean rate; 1.0 is Poisson, below 1 burstier, above 1 more
even. Arrivals are drawn in "unit work" (gaps of mean 1) and mapped through the inverse of the
cumulative rate, so a rate change takes effect exactly at the stage boundary and every stage gets
the mean rate it asks for.

Every arrival list is bounded by a request cap and a time cap, and is reproducible from ``seed``.
``scale`` shrinks every stage duration (not the rates), so CI can run a burst shape in seconds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

ArrivalKind = Literal["constant", "poisson", "gamma"]
ARRIVAL_KINDS: tuple[ArrivalKind, ...] = ("constant", "poisson", "gamma")


@dataclass(frozen=True, slots=True)
class Stage:
    """A stretch of an open-loop schedule: ``rate`` req/s, ramping to ``end_rate`` when given."""

    duration_s: float
    rate: float
    end_rate: float | None = None

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"stage duration must be > 0 s, not {self.duration_s}")
        if self.rate < 0 or (self.end_rate is not None and self.end_rate < 0):
            raise ValueError("stage rates must be >= 0")
        if math.isinf(self.duration_s) and self.end_rate not in (None, self.rate):
            raise ValueError("an endless stage cannot ramp")

    @property
    def final_rate(self) -> float:
        """Rate at the end of the stage."""
        return self.rate if self.end_rate is None else self.end_rate

    @property
    def expected_requests(self) -> float:
        """Mean number of arrivals in the stage (the integral of its rate)."""
        return self.duration_s * (self.rate + self.final_rate) / 2

    def rate_at(self, offset_s: float) -> float:
        """Rate ``offset_s`` seconds into the stage."""
        if self.end_rate is None or math.isinf(self.duration_s):
            return self.rate
        return self.rate + (self.end_rate - self.rate) * offset_s / self.duration_s

    def offset_for_work(self, work: float) -> float:
        """Inverse of the cumulative rate: the offset at which ``work`` arrivals are expected."""
        start_rate, end_rate = self.rate, self.final_rate
        if work <= 0:
            return 0.0
        if end_rate == start_rate:
            return work / start_rate
        half_slope = (end_rate - start_rate) / (2 * self.duration_s)
        # Solve half_slope * t^2 + start_rate * t = work, in a form stable as the slope nears 0.
        return 2 * work / (start_rate + math.sqrt(start_rate**2 + 4 * half_slope * work))


@dataclass(frozen=True, slots=True)
class ClosedLoop:
    """Closed loop: keep ``concurrency`` requests in flight."""

    concurrency: int

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {self.concurrency}")


@dataclass(frozen=True, slots=True)
class OpenLoop:
    """Open loop: arrivals follow the stages' rates, independent of server response times."""

    stages: tuple[Stage, ...]
    arrival: ArrivalKind = "poisson"
    burstiness: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("an open-loop schedule needs at least one stage")
        if self.arrival not in ARRIVAL_KINDS:
            raise ValueError(f"arrival must be one of {ARRIVAL_KINDS}, not {self.arrival!r}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, not {self.burstiness}")
        if any(math.isinf(stage.duration_s) for stage in self.stages[:-1]):
            raise ValueError("only the last stage may be endless")

    @property
    def duration_s(self) -> float:
        """Total length of the stages (infinite when the last stage is endless)."""
        return sum(stage.duration_s for stage in self.stages)

    @property
    def expected_requests(self) -> float:
        """Mean number of arrivals over all stages."""
        return sum(stage.expected_requests for stage in self.stages)

    def scaled(self, scale: float) -> OpenLoop:
        """The same shape with every stage duration multiplied by ``scale`` (rates unchanged)."""
        if not scale > 0:
            raise ValueError(f"scale must be > 0, not {scale}")
        return replace(
            self,
            stages=tuple(replace(s, duration_s=s.duration_s * scale) for s in self.stages),
        )

    def stage_starts(self) -> list[float]:
        """Offset at which each stage begins."""
        starts, at = [], 0.0
        for stage in self.stages:
            starts.append(at)
            at += stage.duration_s
        return starts

    def stage_index(self, offset_s: float) -> int:
        """Index of the stage running at ``offset_s`` (the last one past the end)."""
        at = 0.0
        for index, stage in enumerate(self.stages):
            at += stage.duration_s
            if offset_s < at:
                return index
        return len(self.stages) - 1

    def rate_at(self, offset_s: float) -> float:
        """Asked-for rate at ``offset_s``."""
        at = 0.0
        for stage in self.stages:
            if offset_s < at + stage.duration_s:
                return stage.rate_at(offset_s - at)
            at += stage.duration_s
        return 0.0

    def _unit_gaps(self) -> Iterator[float]:
        """Gaps between arrivals in units of expected arrivals (mean 1)."""
        if self.arrival == "constant":
            yield 0.0  # the first request goes at the start
            while True:
                yield 1.0
        rng = random.Random(self.seed)
        if self.arrival == "poisson":
            while True:
                yield rng.expovariate(1.0)
        shape = self.burstiness
        while True:
            yield rng.gammavariate(shape, 1.0 / shape)

    def arrival_times(
        self, *, max_requests: int | None = None, max_duration_s: float | None = None
    ) -> list[float]:
        """Arrival offsets in seconds from run start, ascending, within both caps."""
        time_cap = (
            self.duration_s if max_duration_s is None else min(max_duration_s, self.duration_s)
        )
        if max_requests is None and math.isinf(time_cap):
            raise ValueError("an endless schedule needs max_requests or max_duration_s")
        count_cap = math.inf if max_requests is None else max_requests
        times: list[float] = []
        gaps = self._unit_gaps()
        work = next(gaps)
        stage_start_time = 0.0
        stage_start_work = 0.0
        for stage in self.stages:
            stage_work = stage.expected_requests
            stage_end_work = stage_start_work + stage_work
            while stage_work > 0 and len(times) < count_cap and work < stage_end_work:
                offset = stage_start_time + stage.offset_for_work(work - stage_start_work)
                if offset >= time_cap:
                    return times
                times.append(offset)
                work += next(gaps)
            if len(times) >= count_cap:
                return times
            stage_start_time += stage.duration_s
            stage_start_work += stage_work
            if stage_start_time >= time_cap:
                return times
        return times


Schedule = ClosedLoop | OpenLoop


def constant_rate(rate: float, *, duration_s: float = math.inf) -> OpenLoop:
    """Evenly spaced arrivals at ``rate`` req/s."""
    return OpenLoop((Stage(duration_s, rate),), arrival="constant")


def poisson(rate: float, *, duration_s: float = math.inf, seed: int = 0) -> OpenLoop:
    """Poisson arrivals (exponential gaps) at a mean of ``rate`` req/s."""
    return OpenLoop((Stage(duration_s, rate),), arrival="poisson", seed=seed)


def gamma(
    rate: float, burstiness: float, *, duration_s: float = math.inf, seed: int = 0
) -> OpenLoop:
    """Gamma-distributed gaps at a mean of ``rate`` req/s; burstiness < 1 clusters arrivals."""
    return OpenLoop((Stage(duration_s, rate),), arrival="gamma", burstiness=burstiness, seed=seed)


def open_loop(
    rate: float,
    arrival: ArrivalKind = "poisson",
    *,
    burstiness: float = 1.0,
    duration_s: float = math.inf,
    seed: int = 0,
) -> OpenLoop:
    """A single-rate open-loop schedule with the named arrival process."""
    return OpenLoop((Stage(duration_s, rate),), arrival=arrival, burstiness=burstiness, seed=seed)


def staged(
    *stages: Stage,
    arrival: ArrivalKind = "poisson",
    burstiness: float = 1.0,
    seed: int = 0,
    scale: float = 1.0,
) -> OpenLoop:
    """A piecewise schedule from explicit stages, durations multiplied by ``scale``."""
    return OpenLoop(tuple(stages), arrival=arrival, burstiness=burstiness, seed=seed).scaled(scale)


def spike(
    base_rps: float,
    factor: float,
    before_s: float,
    spike_s: float,
    after_s: float,
    *,
    arrival: ArrivalKind = "poisson",
    burstiness: float = 1.0,
    seed: int = 0,
    scale: float = 1.0,
) -> OpenLoop:
    """Base rate, then ``factor`` times the base rate for ``spike_s``, then base rate again."""
    return staged(
        Stage(before_s, base_rps),
        Stage(spike_s, base_rps * factor),
        Stage(after_s, base_rps),
        arrival=arrival,
        burstiness=burstiness,
        seed=seed,
        scale=scale,
    )


def oscillate(
    low_rps: float,
    high_rps: float,
    period_s: float,
    cycles: int,
    *,
    waveform: Literal["square", "triangle"] = "square",
    arrival: ArrivalKind = "poisson",
    burstiness: float = 1.0,
    seed: int = 0,
    scale: float = 1.0,
) -> OpenLoop:
    """Rate alternating between ``low_rps`` and ``high_rps`` for ``cycles`` periods."""
    if cycles < 1:
        raise ValueError(f"cycles must be >= 1, not {cycles}")
    half = period_s / 2
    if waveform == "square":
        cycle = [Stage(half, high_rps), Stage(half, low_rps)]
    elif waveform == "triangle":
        cycle = [Stage(half, low_rps, high_rps), Stage(half, high_rps, low_rps)]
    else:
        raise ValueError(f"waveform must be 'square' or 'triangle', not {waveform!r}")
    return staged(*(cycle * cycles), arrival=arrival, burstiness=burstiness, seed=seed, scale=scale)


def ramp_then_drop(
    start_rps: float,
    peak_rps: float,
    ramp_s: float,
    drop_rps: float,
    after_s: float,
    *,
    hold_s: float = 0.0,
    arrival: ArrivalKind = "poisson",
    burstiness: float = 1.0,
    seed: int = 0,
    scale: float = 1.0,
) -> OpenLoop:
    """Linear ramp to ``peak_rps`` (optionally held), then a sudden drop to ``drop_rps``."""
    stages = [Stage(ramp_s, start_rps, peak_rps)]
    if hold_s > 0:
        stages.append(Stage(hold_s, peak_rps))
    stages.append(Stage(after_s, drop_rps))
    return staged(*stages, arrival=arrival, burstiness=burstiness, seed=seed, scale=scale)
