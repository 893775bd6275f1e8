"""The load engine's check on itself: was the client the bottleneck of the run?

A load generator that saturates its core reports its own delay as the server's. Every run
therefore measures, per client process: CPU time over wall time, event-loop lag (a probe task
that wakes every 10 ms and measures how late it ran), dispatch slip (how late each request was
started relative to its due time), unread bytes waiting in the kernel on busy connections, and
(Linux) how long the client waited for a CPU while other processes ran: on a busy machine the
client's timestamps are late even when its own CPU use is low.
When any crosses its limit (:class:`SelfCheckLimits`) the result is marked ``client_bound`` with
the figures and reasons, so the numbers are not mistaken for the server's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pytest_gpuinfer.load.client import InferenceClient
from pytest_gpuinfer.metrics import stats, units
from pytest_gpuinfer.metrics.sketch import LatencySketch

PROBE_INTERVAL_S = 0.010

KEEP_SAMPLES = 50_000
"""Lag or slip samples a process keeps as they are; past that they are folded into a sketch."""
_BACKLOG_SAMPLE = 8


@dataclass(frozen=True, slots=True)
class SelfCheckLimits:
    """Thresholds past which a run is marked client-bound."""

    cpu_fraction: float = 0.85
    """Client process CPU seconds per wall second (1.0 is a full core)."""
    loop_lag_p99_s: float = 0.005
    """99th percentile of how late the event loop ran a due probe."""
    dispatch_slip_p99_s: float = 0.005
    """99th percentile of how late requests were started relative to their due time."""
    read_backlog_fraction: float = 0.5
    """Share of probe samples that found response bytes waiting unread in the kernel."""
    cpu_wait_fraction: float = 0.05
    """Time the client was ready to run but waited for a CPU, per wall second (Linux)."""
    cpu_wait_per_wakeup_s: float = 0.0001
    """...and the mean wait per wake-up must pass this too: a virtual CPU waking from idle costs
    some tens of microseconds per wake-up even on an idle machine, which is not contention."""
    min_window_s: float = 1.0
    """CPU shares (use, wait) are judged only over runs at least this long: over a fraction of
    a second, start-up work and the clock's granularity make them meaningless (a 0.2 s run
    once read 413% of a core)."""


@dataclass(slots=True)
class ProbeFigures:
    """Raw self-check measurements of one client process."""

    worker: int
    cpu_s: float = 0.0
    wall_s: float = 0.0
    loop_lag_s: list[float] = field(default_factory=list)
    dispatch_slip_s: list[float] = field(default_factory=list)
    backlog_samples: int = 0
    backlog_nonzero: int = 0
    backlog_max_bytes: int = 0
    cpu_wait_s: float | None = None
    """Run-queue wait from /proc/self/schedstat: ready to run, but another process had the CPU."""
    wakeups: int = 0
    """Times the client was scheduled onto a CPU during the run (schedstat)."""
    precise_timer: bool = False
    event_loop: str = ""
    lag_sketch: LatencySketch | None = None
    slip_sketch: LatencySketch | None = None
    """Lag and slip samples past :data:`KEEP_SAMPLES`, folded (a long run's memory stays flat)."""

    def bound(self) -> None:
        """Fold the sample lists into sketches once they pass :data:`KEEP_SAMPLES`."""
        if len(self.loop_lag_s) >= KEEP_SAMPLES:
            self.lag_sketch = _fold(self.lag_sketch, self.loop_lag_s)
        if len(self.dispatch_slip_s) >= KEEP_SAMPLES:
            self.slip_sketch = _fold(self.slip_sketch, self.dispatch_slip_s)


def _fold(sketch: LatencySketch | None, values: list[float]) -> LatencySketch:
    """``values`` folded into ``sketch`` (a new one when None), the list emptied in place."""
    sketch = sketch or LatencySketch()
    sketch.add(np.asarray(values, dtype=np.float64))
    del values[:]
    return sketch


def _samples(lists: list[list[float]], sketches: list[LatencySketch | None]) -> stats.Distribution:
    """The distribution of every process's samples: exact unless some were folded."""
    folded = [s for s in sketches if s is not None]
    if not folded:
        return stats.distribution([v for values in lists for v in values])
    merged = LatencySketch()
    for sketch in folded:
        merged.merge(sketch)
    for values in lists:
        merged.add(np.asarray(values, dtype=np.float64))
    return stats.sketch_distribution(merged)


@dataclass(frozen=True)
class SelfCheck:
    """Whether the load engine itself was the bottleneck, with the figures that say so."""

    client_bound: bool
    reasons: tuple[str, ...]
    workers: int
    cpu_fraction: float
    """Highest CPU fraction of any client process."""
    cpu_s: float
    wall_s: float
    loop_lag: stats.Distribution
    dispatch_slip: stats.Distribution
    read_backlog_fraction: float
    read_backlog_max_bytes: int
    cpu_wait_s: float | None
    """Total time the client processes waited for a CPU (None where it cannot be read)."""
    precise_timer: bool
    event_loop: str
    limits: SelfCheckLimits

    @classmethod
    def from_figures(cls, figures: Sequence[ProbeFigures], limits: SelfCheckLimits) -> SelfCheck:
        """Judge the figures of every client process against ``limits``."""
        reasons: list[str] = []
        cpu_fraction = 0.0
        for fig in figures:
            fraction = fig.cpu_s / fig.wall_s if fig.wall_s > 0 else 0.0
            cpu_fraction = max(cpu_fraction, fraction)
            if fraction >= limits.cpu_fraction and fig.wall_s >= limits.min_window_s:
                reasons.append(
                    f"worker {fig.worker} used {fraction:.0%} of a CPU core "
                    f"(limit {limits.cpu_fraction:.0%})"
                )
        lag = _samples([f.loop_lag_s for f in figures], [f.lag_sketch for f in figures])
        slip = _samples([f.dispatch_slip_s for f in figures], [f.slip_sketch for f in figures])
        if lag.count and lag.p99 >= limits.loop_lag_p99_s:
            reasons.append(
                f"event-loop lag p99 {lag.p99 * 1e3:.2f} ms "
                f"(limit {limits.loop_lag_p99_s * 1e3:.2f} ms)"
            )
        if slip.count and slip.p99 >= limits.dispatch_slip_p99_s:
            reasons.append(
                f"requests started late: dispatch slip p99 {slip.p99 * 1e3:.2f} ms "
                f"(limit {limits.dispatch_slip_p99_s * 1e3:.2f} ms)"
            )
        samples = sum(fig.backlog_samples for fig in figures)
        nonzero = sum(fig.backlog_nonzero for fig in figures)
        backlog_fraction = nonzero / samples if samples else 0.0
        waits = [fig.cpu_wait_s for fig in figures if fig.cpu_wait_s is not None]
        cpu_wait = sum(waits) if waits else None
        for fig in figures:
            if fig.cpu_wait_s is None or fig.wall_s < limits.min_window_s:
                continue
            waited = fig.cpu_wait_s / fig.wall_s
            per_wakeup = fig.cpu_wait_s / max(1, fig.wakeups)
            if waited >= limits.cpu_wait_fraction and per_wakeup >= limits.cpu_wait_per_wakeup_s:
                reasons.append(
                    f"machine busy: worker {fig.worker} waited {fig.cpu_wait_s * 1e3:.0f} ms "
                    f"for a CPU ({waited:.0%} of the run, {per_wakeup * 1e6:.0f} us per wake-up; "
                    f"limits {limits.cpu_wait_fraction:.0%} and "
                    f"{limits.cpu_wait_per_wakeup_s * 1e6:.0f} us)"
                )
        if samples >= 10 and backlog_fraction >= limits.read_backlog_fraction:
            reasons.append(
                f"reads falling behind: unread response bytes in {backlog_fraction:.0%} "
                f"of samples (limit {limits.read_backlog_fraction:.0%})"
            )
        return cls(
            client_bound=bool(reasons),
            reasons=tuple(reasons),
            workers=len(figures),
            cpu_fraction=cpu_fraction,
            cpu_s=sum(fig.cpu_s for fig in figures),
            wall_s=max((fig.wall_s for fig in figures), default=0.0),
            loop_lag=lag,
            dispatch_slip=slip,
            read_backlog_fraction=backlog_fraction,
            read_backlog_max_bytes=max((fig.backlog_max_bytes for fig in figures), default=0),
            cpu_wait_s=cpu_wait,
            precise_timer=all(fig.precise_timer for fig in figures),
            event_loop=figures[0].event_loop if figures else "",
            limits=limits,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the self-check."""
        return {
            "client_bound": self.client_bound,
            "reasons": list(self.reasons),
            "workers": self.workers,
            "cpu_fraction": self.cpu_fraction,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "loop_lag": self.loop_lag.to_dict(),
            "dispatch_slip": self.dispatch_slip.to_dict(),
            "read_backlog_fraction": self.read_backlog_fraction,
            "read_backlog_max_bytes": self.read_backlog_max_bytes,
            "cpu_wait_s": self.cpu_wait_s,
            "precise_timer": self.precise_timer,
            "event_loop": self.event_loop,
            "limits": asdict(self.limits),
        }

    def text(self) -> str:
        """Human-readable self-check lines."""
        verdict = (
            "CLIENT-BOUND: these figures include the load engine's own delay"
            if (self.client_bound)
            else "ok: the load engine kept up"
        )
        lines = [
            f"self-check: {verdict}",
            f"  client cpu {self.cpu_fraction:.0%} of a core ({self.workers} process(es), "
            f"{self.event_loop}), loop lag p50/p99/max "
            f"{units.ms(self.loop_lag.p50)}/{units.ms(self.loop_lag.p99)}/"
            f"{units.ms(self.loop_lag.max)} ms, "
            f"dispatch slip p50/p99/max {units.ms(self.dispatch_slip.p50)}/"
            f"{units.ms(self.dispatch_slip.p99)}/{units.ms(self.dispatch_slip.max)} ms, "
            f"unread-bytes samples {self.read_backlog_fraction:.0%}"
            + (
                f", waited for a CPU {self.cpu_wait_s * 1e3:.0f} ms"
                if self.cpu_wait_s is not None
                else ""
            ),
        ]
        lines.extend(f"  - {reason}" for reason in self.reasons)
        return "\n".join(lines)


def cpu_wait() -> tuple[float, int] | None:
    """Seconds this thread has waited for a CPU while ready to run, and its number of turns on
    a CPU, from Linux schedstat (None elsewhere)."""
    for path in ("/proc/thread-self/schedstat", "/proc/self/schedstat"):
        try:
            with open(path, encoding="ascii") as stats_file:
                fields = stats_file.read().split()
            return int(fields[1]) / 1e9, int(fields[2])
        except (OSError, IndexError, ValueError):
            continue
    return None


async def probe(client: InferenceClient, figures: ProbeFigures, stop: asyncio.Event) -> None:
    """Measure event-loop lag and unread socket bytes every few milliseconds until ``stop``."""
    lags = figures.loop_lag_s
    while not stop.is_set():
        due = time.perf_counter() + PROBE_INTERVAL_S
        await asyncio.sleep(PROBE_INTERVAL_S)
        lags.append(max(0.0, time.perf_counter() - due))
        figures.bound()
        pending = client.unread_bytes(_BACKLOG_SAMPLE)
        if pending:
            figures.backlog_samples += 1
            largest = max(pending)
            if largest > 0:
                figures.backlog_nonzero += 1
                figures.backlog_max_bytes = max(figures.backlog_max_bytes, largest)
