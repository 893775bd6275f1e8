"""What a burst did to a server: drops, queue depth, per-phase latency, recovery time, verdicts.

:func:`analyze` turns a :class:`~pytest_gpuinfer.load.runner.LoadResult` of a
:class:`~pytest_gpuinfer.load.shapes.LoadShape` run into a :class:`BurstReport`:

* **Counts.** ``sent`` (requests dispatched), ``completed``, ``failed`` (an error answer or a broken
  stream), ``timed_out``; ``dropped`` = sent - completed (failed and timed out together).
* **Peak completed throughput**: the most requests completed in one timeline bucket, per second.
* **Queue depth** over time from the engine's own gauge (vLLM ``num_requests_waiting``, SGLang
  ``num_queue_reqs``, TGI ``queue_size``); when the target exposes none, the client's count of
  requests in flight, labelled as such.
* **Phases.** TTFT and E2E percentiles of the requests *scheduled* before, during and after the
  burst window.
* **Recovery time**, from the end of the burst until both (a) the queue is back at its baseline
  (the highest queue reading before the burst) and stays there, and (b) the latency of the
  requests arriving from then on is back within tolerance of the pre-burst p95: the p95 of every
  later request's latency (TTFT by default) is at most ``pre_p95 * (1 + p95_tolerance) +
  p95_slack_s``. ``None`` when the run ended before both held. When a figure it needs is
  missing (no queue readings after the burst, no completed request before it to take the
  pre-burst p95 from, no arrival after it), recovery is not measured and says why
  (``recovery_unmeasured``): it is never 0 s by default.
* **Timeline**: one row per second (bucket) with sent, completed, failed, in flight (client, at
  the end of the bucket), queue depth, running and KV usage (highest engine reading in the
  bucket) and the latency p95 of the requests scheduled in the bucket; as JSON and CSV.

Verdicts (:class:`BurstLimits`): at most ``allow_drops`` dropped requests (0 by default);
recovery under ``max_recovery_s`` (NOT JUDGED without that limit, when recovery could not be
measured, or when only the latency part missed the limit on a run the load engine's self-check
flagged as client-bound or on a busy machine: the engine's queue, which the client's delay
cannot touch, was back in time, so the slow latency may be the machine's); and, when set, queue
depth at most ``max_queue`` and preemptions (a delta over the run) at most ``max_preemptions``.
:meth:`BurstReport.check` raises :class:`BurstViolation` naming each failed verdict with the
timeline rows that broke it.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from pytest_gpuinfer.load.shapes import PHASES, LoadShape, Phase
from pytest_gpuinfer.metrics import stats
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.verdicts import (
    Unjudged,
    Verdict,
    all_passed,
    failures,
    judged,
    not_judged,
)

if TYPE_CHECKING:
    from pytest_gpuinfer.load.runner import LoadResult, LoadRunner
    from pytest_gpuinfer.load.workloads import Workload

LatencyMetric = Literal["ttft", "e2e"]


class BurstViolation(AssertionError):
    """A burst broke one of its verdicts; the message carries the timeline figures."""


@dataclass(frozen=True)
class BurstLimits:
    """What a burst must meet; ``None`` leaves a figure reported but unjudged."""

    allow_drops: int = 0
    max_recovery_s: float | None = None
    max_queue: float | None = None
    max_preemptions: float | None = None
    p95_tolerance: float = 0.5
    """Latency is recovered when p95 <= pre-burst p95 * (1 + tolerance) + slack."""
    p95_slack_s: float = 0.05
    latency: LatencyMetric = "ttft"
    recovery_source: str = "the burst marker or --burst"
    """Where ``max_recovery_s`` came from (shown with the recovery verdict)."""

    def __post_init__(self) -> None:
        """Reject limits that cannot be met or make no sense."""
        if self.allow_drops < 0:
            raise ValueError(f"allow_drops must be >= 0, not {self.allow_drops}")
        for name in ("max_recovery_s", "max_queue", "max_preemptions"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, not {value}")
        if self.p95_tolerance < 0 or self.p95_slack_s < 0:
            raise ValueError("p95_tolerance and p95_slack_s must be >= 0")
        if self.latency not in ("ttft", "e2e"):
            raise ValueError(f"latency must be 'ttft' or 'e2e', not {self.latency!r}")

    def updated(self, overrides: Mapping[str, Any]) -> BurstLimits:
        """These limits with ``overrides`` applied (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown burst limits {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **dict(overrides))


@dataclass(frozen=True)
class TimelineRow:
    """One bucket (a second by default) of a burst run."""

    t_s: float
    """Start of the bucket, seconds from the run start."""
    phase: Phase
    sent: int
    completed: int
    failed: int
    in_flight: int
    queue: float | None
    running: float | None
    kv_usage: float | None
    p95_s: float | None
    """Latency p95 of the requests scheduled in this bucket that completed."""

    def line(self) -> str:
        """The row as one aligned text line."""

        def num(value: float | None, digits: int = 0) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        return (
            f"{self.t_s:7.1f} {self.phase:<6} {self.sent:5d} {self.completed:5d} {self.failed:5d} "
            f"{self.in_flight:6d} {num(self.queue):>6} {num(self.running):>6} "
            f"{num(None if self.kv_usage is None else self.kv_usage * 100, 1):>6} "
            f"{num(None if self.p95_s is None else self.p95_s * 1e3, 1):>8}"
        )


TIMELINE_HEADER = "    t_s phase   sent  done  fail flight  queue    run   kv_%   p95_ms"


@dataclass(frozen=True)
class PhaseStats:
    """Counts and latency of the requests scheduled in one phase."""

    phase: Phase
    requests: int
    completed: int
    ttft: stats.Distribution
    e2e: stats.Distribution


@dataclass
class BurstReport:
    """Everything measured in one burst run, with its verdicts."""

    shape: LoadShape
    limits: BurstLimits
    sent: int
    completed: int
    failed: int
    timed_out: int
    errors: dict[str, int]
    peak_throughput_rps: float
    queue_source: str
    queue_label: str
    max_queue: float | None
    baseline_queue: float
    max_running: float | None
    max_kv_usage: float | None
    preemptions: float | None
    phases: dict[Phase, PhaseStats]
    pre_p95_s: float | None
    latency_limit_s: float | None
    queue_recovered_s: float | None
    """Seconds from the burst end until the queue was back at baseline for good."""
    latency_recovered_s: float | None
    """Seconds from the burst end until later arrivals' p95 was back within tolerance."""
    recovery_s: float | None
    recovery_unmeasured: str | None
    """Why recovery could not be measured (None when it was)."""
    noise: str | None
    """The self-check's reasons when the client or the machine limited the run (else None)."""
    timeline: list[TimelineRow]
    bucket_s: float
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        """Requests sent but not completed (failed or timed out)."""
        return self.sent - self.completed

    @property
    def passed(self) -> bool:
        """True when every verdict passed (a NOT JUDGED one is not a pass)."""
        return all_passed(self.verdicts)

    def headline(self) -> str:
        """The figures a reader wants first, on one line."""
        if self.recovery_unmeasured is not None:
            recovery = f"not measured ({self.recovery_unmeasured})"
        elif self.recovery_s is None:
            recovery = "not recovered by the end"
        else:
            recovery = f"{self.recovery_s:.2f} s"
        queue = "-" if self.max_queue is None else f"{self.max_queue:g}"
        preempt = "-" if self.preemptions is None else f"{self.preemptions:g}"
        return (
            f"{self.shape.name}: {self.completed}/{self.sent} completed, {self.dropped} dropped "
            f"({self.failed} failed, {self.timed_out} timed out); "
            f"peak {self.peak_throughput_rps:.1f} req/s completed; "
            f"max queue {queue} ({self.queue_source}); recovery {recovery}; "
            f"preemptions {preempt}"
        )

    def text(self) -> str:
        """Headline, per-phase latency, and the timeline table."""
        lines = [self.headline(), f"queue: {self.queue_label}"]
        for phase in PHASES:
            p = self.phases[phase]
            lines.append(
                f"  {phase:<6} {p.completed}/{p.requests} ok, TTFT p50/p95 "
                f"{_ms(p.ttft.p50)}/{_ms(p.ttft.p95)} ms, E2E p95 {_ms(p.e2e.p95)} ms"
            )
        lines.append(TIMELINE_HEADER)
        lines.extend(row.line() for row in self.timeline)
        return "\n".join(lines)

    def timeline_csv(self) -> str:
        """The timeline as CSV (one row per bucket), ready for plotting."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        names = [f.name for f in fields(TimelineRow)]
        writer.writerow(names)
        for row in self.timeline:
            writer.writerow(["" if getattr(row, n) is None else getattr(row, n) for n in names])
        return out.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (NaN written as null)."""
        return _finite(
            {
                "shape": self.shape.to_dict(),
                "limits": asdict(self.limits),
                "sent": self.sent,
                "completed": self.completed,
                "failed": self.failed,
                "timed_out": self.timed_out,
                "dropped": self.dropped,
                "errors": self.errors,
                "peak_throughput_rps": self.peak_throughput_rps,
                "queue_source": self.queue_source,
                "queue_label": self.queue_label,
                "max_queue": self.max_queue,
                "baseline_queue": self.baseline_queue,
                "max_running": self.max_running,
                "max_kv_usage": self.max_kv_usage,
                "preemptions": self.preemptions,
                "pre_p95_s": self.pre_p95_s,
                "latency_limit_s": self.latency_limit_s,
                "queue_recovered_s": self.queue_recovered_s,
                "latency_recovered_s": self.latency_recovered_s,
                "recovery_s": self.recovery_s,
                "recovery_unmeasured": self.recovery_unmeasured,
                "noise": self.noise,
                "phases": {
                    name: {
                        "requests": p.requests,
                        "completed": p.completed,
                        "ttft": p.ttft.to_dict(),
                        "e2e": p.e2e.to_dict(),
                    }
                    for name, p in self.phases.items()
                },
                "bucket_s": self.bucket_s,
                "timeline": [asdict(row) for row in self.timeline],
                "verdicts": [v.to_dict() for v in self.verdicts],
                "passed": self.passed,
            }
        )

    def check(self) -> BurstReport:
        """Raise :class:`BurstViolation` naming every failed verdict and its timeline figures."""
        __tracebackhide__ = True
        failed = failures(self.verdicts)
        if failed:
            lines = [
                f"burst {self.shape.name!r} failed {len(failed)} of {len(self.verdicts)} checks:"
            ]
            lines += [f"  {v.name}: {v.message}" for v in failed]
            lines += ["", self.text()]
            raise BurstViolation("\n".join(lines))
        return self


def _ms(seconds: float) -> str:
    """Seconds as milliseconds text, '-' for NaN."""
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def _finite(value: Any) -> Any:
    """The same structure with NaN and infinities replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _latency(record: RequestRecord, metric: LatencyMetric) -> float | None:
    """Latency of a completed request from its scheduled time (None if it did not complete)."""
    if not record.ok:
        return None
    end = record.first_token if metric == "ttft" else record.end
    if end is None:
        end = record.end
    return None if end is None else end - record.scheduled


def _p95(values: list[float]) -> float | None:
    """The 95th percentile (None without values)."""
    if not values:
        return None
    return stats.distribution(values).p95


def run_start(records: list[RequestRecord], shape: LoadShape) -> float:
    """The run's start (perf_counter) recovered from the records and the shape's arrivals."""
    arrivals = shape.schedule.arrival_times(max_requests=max(r.index for r in records) + 1)
    starts = [r.scheduled - arrivals[r.index] for r in records if r.index < len(arrivals)]
    if not starts:
        return min(r.scheduled for r in records)
    return statistics.median(starts)


def _max_in(series: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Highest value with start <= t < end (None without readings there)."""
    values = [v for t, v in series if start <= t < end]
    return max(values) if values else None


def _queue_recovered_at(
    series: list[tuple[float, float]], burst_end: float, baseline: float
) -> float | None:
    """First time at or after the burst end from which the queue stays <= baseline (None when
    it never did; call only with readings after the burst end)."""
    after = [(t, v) for t, v in series if t >= burst_end]
    at: float | None = burst_end
    for t, v in after:
        if v > baseline:
            at = None
        elif at is None:
            at = t
    return at


def _latency_recovered_at(
    records: list[RequestRecord], metric: LatencyMetric, burst_end: float, limit: float
) -> float | None:
    """Earliest arrival after the burst end from which the p95 of all later latencies <= limit
    (None when it never was; call only with arrivals after the burst end)."""
    later = sorted((r for r in records if r.scheduled >= burst_end), key=lambda r: r.scheduled)
    window: list[float] = []
    recovered_at: float | None = None
    for record in reversed(later):
        latency = _latency(record, metric)
        bisect.insort(window, math.inf if latency is None else latency)
        index = min(len(window) - 1, math.ceil(0.95 * len(window)) - 1)
        if window[index] <= limit:
            recovered_at = record.scheduled
    if recovered_at is None:
        return None
    return burst_end if recovered_at == later[0].scheduled else recovered_at


def analyze(
    result: LoadResult,
    shape: LoadShape,
    limits: BurstLimits | None = None,
    *,
    bucket_s: float = 1.0,
) -> BurstReport:
    """Measure a burst run of ``shape`` and judge it against ``limits``."""
    limits = limits or BurstLimits()
    records = result.require_records(f"burst {shape.name!r} analysis")
    if not records:
        raise ValueError(f"burst {shape.name!r}: the run sent no requests")
    t0 = run_start(records, shape)
    burst_start, burst_end = t0 + shape.burst_start_s, t0 + shape.burst_end_s
    completed = sum(1 for r in records if r.ok)
    timed_out = sum(1 for r in records if r.error == "timeout")
    errors: dict[str, int] = {}
    for record in records:
        if not record.ok:
            key = record.error or "unfinished"
            errors[key] = errors.get(key, 0) + 1
    failed = len(records) - completed - timed_out

    gauges = result.gauges
    queue_series = gauges.queue() if gauges is not None else []
    running_series = gauges.values("running") if gauges and gauges.source == "engine" else []
    kv_series = gauges.values("kv_cache_usage") if gauges is not None else []
    queue_source = gauges.source if gauges is not None else "none"
    queue_label = gauges.queue_label if gauges is not None else "no gauges sampled"
    baseline_queue = _max_in(queue_series, -math.inf, burst_start) or 0.0

    phases: dict[Phase, PhaseStats] = {}
    for phase in PHASES:
        members = [r for r in records if shape.phase_of(r.scheduled - t0) == phase]
        ttfts = [v for r in members if (v := _latency(r, "ttft")) is not None]
        e2es = [v for r in members if (v := _latency(r, "e2e")) is not None]
        phases[phase] = PhaseStats(
            phase,
            len(members),
            sum(1 for r in members if r.ok),
            stats.distribution(ttfts),
            stats.distribution(e2es),
        )
    before = phases["before"].ttft if limits.latency == "ttft" else phases["before"].e2e
    pre_p95 = None if before.count == 0 else before.p95
    latency_limit = (
        None if pre_p95 is None else pre_p95 * (1 + limits.p95_tolerance) + limits.p95_slack_s
    )
    missing = []
    if not any(t >= burst_end for t, _ in queue_series):
        missing.append("no queue readings after the burst")
    if latency_limit is None:
        missing.append(f"no completed request before the burst to take the {limits.latency} p95")
    if not any(r.scheduled >= burst_end for r in records):
        missing.append("no arrival after the burst")
    queue_recovered = latency_recovered = recovery = None
    if not missing:
        assert latency_limit is not None
        queue_at = _queue_recovered_at(queue_series, burst_end, baseline_queue)
        latency_at = _latency_recovered_at(records, limits.latency, burst_end, latency_limit)
        queue_recovered = None if queue_at is None else max(0.0, queue_at - burst_end)
        latency_recovered = None if latency_at is None else max(0.0, latency_at - burst_end)
        if queue_recovered is not None and latency_recovered is not None:
            recovery = max(queue_recovered, latency_recovered)

    timeline = _timeline(
        records,
        shape,
        t0,
        bucket_s,
        limits.latency,
        gauges_of=(queue_series, running_series, kv_series),
    )
    peak = max((row.completed for row in timeline), default=0) / bucket_s
    preemptions = gauges.preemptions_delta() if gauges is not None else None
    report = BurstReport(
        shape=shape,
        limits=limits,
        sent=len(records),
        completed=completed,
        failed=failed,
        timed_out=timed_out,
        errors=errors,
        peak_throughput_rps=peak,
        queue_source=queue_source,
        queue_label=queue_label,
        max_queue=max((v for _, v in queue_series), default=None),
        baseline_queue=baseline_queue,
        max_running=max((v for _, v in running_series), default=None),
        max_kv_usage=max((v for _, v in kv_series), default=None),
        preemptions=preemptions,
        phases=phases,
        pre_p95_s=pre_p95,
        latency_limit_s=latency_limit,
        queue_recovered_s=queue_recovered,
        latency_recovered_s=latency_recovered,
        recovery_s=recovery,
        recovery_unmeasured="; ".join(missing) or None,
        noise="; ".join(result.self_check.reasons) if result.client_bound else None,
        timeline=timeline,
        bucket_s=bucket_s,
    )
    report.verdicts = _verdicts(report)
    return report


def _timeline(
    records: list[RequestRecord],
    shape: LoadShape,
    t0: float,
    bucket_s: float,
    metric: LatencyMetric,
    *,
    gauges_of: tuple[list[tuple[float, float]], ...],
) -> list[TimelineRow]:
    """One row per bucket from the run start to the last event."""
    queue_series, running_series, kv_series = gauges_of
    ends = [r.end for r in records if r.end is not None]
    last = max([shape.duration_s + t0, *ends, *(t for t, _ in queue_series)])
    sent_times = sorted(r.sent for r in records if r.sent is not None)
    end_times = sorted(r.end for r in records if r.sent is not None and r.end is not None)
    buckets = max(1, math.ceil((last - t0) / bucket_s))
    rows = []
    for i in range(buckets):
        start, stop = t0 + i * bucket_s, t0 + (i + 1) * bucket_s
        scheduled = [r for r in records if start <= r.scheduled < stop]
        ended = [r for r in records if r.end is not None and start <= r.end < stop]
        latencies = [v for r in scheduled if (v := _latency(r, metric)) is not None]
        in_flight = bisect.bisect_right(sent_times, stop) - bisect.bisect_right(end_times, stop)
        rows.append(
            TimelineRow(
                t_s=round(i * bucket_s, 6),
                phase=shape.phase_of(i * bucket_s),
                sent=len(scheduled),
                completed=sum(1 for r in ended if r.ok),
                failed=sum(1 for r in ended if not r.ok),
                in_flight=in_flight,
                queue=_max_in(queue_series, start, stop),
                running=_max_in(running_series, start, stop),
                kv_usage=_max_in(kv_series, start, stop),
                p95_s=_p95(latencies),
            )
        )
    return rows


def _rows_where(report: BurstReport, keep: Iterable[bool]) -> str:
    """The timeline rows selected by ``keep``, under the header."""
    chosen = [row.line() for row, wanted in zip(report.timeline, keep, strict=False) if wanted]
    return "\n".join(["    " + TIMELINE_HEADER, *("    " + line for line in chosen)])


def _verdicts(report: BurstReport) -> list[Verdict]:
    """Judge the report against its limits."""
    limits = report.limits
    out = []
    errors = ", ".join(f"{count} {kind}" for kind, count in sorted(report.errors.items()))
    passed = report.dropped <= limits.allow_drops
    message = (
        f"{report.dropped} of {report.sent} requests dropped "
        f"({report.failed} failed, {report.timed_out} timed out"
        + (f"; {errors}" if errors else "")
        + f"), allowed {limits.allow_drops}"
    )
    if not passed:
        message += "; seconds with failures:\n" + _rows_where(
            report, (row.failed > 0 for row in report.timeline)
        )
    out.append(
        judged(
            "drops",
            passed,
            message,
            measured=report.dropped,
            limit=limits.allow_drops,
            unit="requests",
            source="BurstLimits.allow_drops (the burst marker, --burst, default 0)",
            count=report.sent,
        )
    )
    out.append(_recovery_verdict(report))
    if limits.max_queue is not None:
        peak = report.max_queue
        passed = peak is not None and peak <= limits.max_queue
        message = (
            f"max {'-' if peak is None else f'{peak:g}'} "
            f"(limit {limits.max_queue:g}; {report.queue_label})"
        )
        if not passed:
            limit = limits.max_queue
            message += "; seconds over the limit:\n" + _rows_where(
                report, (row.queue is not None and row.queue > limit for row in report.timeline)
            )
        out.append(
            judged(
                "queue",
                passed,
                message,
                measured=peak,
                limit=limits.max_queue,
                unit="requests",
                source="BurstLimits.max_queue (the burst marker or --burst)",
            )
        )
    if limits.max_preemptions is not None:
        delta = report.preemptions
        passed = delta is not None and delta <= limits.max_preemptions
        out.append(
            judged(
                "preemptions",
                passed,
                f"{'not exposed' if delta is None else f'{delta:g}'} during the run"
                f" (limit {limits.max_preemptions:g})",
                measured=delta,
                limit=limits.max_preemptions,
                unit="preemptions",
                source="BurstLimits.max_preemptions (the burst marker or --burst)",
            )
        )
    return out


def _recovery_verdict(report: BurstReport) -> Verdict:
    """Recovery against max_recovery_s; NOT JUDGED without a limit or without the data."""
    limits = report.limits
    source = f"max_recovery_s: {limits.recovery_source}"
    limit = limits.max_recovery_s
    if report.recovery_unmeasured is not None:
        reason = Unjudged.NO_DATA if limit is not None else Unjudged.NO_LIMIT
        return not_judged(
            "recovery",
            reason,
            f"not measured: {report.recovery_unmeasured}"
            + ("" if limit is not None else "; and no max_recovery_s to judge it by"),
            limit=limit,
            unit="s",
            source=source if limit is not None else "",
        )
    recovery = report.recovery_s
    why = (
        f"queue back at baseline ({report.baseline_queue:g}) "
        f"{_seconds(report.queue_recovered_s)} after the burst, latency p95 within "
        f"{_ms(report.latency_limit_s or math.nan)} ms {_seconds(report.latency_recovered_s)}"
        " after it"
    )
    if limit is None:
        return not_judged(
            "recovery",
            Unjudged.NO_LIMIT,
            f"{_seconds(recovery)}: {why}; no max_recovery_s to judge it by",
            measured=recovery,
            unit="s",
        )
    passed = recovery is not None and recovery <= limit
    message = f"{_seconds(recovery)} (limit {limit:g} s): {why}"
    queue_late = report.queue_source == "engine" and (
        report.queue_recovered_s is None or report.queue_recovered_s > limit
    )
    if not passed and report.noise is not None and not queue_late:
        return not_judged(
            "recovery",
            Unjudged.NOISY,
            f"{message}; the engine's queue was back in time, and the load engine's self-check "
            f"flagged the run ({report.noise}): the slow latency may be the machine's; rerun "
            "longer or on a quieter machine",
            measured=recovery,
            limit=limit,
            unit="s",
            source=source,
        )
    if not passed:
        burst_end = report.shape.burst_end_s
        message += "; timeline from the burst end:\n" + _rows_where(
            report, (row.t_s + report.bucket_s > burst_end for row in report.timeline)
        )
    return judged(
        "recovery",
        passed,
        message,
        measured=recovery,
        limit=limit,
        unit="s",
        source=source,
    )


def _seconds(value: float | None) -> str:
    """A duration in seconds, or 'never (within the run)'."""
    return "never (within the run)" if value is None else f"{value:.2f} s"


def measure_capacity(
    runner: LoadRunner,
    workload: Workload,
    *,
    concurrency: int = 8,
    duration_s: float = 3.0,
    max_requests: int = 2000,
) -> float:
    """Completed requests per second at ``concurrency`` (closed loop), to size a baseline rate."""
    from pytest_gpuinfer.load.runner import Limits
    from pytest_gpuinfer.load.schedule import ClosedLoop

    result = runner.run(
        ClosedLoop(concurrency), workload, Limits(requests=max_requests, duration_s=duration_s)
    )
    if result.summary.completed == 0:
        raise RuntimeError(
            f"capacity run completed no request ({result.summary.failed} failed) against {runner!r}"
        )
    return float(result.summary.request_throughput)
