"""Soak: steady load for a long time, memory and latency sampled throughout, verdicts on drift.

The run is cut into windows; each window is one load run whose records are summarised and then
dropped, so the client holds one window's records at a time whatever the duration. The server's
memory is sampled all along by a :class:`~pytest_gpuinfer.memory.tracker.MemoryTracker`.

Verdicts (:class:`~pytest_gpuinfer.metrics.verdicts.Verdict`; each can be NOT JUDGED, never a
pass):

* **memory drift**: the growth the least-squares slope of the server's memory implies over the
  run after the warm-up share (slope x span) at most ``max_memory_mb_per_h`` for the span, and
  never less than ``noise_floor_mb`` (a short run's RSS noise is not a leak); judged once the
  samples span ``min_span_s``. An hour at the default limits: 100 MB; two minutes: 50 MB.
* **latency drift**: TTFT p95 of the last window at most ``(1 + p95_growth)`` times the first
  window's (after warm-up) plus ``p95_slack_s``; judged with two windows of ``min_window_requests``
  successful requests each. Where the load engine's self-check flagged a window, its own delay
  (loop-lag p99 plus dispatch-slip p99) may be in that window's TTFT, so the verdict passes only
  if the last window is under the limit taken from the first window less that delay, fails only
  if the last window less its delay is over the limit taken from the first, and is NOT JUDGED
  (too noisy) in between, naming the delays.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_gpuinfer.load.result import LoadResult
from pytest_gpuinfer.load.selfcheck import SelfCheck
from pytest_gpuinfer.memory.tracker import MB, MemoryTracker, least_squares_slope
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.stats import distribution
from pytest_gpuinfer.metrics.verdicts import Unjudged, Verdict, judged, not_judged


def parse_duration(text: str) -> float:
    """Seconds in ``1h``, ``30m``, ``90s``, ``1h30m`` or a plain number of seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    rest = text.strip().lower()
    try:
        return float(rest)
    except ValueError:
        pass
    total = 0.0
    number = ""
    for char in rest:
        if char.isdigit() or char == ".":
            number += char
        elif char in units and number:
            total += float(number) * units[char]
            number = ""
        else:
            raise ValueError(f"{text!r} is not a duration like 1h, 30m, 90s or 1h30m")
    if number or total <= 0:
        raise ValueError(f"{text!r} is not a duration like 1h, 30m, 90s or 1h30m")
    return total


@dataclass(frozen=True)
class SoakLimits:
    """The drift limits, and how much evidence a verdict needs."""

    max_memory_mb_per_h: float = 100.0
    noise_floor_mb: float = 50.0
    p95_growth: float = 0.5
    p95_slack_s: float = 0.05
    warmup_share: float = 0.1
    min_span_s: float = 30.0
    min_window_requests: int = 20


@dataclass(frozen=True)
class WindowStats:
    """One window of the soak: when it started, what completed, its latency percentiles."""

    start_s: float
    requests: int
    failed: int
    ttft_p95_s: float | None
    e2e_p95_s: float | None
    client_delay_s: float = 0.0
    """The load engine's own delay that may be in the window's latencies when its self-check
    flagged the window (loop-lag p99 plus dispatch-slip p99); 0 when the client kept up."""
    self_check: str = ""
    """Why the self-check flagged the window, in its words ("" when it did not)."""


