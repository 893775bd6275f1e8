"""Burst shapes: piecewise arrival schedules relative to a baseline rate, with a marked burst.

A :class:`LoadShape` is an open-loop schedule (:class:`~pytest_gpuinfer.load.schedule.OpenLoop`)
plus the window that counts as the burst, so a run can be split into phases (before, during and
after the burst) and the recovery time measured from the burst's end. Rates are given relative to
a baseline rate (measured or given), so one shape fits a laptop engine and a GPU server alike.

The standard shapes (each starts and ends at the baseline rate):

* ``spike5x`` / ``spike10x``: baseline, then 5x (10x) the baseline for ``spike_s``, then baseline.
* ``oscillating``: baseline, then ``cycles`` square waves between baseline and ``high_factor`` x
  baseline, then baseline. The burst window spans the whole oscillation.
* ``ramp_drop``: baseline, a linear ramp to ``peak_factor`` x baseline, a short hold, then a
  sudden drop back to the baseline. The burst window is the ramp and the hold.

``scale`` (``--load-scale``) multiplies every duration, rates unchanged, so CI runs a seconds-long
version of a shape that lasts minutes in full. Custom shapes come from a list of stages (from the
test) or a JSON/TOML file (:func:`shape_from_file`).
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pytest_gpuinfer.load.schedule import ArrivalKind, OpenLoop, Stage, Stages

Phase = Literal["before", "during", "after"]
PHASES: tuple[Phase, ...] = ("before", "during", "after")

STANDARD_SHAPES = ("spike5x", "spike10x", "oscillating", "ramp_drop")
"""Names accepted by :func:`standard_shape` (and by the locustfile's ``GPUINFER_SHAPE``)."""


@dataclass(frozen=True)
class LoadShape:
    """An open-loop schedule with a named burst window, built around a baseline rate."""

    name: str
    schedule: OpenLoop
    baseline_rps: float
    burst_start_s: float
    """Offset where the burst begins (the 'during' phase)."""
    burst_end_s: float
    """Offset where the burst ends: recovery is measured from here."""

    def __post_init__(self) -> None:
        """Reject a burst window outside the schedule."""
        if not 0 <= self.burst_start_s <= self.burst_end_s <= self.schedule.duration_s:
            raise ValueError(
                f"shape {self.name!r}: burst window {self.burst_start_s}..{self.burst_end_s} s "
                f"is not within the schedule's 0..{self.schedule.duration_s} s"
            )
        if math.isinf(self.schedule.duration_s):
            raise ValueError(f"shape {self.name!r}: a burst shape needs an end")

    @property
    def duration_s(self) -> float:
        """Length of the whole shape."""
        return self.schedule.duration_s

    @property
    def peak_rps(self) -> float:
        """The highest rate any stage asks for."""
        return max(max(stage.rate, stage.final_rate) for stage in self.schedule.stages)

    @property
    def expected_requests(self) -> float:
        """Mean number of arrivals over the shape."""
        return self.schedule.expected_requests

    def scaled(self, scale: float) -> LoadShape:
        """The same shape with every duration (and the burst window) multiplied by ``scale``."""
        return replace(
            self,
            schedule=self.schedule.scaled(scale),
            burst_start_s=self.burst_start_s * scale,
            burst_end_s=self.burst_end_s * scale,
        )

    def phase_of(self, offset_s: float) -> Phase:
        """Which phase an offset from the run start falls in."""
        if offset_s < self.burst_start_s:
            return "before"
        if offset_s < self.burst_end_s:
            return "during"
        return "after"

    def rate_at(self, offset_s: float) -> float:
        """Asked-for rate at ``offset_s`` (0 past the end)."""
        return self.schedule.rate_at(offset_s)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON description."""
        return {
            "name": self.name,
            "baseline_rps": self.baseline_rps,
            "burst_start_s": self.burst_start_s,
            "burst_end_s": self.burst_end_s,
            "duration_s": self.duration_s,
            "peak_rps": self.peak_rps,
            "arrival": self.schedule.arrival,
            "seed": self.schedule.seed,
            "stages": [asdict(stage) for stage in self.schedule.stages],
        }


def _shape(
    name: str,
    baseline_rps: float,
    before: Sequence[Stage],
    burst: Sequence[Stage],
    after: Sequence[Stage],
    arrival: ArrivalKind,
    seed: int,
    scale: float,
) -> LoadShape:
    """Assemble a shape from its three runs of stages, then scale it."""
    if not baseline_rps > 0:
        raise ValueError(f"baseline rate must be > 0 req/s, not {baseline_rps}")
    start = sum(stage.duration_s for stage in before)
    end = start + sum(stage.duration_s for stage in burst)
    schedule = Stages((*before, *burst, *after), arrival=arrival, seed=seed)
    return LoadShape(name, schedule, baseline_rps, start, end).scaled(scale)


def spike(
    baseline_rps: float,
    factor: float,
    *,
    before_s: float = 30.0,
    spike_s: float = 20.0,
    after_s: float = 60.0,
    arrival: ArrivalKind = "poisson",
    seed: int = 0,
    scale: float = 1.0,
    name: str | None = None,
) -> LoadShape:
    """Baseline, ``factor`` x baseline for ``spike_s``, then baseline again."""
    return _shape(
        name or f"spike{factor:g}x",
        baseline_rps,
        [Stage(before_s, baseline_rps)],
        [Stage(spike_s, baseline_rps * factor)],
        [Stage(after_s, baseline_rps)],
        arrival,
        seed,
        scale,
    )


def oscillating(
    baseline_rps: float,
    *,
    high_factor: float = 5.0,
    period_s: float = 20.0,
    cycles: int = 3,
    before_s: float = 20.0,
    after_s: float = 40.0,
    arrival: ArrivalKind = "poisson",
    seed: int = 0,
    scale: float = 1.0,
) -> LoadShape:
    """Baseline, then ``cycles`` square waves up to ``high_factor`` x baseline, then baseline."""
    if cycles < 1:
        raise ValueError(f"cycles must be >= 1, not {cycles}")
    half = period_s / 2
    wave = [Stage(half, baseline_rps * high_factor), Stage(half, baseline_rps)] * cycles
    return _shape(
        "oscillating",
        baseline_rps,
        [Stage(before_s, baseline_rps)],
        wave[:-1],  # the last low half belongs to the after phase
        [Stage(half + after_s, baseline_rps)],
        arrival,
        seed,
        scale,
    )


def ramp_drop(
    baseline_rps: float,
    *,
    peak_factor: float = 8.0,
    before_s: float = 20.0,
    ramp_s: float = 40.0,
    hold_s: float = 5.0,
    after_s: float = 60.0,
    arrival: ArrivalKind = "poisson",
    seed: int = 0,
    scale: float = 1.0,
) -> LoadShape:
    """Baseline, a linear ramp to ``peak_factor`` x baseline and a hold, then a sudden drop."""
    peak = baseline_rps * peak_factor
    burst = [Stage(ramp_s, baseline_rps, peak)]
    if hold_s > 0:
        burst.append(Stage(hold_s, peak))
    return _shape(
        "ramp_drop",
        baseline_rps,
        [Stage(before_s, baseline_rps)],
        burst,
        [Stage(after_s, baseline_rps)],
        arrival,
        seed,
        scale,
    )


def standard_shape(
    name: str,
    baseline_rps: float,
    *,
    scale: float = 1.0,
    arrival: ArrivalKind = "poisson",
    seed: int = 0,
) -> LoadShape:
    """One of :data:`STANDARD_SHAPES` at its default durations, multiplied by ``scale``."""
    if name == "spike5x":
        return spike(baseline_rps, 5, arrival=arrival, seed=seed, scale=scale)
    if name == "spike10x":
        return spike(baseline_rps, 10, arrival=arrival, seed=seed, scale=scale)
    if name == "oscillating":
        return oscillating(baseline_rps, arrival=arrival, seed=seed, scale=scale)
    if name == "ramp_drop":
        return ramp_drop(baseline_rps, arrival=arrival, seed=seed, scale=scale)
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(STANDARD_SHAPES)}")


def _stage_from(spec: Stage | Mapping[str, Any], baseline_rps: float, where: str) -> Stage:
    """A stage from a Stage or a mapping with ``duration_s`` and ``rate`` or ``factor``."""
    if isinstance(spec, Stage):
        return spec
    known = {"duration_s", "rate", "end_rate", "factor", "end_factor", "burst"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if "duration_s" not in spec:
        raise ValueError(f"{where}: needs duration_s")
    if ("rate" in spec) == ("factor" in spec):
        raise ValueError(f"{where}: give exactly one of rate (req/s) or factor (x baseline)")
    rate = float(spec["rate"]) if "rate" in spec else float(spec["factor"]) * baseline_rps
    end_rate: float | None = None
    if "end_rate" in spec:
        end_rate = float(spec["end_rate"])
    elif "end_factor" in spec:
        end_rate = float(spec["end_factor"]) * baseline_rps
    return Stage(float(spec["duration_s"]), rate, end_rate)


def custom(
    stages: Sequence[Stage | Mapping[str, Any]],
    *,
    baseline_rps: float,
    burst: tuple[int, int] | None = None,
    name: str = "custom",
    arrival: ArrivalKind = "poisson",
    seed: int = 0,
    scale: float = 1.0,
) -> LoadShape:
    """A shape from explicit stages; ``burst`` = (first, last) stage index of the burst, inclusive.

    A stage is a :class:`Stage` or a mapping with ``duration_s`` and either ``rate`` (req/s) or
    ``factor`` (x baseline), optionally ``end_rate``/``end_factor`` to ramp, and ``burst: true``
    to mark it part of the burst (used when ``burst`` is not given). Without any burst marked,
    the stages at the highest rate form the burst.
    """
    if not stages:
        raise ValueError("a custom shape needs at least one stage")
    built = [
        _stage_from(spec, baseline_rps, f"{name} stage {index}")
        for index, spec in enumerate(stages)
    ]
    if burst is None:
        marked = [
            i for i, spec in enumerate(stages) if isinstance(spec, Mapping) and spec.get("burst")
        ]
        if not marked:
            peak = max(max(s.rate, s.final_rate) for s in built)
            marked = [i for i, s in enumerate(built) if max(s.rate, s.final_rate) == peak]
        burst = (min(marked), max(marked))
    first, last = burst
    if not 0 <= first <= last < len(built):
        raise ValueError(f"{name}: burst stages {burst} not within 0..{len(built) - 1}")
    return _shape(
        name,
        baseline_rps,
        built[:first],
        built[first : last + 1],
        built[last + 1 :],
        arrival,
        seed,
        scale,
    )


def shape_from_file(
    path: str | Path, *, baseline_rps: float | None = None, scale: float = 1.0
) -> LoadShape:
    """A custom shape from a JSON or TOML file.

    Keys: ``name``, ``baseline_rps`` (unless passed here, which wins), ``arrival``, ``seed``,
    ``burst`` ([first, last] stage index) and ``stages`` (a list of tables, as in :func:`custom`).
    """
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read shape file {file}: {exc}") from None
    try:
        data = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = file.suffix[1:] or "JSON"
        raise ValueError(f"shape file {file} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise ValueError(f"shape file {file}: needs a 'stages' list")
    base = baseline_rps if baseline_rps is not None else data.get("baseline_rps")
    if base is None:
        raise ValueError(f"shape file {file}: no baseline_rps in the file or the call")
    burst = data.get("burst")
    return custom(
        data["stages"],
        baseline_rps=float(base),
        burst=None if burst is None else (int(burst[0]), int(burst[1])),
        name=str(data.get("name", file.stem)),
        arrival=data.get("arrival", "poisson"),
        seed=int(data.get("seed", 0)),
        scale=scale,
    )
