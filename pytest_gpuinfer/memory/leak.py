"""Leak verdicts: memory growth over a test, and growth and trend over K batches of work.

Two questions, two verdicts. *Total*: after the target settled, did memory end more than
``max_growth_mb`` above where it started? *Trend*: does a least-squares line through the
memory after each batch climb faster than ``max_slope_mb_per_batch``? A one-off step (a cache
filling once) fails neither if it is small; steady creep fails the trend even before the total.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pytest_gpuinfer.memory.tracker import MB, MemoryTracker, PhaseStats, least_squares_slope

DEFAULT_GPU_MAX_GROWTH_MB = 500.0
"""Default total growth allowed across a multi-batch run on a GPU (0.5 GB)."""

DEFAULT_CPU_MAX_GROWTH_MB = 200.0
"""Default total growth of vLLM-CPU's process-tree RSS across a multi-batch run.

Measured here (docs/memory.md): after a warm-up batch, 6 batches of 16 requests moved the RSS of
the three vLLM processes by a few MB per batch with single steps up to a few tens of MB (the
allocator and prompt caches); 200 MB is several times that noise and far below a real per-request
leak, which adds up over hundreds of requests.
"""


@dataclass(frozen=True)
class LeakVerdict:
    """The outcome of a leak check, with everything a failure message needs."""

    passed: bool
    growth_bytes: int
    max_growth_bytes: int
    slope_mb_per_unit: float
    max_slope_mb_per_unit: float | None
    unit: str
    reasons: tuple[str, ...]
    source: str
    timeline: str
    phases: tuple[PhaseStats, ...] = ()
    waited_s: float = 0.0

    def message(self) -> str:
        """The whole story: verdict, figures, per-batch table, timeline."""
        head = "memory leak check " + ("passed" if self.passed else "FAILED")
        lines = [
            f"{head}: {'; '.join(self.reasons) if self.reasons else 'within limits'}",
            f"source: {self.source}",
            f"growth {self.growth_bytes / MB:+.1f} MB (limit {self.max_growth_bytes / MB:.0f} MB), "
            f"slope {self.slope_mb_per_unit:+.3f} MB/{self.unit}"
            + (
                f" (limit {self.max_slope_mb_per_unit:.3f})"
                if self.max_slope_mb_per_unit is not None
                else ""
            )
            + (f", waited {self.waited_s:.1f} s for late release" if self.waited_s else ""),
        ]
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
    since: float | None = None,
) -> LeakVerdict:
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
    slope = tracker.slope_mb_per_s(start=since if since is not None else float("-inf"))
    reasons = []
    if growth > limit:
        if tracker.gone is not None:
            reasons.append(f"judged on the last samples before the end: {tracker.gone}")
        reasons.append(
            f"memory grew {growth / MB:+.1f} MB, over the {max_growth_mb:.0f} MB limit, "
            f"and was not released within {release_timeout_s:.0f} s"
        )
    return LeakVerdict(
        passed=not reasons,
        growth_bytes=growth,
        max_growth_bytes=limit,
        slope_mb_per_unit=slope,
        max_slope_mb_per_unit=None,
        unit="s",
        reasons=tuple(reasons),
        source=tracker.source.describe(),
        timeline=tracker.format_timeline(),
        waited_s=waited,
    )


def judge_batches(
    tracker: MemoryTracker,
    phases: Sequence[PhaseStats],
    *,
    max_growth_mb: float,
    max_slope_mb_per_batch: float | None = None,
) -> LeakVerdict:
    """Total delta (first batch's before to last batch's after) and trend of per-batch afters."""
    if not phases:
        raise ValueError("judge_batches needs at least one batch")
    growth = phases[-1].after_bytes - phases[0].before_bytes
    limit = int(max_growth_mb * MB)
    slope_limit = (
        max_slope_mb_per_batch if max_slope_mb_per_batch is not None else max_growth_mb / 10.0
    )
    afters = [p.after_bytes / MB for p in phases]
    slope = least_squares_slope(list(range(len(afters))), afters)
    reasons = []
    if growth > limit:
        reasons.append(
            f"total delta {growth / MB:+.1f} MB over {len(phases)} batches exceeds "
            f"{max_growth_mb:.0f} MB"
        )
    rising = sum(1 for p in phases if p.delta_bytes > 0)
    if len(phases) >= 3 and slope > slope_limit and rising >= (len(phases) + 1) // 2:
        reasons.append(
            f"memory climbs {slope:+.1f} MB per batch (least squares over {len(phases)} "
            f"batches, {rising} rising), over the {slope_limit:.1f} MB/batch trend limit"
        )
    return LeakVerdict(
        passed=not reasons,
        growth_bytes=growth,
        max_growth_bytes=limit,
        slope_mb_per_unit=slope,
        max_slope_mb_per_unit=slope_limit,
        unit="batch",
        reasons=tuple(reasons),
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