@dataclass
class SoakResult:
    """What a soak measured and its verdicts."""

    duration_s: float
    windows: list[WindowStats]
    memory: list[tuple[float, float]]
    """(seconds since the start, MB) samples of the server's memory."""
    memory_slope_mb_per_h: float | None
    verdicts: list[Verdict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for reports."""
        return {
            "duration_s": self.duration_s,
            "windows": [asdict(w) for w in self.windows],
            "memory_mb": self.memory,
            "memory_slope_mb_per_h": self.memory_slope_mb_per_h,
            "verdicts": [v.to_dict() for v in self.verdicts],
        }


def window_stats(
    start_s: float, records: Sequence[RequestRecord], check: SelfCheck | None = None
) -> WindowStats:
    """Counts and p95 TTFT/E2E (from the scheduled time) of one window's records, and the
    client's own delay where the window's self-check ``check`` flagged it."""
    delay = 0.0
    if check is not None and check.client_bound:
        delay = sum(v for v in (check.loop_lag.p99, check.dispatch_slip.p99) if math.isfinite(v))
    ok = [r for r in records if r.ok]
    ttft = [r.first_token - r.scheduled for r in ok if r.first_token is not None]
    e2e = [r.end - r.scheduled for r in ok if r.end is not None]
    return WindowStats(
        start_s,
        len(records),
        len(records) - len(ok),
        distribution(ttft).percentile(95) if ttft else None,
        distribution(e2e).percentile(95) if e2e else None,
        client_delay_s=delay,
        self_check="; ".join(check.reasons) if check is not None else "",
    )


MEMORY_SOURCE = "soak default: 100 MB/h of the span, at least 50 MB (a short run's RSS noise)"
LATENCY_SOURCE = "soak default: last window's TTFT p95 within +50% + 50 ms of the first's"


def judge_memory(
    points: Sequence[tuple[float, float]], duration_s: float, limits: SoakLimits
) -> tuple[Verdict, float | None]:
    """The memory-drift verdict and the slope (MB/h) after the warm-up."""
    after = [(t, mb) for t, mb in points if t >= duration_s * limits.warmup_share]
    span = after[-1][0] - after[0][0] if len(after) >= 2 else 0.0
    if len(after) < 3 or span < limits.min_span_s:
        message = (
            f"{len(after)} samples over {span:.0f} s after warm-up; needs {limits.min_span_s:.0f} s"
        )
        reason = Unjudged.TOO_FEW_SAMPLES if points else Unjudged.NO_DATA
        return not_judged("memory drift", reason, message, count=len(after)), None
    slope = least_squares_slope([t for t, _ in after], [mb for _, mb in after]) * 3600
    growth = slope * span / 3600
    allowed = max(limits.noise_floor_mb, limits.max_memory_mb_per_h * span / 3600)
    message = (
        f"slope {slope:+.1f} MB/h over {span:.0f} s ({len(after)} samples, "
        f"{after[0][1]:.0f} -> {after[-1][1]:.0f} MB): {growth:+.1f} MB; limit {allowed:.0f} MB "
        f"({limits.max_memory_mb_per_h:g} MB/h, at least {limits.noise_floor_mb:g} MB)"
    )
    verdict = judged(
        "memory drift",
        growth <= allowed,
        message,
        measured=growth,
        limit=allowed,
        unit="MB",
        source=MEMORY_SOURCE,
        count=len(after),
    )
    return verdict, slope


def judge_latency(windows: Sequence[WindowStats], limits: SoakLimits) -> Verdict:
    """The latency-drift verdict: last window's TTFT p95 against the first after warm-up."""
    usable = [
        w
        for w in windows[1:] or windows  # the first window is the warm-up when there are more
        if w.ttft_p95_s is not None and w.requests - w.failed >= limits.min_window_requests
    ]
    if len(usable) < 2:
        return not_judged(
            "latency drift",
            Unjudged.TOO_FEW_SAMPLES,
            f"{len(usable)} window(s) with {limits.min_window_requests}+ successful requests; "
            "needs 2",
        )
    first, last = usable[0], usable[-1]
    assert first.ttft_p95_s is not None and last.ttft_p95_s is not None
    growth, slack = 1 + limits.p95_growth, limits.p95_slack_s
    limit = first.ttft_p95_s * growth + slack
    # The client's own delay may be in either window's TTFT: the server passes for certain only
    # under the limit of the first window less its delay, fails for certain only when the last
    # window less its delay is still over the limit.
    pass_limit = max(0.0, first.ttft_p95_s - first.client_delay_s) * growth + slack
    last_floor = last.ttft_p95_s - last.client_delay_s
    message = (
        f"TTFT p95 {first.ttft_p95_s * 1000:.1f} ms at {first.start_s:.0f} s -> "
        f"{last.ttft_p95_s * 1000:.1f} ms at {last.start_s:.0f} s; limit {limit * 1000:.1f} ms "
        f"(+{limits.p95_growth:.0%} + {slack * 1000:.0f} ms)"
    )
    delays = [
        f"{w.client_delay_s * 1000:.1f} ms at {w.start_s:.0f} s ({w.self_check})"
        for w in (first, last)
        if w.client_delay_s > 0
    ]
    if delays:
        message += (
            "; the load engine's own delay (loop-lag p99 + dispatch-slip p99, its self-check "
            "flagged the window) may be in the TTFT: " + "; ".join(delays)
        )
        if first.client_delay_s > 0:
            message += f"; limit to pass {pass_limit * 1000:.1f} ms (the first window less it)"
    if last.ttft_p95_s > pass_limit and last_floor <= limit:
        return not_judged(
            "latency drift",
            Unjudged.NOISY,
            message + f"; passing needs {pass_limit * 1000:.1f} ms or less, failing more than "
            f"{limit * 1000:.1f} ms without that delay: the client's delay could explain it",
            measured=last.ttft_p95_s,
            limit=limit,
            unit="s",
            source=LATENCY_SOURCE,
            count=last.requests - last.failed,
        )
    passed = last.ttft_p95_s <= pass_limit
    return judged(
        "latency drift",
        passed,
        message,
        measured=last.ttft_p95_s,
        limit=pass_limit if passed else limit,
        unit="s",
        source=LATENCY_SOURCE,
        count=last.requests - last.failed,
    )


def run_soak(
    run_window: Callable[[float], LoadResult],
    *,
    duration_s: float,
    window_s: float,
    tracker: MemoryTracker | None = None,
    limits: SoakLimits | None = None,
    on_window: Callable[[WindowStats], None] | None = None,
) -> SoakResult:
    """Run ``run_window(seconds)`` (one load run) back to back for ``duration_s``; sample,
    summarise, judge."""
    limits = limits or SoakLimits()
    started = time.monotonic()
    windows: list[WindowStats] = []
    while (elapsed := time.monotonic() - started) < duration_s - 1.0:
        run = run_window(min(window_s, duration_s - elapsed))
        stats = window_stats(elapsed, run.records, run.self_check)
        windows.append(stats)
        if on_window is not None:
            on_window(stats)
    total = time.monotonic() - started
    points = (
        [(s.t - started, s.total_bytes / MB) for s in tracker.samples if s.t >= started]
        if tracker is not None
        else []
    )
    memory_verdict, slope = judge_memory(points, total, limits)
    if tracker is None:
        memory_verdict = not_judged("memory drift", Unjudged.NO_DATA, "no memory source to sample")
    result = SoakResult(total, windows, points, slope)
    result.verdicts = [memory_verdict, judge_latency(windows, limits)]
    return result
