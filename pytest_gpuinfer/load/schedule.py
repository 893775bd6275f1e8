"""Schedules: when each request of a load run is due, as objects registered by name.

Two families:

* :class:`ClosedLoop` - ``concurrency`` requests in flight; a request starts when another ends.
  ``ramp_s`` starts the slots evenly over that many seconds instead of all at once, so identical
  requests do not stay in lockstep.
* Open loop - arrivals at absolute offsets (seconds from run start) that do not depend on how
  fast the server answers, so latency is measured from each request's *scheduled* time and a slow
  server (or client) cannot hide behind fewer requests (no coordinated omission). Every open-loop
  schedule may cap the requests in flight with ``max_concurrency`` (like ``vllm bench serve
  --max-concurrency``); a request past the cap waits in the client and the wait shows as queue.

The open-loop schedules built from rates are :class:`Constant`, :class:`Poisson`, :class:`Gamma`
and the general :class:`Stages` (a sequence of :class:`Stage` s, each with a rate, optionally
ramping linearly to ``end_rate``; :func:`spike`, :func:`oscillate` and :func:`ramp_then_drop`
build the burst shapes). The arrival process fixes the gaps: ``constant`` (evenly spaced),
``poisson`` (exponential gaps) or ``gamma``, with vLLM's ``--burstiness`` convention: shape =
burstiness, same mean rate; 1.0 is Poisson, below 1 burstier, above 1 more even. Arrivals are
drawn in "unit work" (gaps of mean 1) and mapped through the inverse of the cumulative rate, so a
rate change takes effect exactly at the stage boundary and every stage gets the rate it asks for.

:class:`TraceTimes` replays the timestamps of a recorded trace (see
:mod:`pytest_gpuinfer.load.workloads.traces`), sped up by ``speed``, within a time ``window``.

Every arrival list is bounded by a request cap and a time cap, and is reproducible from ``seed``.
``scaled`` shrinks every stage duration (not the rates), so CI can run a burst shape in seconds.

:data:`SCHEDULES` maps names to the classes (``closed``, ``constant``, ``poisson``, ``gamma``);
:func:`schedule_from_text` builds one from ``"poisson:rate=4,seed=1"``, the form the command line
and the locustfile take. Register another with ``SCHEDULES.register("name")``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pytest_gpuinfer.load.registry import Registry

if TYPE_CHECKING:
    from pytest_gpuinfer.load.workloads.traces import TraceFile

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


@runtime_checkable
class OpenSchedule(Protocol):
    """What the runner needs of an open-loop schedule."""

    @property
    def max_concurrency(self) -> int | None:
        """Cap on requests in flight (None: no cap)."""
        ...

    @property
    def duration_s(self) -> float:
        """Length of the schedule (infinite when endless)."""
        ...

    @property
    def first_item(self) -> int:
        """Index of the workload item the first arrival takes (a trace window's first row)."""
        ...

    def arrival_times(
        self, *, max_requests: int | None = None, max_duration_s: float | None = None
    ) -> list[float]:
        """Arrival offsets in seconds from run start, ascending, within both caps."""
        ...

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description for the run's config."""
        ...


SCHEDULES: Registry[Any] = Registry("schedule")
"""Schedule classes by name, for the command line, the locustfile and options."""


@SCHEDULES.register("closed")
@dataclass(frozen=True, slots=True)
class ClosedLoop:
    """Closed loop: keep ``concurrency`` requests in flight, slots started over ``ramp_s``."""

    concurrency: int
    ramp_s: float = 0.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {self.concurrency}")
        if not self.ramp_s >= 0:
            raise ValueError(f"ramp_s must be >= 0, not {self.ramp_s}")

    def slot_offsets(self, worker: int, processes: int, slots: int) -> list[float]:
        """Start offsets of one process's ``slots`` slots: every slot of the run evenly spread."""
        step = self.ramp_s / self.concurrency
        return [(worker + processes * j) * step for j in range(slots)]

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description."""
        return {"kind": "closed", "concurrency": self.concurrency, "ramp_s": self.ramp_s}


class OpenLoop:
    """Base of the open-loop schedules built from stages of rates (see :class:`Stages`).

    A subclass provides ``stages``, ``arrival``, ``burstiness``, ``seed`` and
    ``max_concurrency``; everything else (arrival times, rate at an offset, scaling) is here.
    """

    __slots__ = ()
    name: ClassVar[str] = "open"

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stretches of rate, in order."""
        raise NotImplementedError

    @property
    def arrival(self) -> ArrivalKind:
        """The arrival process that fixes the gaps."""
        raise NotImplementedError

    @property
    def burstiness(self) -> float:
        """Gamma shape (1.0 for the other processes)."""
        return 1.0

    @property
    def seed(self) -> int:
        """Seed of the random gaps."""
        return 0

    @property
    def max_concurrency(self) -> int | None:
        """Cap on requests in flight (None: no cap)."""
        return None

    @property
    def first_item(self) -> int:
        """Index of the workload item the first arrival takes (0: the start)."""
        return 0

    def _check(self) -> None:
        """Reject schedules that describe no possible arrivals."""
        if not self.stages:
            raise ValueError("an open-loop schedule needs at least one stage")
        if self.arrival not in ARRIVAL_KINDS:
            raise ValueError(f"arrival must be one of {ARRIVAL_KINDS}, not {self.arrival!r}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, not {self.burstiness}")
        if any(math.isinf(stage.duration_s) for stage in self.stages[:-1]):
            raise ValueError("only the last stage may be endless")
        cap = self.max_concurrency
        if cap is not None and cap < 1:
            raise ValueError(f"max_concurrency must be >= 1, not {cap}")

    @property
    def duration_s(self) -> float:
        """Total length of the stages (infinite when the last stage is endless)."""
        return sum(stage.duration_s for stage in self.stages)

    @property
    def expected_requests(self) -> float:
        """Mean number of arrivals over all stages."""
        return sum(stage.expected_requests for stage in self.stages)

    def scaled(self, scale: float) -> Stages:
        """The same shape with every stage duration multiplied by ``scale`` (rates unchanged)."""
        if not scale > 0:
            raise ValueError(f"scale must be > 0, not {scale}")
        return Stages(
            tuple(replace(s, duration_s=s.duration_s * scale) for s in self.stages),
            arrival=self.arrival,
            burstiness=self.burstiness,
            seed=self.seed,
            max_concurrency=self.max_concurrency,
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

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description."""
        return {
            "kind": "open",
            "name": self.name,
            "arrival": self.arrival,
            "burstiness": self.burstiness,
            "seed": self.seed,
            "max_concurrency": self.max_concurrency,
            "stages": [asdict(stage) for stage in self.stages],
        }


@dataclass(frozen=True, slots=True)
class Stages(OpenLoop):
    """Open loop through explicit stages (the burst shapes are built from these)."""

    stages: tuple[Stage, ...]
    arrival: ArrivalKind = "poisson"
    burstiness: float = 1.0
    seed: int = 0
    max_concurrency: int | None = None
    name: ClassVar[str] = "stages"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        self._check()


class SteadyRate(OpenLoop):
    """Base of the single-rate open-loop schedules: one stage at ``rate`` for ``duration_s``.

    A subclass is a dataclass with ``rate`` and ``duration_s`` fields and names its arrival
    process in the class variable ``arrival``.
    """

    __slots__ = ()
    rate: float

    def __post_init__(self) -> None:
        """Reject a rate that is not positive, then what no open-loop schedule allows."""
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, not {self.rate}")
        self._check()

    @property
    def stages(self) -> tuple[Stage, ...]:
        """One stage at the rate."""
        return (Stage(self.duration_s, self.rate),)


@SCHEDULES.register("constant")
@dataclass(frozen=True, slots=True)
class Constant(SteadyRate):
    """Evenly spaced arrivals at ``rate`` req/s, the first at the start."""

    rate: float
    duration_s: float = math.inf
    max_concurrency: int | None = None
    name: ClassVar[str] = "constant"
    arrival: ClassVar[ArrivalKind] = "constant"


@SCHEDULES.register("poisson")
@dataclass(frozen=True, slots=True)
class Poisson(SteadyRate):
    """Poisson arrivals (exponential gaps) at a mean of ``rate`` req/s."""

    rate: float
    duration_s: float = math.inf
    seed: int = 0
    max_concurrency: int | None = None
    name: ClassVar[str] = "poisson"
    arrival: ClassVar[ArrivalKind] = "poisson"


@SCHEDULES.register("gamma")
@dataclass(frozen=True, slots=True)
class Gamma(SteadyRate):
    """Gamma-distributed gaps at a mean of ``rate`` req/s; burstiness < 1 clusters arrivals."""

    rate: float
    burstiness: float = 1.0
    duration_s: float = math.inf
    seed: int = 0
    max_concurrency: int | None = None
    name: ClassVar[str] = "gamma"
    arrival: ClassVar[ArrivalKind] = "gamma"


@dataclass(frozen=True)
class TraceTimes:
    """Arrivals at a trace's recorded times, ``speed`` times faster, within ``window`` seconds.

    ``window`` is ``(start_s, end_s)`` in the trace's own seconds from its first request; the
    first arrival of the run is the first request in the window, at offset 0. A workload built
    from the same trace (:class:`~pytest_gpuinfer.load.workloads.Trace`) sends that request's
    own lengths: the runner starts the workload at :attr:`first_item`.
    """

    trace: TraceFile
    speed: float = 1.0
    window: tuple[float, float] | None = None
    max_concurrency: int | None = None
    name: ClassVar[str] = "trace"

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, not {self.speed}")
        if self.window is not None:
            start, end = self.window
            if not 0 <= start < end:
                raise ValueError(
                    f"window must be (start_s, end_s) with 0 <= start < end: {start}, {end}"
                )
        if not self._rows():
            raise ValueError(f"no request of {self.trace.path} falls in the window {self.window}")

    def _rows(self) -> range:
        """Indices of the trace's requests within the window."""
        return self.trace.rows_between(*(self.window or (0.0, math.inf)))

    @property
    def first_item(self) -> int:
        """The first trace row in the window."""
        return self._rows().start

    @property
    def window_start_s(self) -> float:
        """Trace time that maps to the run's start."""
        return self.window[0] if self.window is not None else 0.0

    @property
    def duration_s(self) -> float:
        """Run time the window takes at this speed (to the last arrival when it is open)."""
        if self.window is not None and math.isfinite(self.window[1]):
            return (self.window[1] - self.window[0]) / self.speed
        rows = self._rows()
        last = self.trace.requests[rows.stop - 1].timestamp_s
        return math.nextafter((last - self.window_start_s) / self.speed, math.inf)

    def arrival_times(
        self, *, max_requests: int | None = None, max_duration_s: float | None = None
    ) -> list[float]:
        """The window's recorded times from its start, divided by the speed, within both caps."""
        rows = self._rows()
        count = len(rows) if max_requests is None else min(max_requests, len(rows))
        cap = math.inf if max_duration_s is None else max_duration_s
        start = self.window_start_s
        out: list[float] = []
        requests = self.trace.requests
        for row in range(rows.start, rows.start + count):
            offset = (requests[row].timestamp_s - start) / self.speed
            if offset >= cap:
                break
            out.append(offset)
        return out

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description."""
        return {
            "kind": "open",
            "name": self.name,
            "trace": str(self.trace.path),
            "format": self.trace.format,
            "speed": self.speed,
            "window": list(self.window) if self.window is not None else None,
            "first_row": self.first_item,
            "max_concurrency": self.max_concurrency,
        }


Schedule = ClosedLoop | OpenSchedule


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
) -> Stages:
    """Base rate, then ``factor`` times the base rate for ``spike_s``, then base rate again."""
    return Stages(
        (Stage(before_s, base_rps), Stage(spike_s, base_rps * factor), Stage(after_s, base_rps)),
        arrival=arrival,
        burstiness=burstiness,
        seed=seed,
    ).scaled(scale)


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
) -> Stages:
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
    return Stages(tuple(cycle * cycles), arrival=arrival, burstiness=burstiness, seed=seed).scaled(
        scale
    )


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
) -> Stages:
    """Linear ramp to ``peak_rps`` (optionally held), then a sudden drop to ``drop_rps``."""
    stages = [Stage(ramp_s, start_rps, peak_rps)]
    if hold_s > 0:
        stages.append(Stage(hold_s, peak_rps))
    stages.append(Stage(after_s, drop_rps))
    return Stages(tuple(stages), arrival=arrival, burstiness=burstiness, seed=seed).scaled(scale)


def schedule_from_text(text: str) -> Schedule:
    """A registered schedule from ``"name:key=value,..."``, e.g. ``"poisson:rate=4,seed=1"``."""
    built: Schedule = SCHEDULES.from_text(text)
    return built
