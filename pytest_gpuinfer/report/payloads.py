"""Payloads for each report kind, from the objects the suites produce.

Each function returns plain JSON data; the report's JSON Schema (schema.json) describes them.
Latency samples are kept per completed request (warm-up excluded, like the summary) so the HTML
page can draw CDFs and histograms; above :data:`MAX_SAMPLES` they are thinned evenly over the
sorted values, which keeps the shape of the distribution (the summary's percentiles and counts
are always computed from every sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_gpuinfer.load.bursts import BurstReport
from pytest_gpuinfer.load.runner import LoadResult
from pytest_gpuinfer.memory.boundary import BoundaryResult
from pytest_gpuinfer.memory.leak import LeakCheck
from pytest_gpuinfer.memory.tracker import MB, MemoryTracker
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.stats import request_latencies, request_samples
from pytest_gpuinfer.metrics.verdicts import Verdict
from pytest_gpuinfer.perf.baselines import RegressionReport
from pytest_gpuinfer.report.jsonable import jsonable

MAX_SAMPLES = 2000
"""Most latency samples kept per metric and run in the report."""

MAX_MEMORY_POINTS = 2000
"""Most memory samples kept per tracker in the report."""


def thin(values: Sequence[float], limit: int = MAX_SAMPLES) -> list[float]:
    """At most ``limit`` of ``values``, sorted, taken evenly (first and last always kept)."""
    ordered = sorted(values)
    if len(ordered) <= limit:
        return [round(v, 7) for v in ordered]
    step = (len(ordered) - 1) / (limit - 1)
    return [round(ordered[round(i * step)], 7) for i in range(limit)]


def _measured(records: Sequence[RequestRecord], warmup_s: float | None) -> list[RequestRecord]:
    """The records the summary counts: those scheduled after the warm-up."""
    if not records or not warmup_s:
        return list(records)
    start = min(r.scheduled for r in records)
    return [r for r in records if r.scheduled >= start + warmup_s]


def latency_samples(
    records: Sequence[RequestRecord], warmup_s: float | None = None
) -> dict[str, Any]:
    """Per-request TTFT, TPOT, E2E, queue and per-token ITL samples (seconds), thinned."""
    measured = _measured(records, warmup_s)
    columns: dict[str, list[float]] = {"ttft": [], "tpot": [], "e2e": [], "queue": []}
    itl: list[float] = []
    for record in measured:
        latencies = request_latencies(record)
        if latencies is None:
            continue
        for name in columns:
            value = getattr(latencies, name)
            if value is not None:
                columns[name].append(value)
        itl.extend(request_samples(record, "itl_token"))
    columns["itl_token"] = itl
    return {
        "unit": "s",
        "counts": {name: len(values) for name, values in columns.items()},
        "values": {name: thin(values) for name, values in columns.items()},
    }


def load_payload(result: LoadResult) -> dict[str, Any]:
    """A load run: its config, summary (percentiles with counts), self-check, gauges, verdicts
    and latency samples; the per-request records stay in the per-run files."""
    out: dict[str, Any] = jsonable(result.to_dict(include_records=False))
    out["client_bound"] = result.client_bound
    if result.streamed is None:
        out["samples"] = latency_samples(result.records, result.config.get("warmup_s"))
    else:  # a streamed run kept no samples: its sketches' quantiles draw the same curves
        summary = result.summary
        dists = {name: getattr(summary, name) for name in ("ttft", "tpot", "e2e", "queue")}
        dists["itl_token"] = summary.itl_token
        out["samples"] = {
            "unit": "s",
            "counts": {name: d.count for name, d in dists.items()},
            "values": {
                name: [round(v, 7) for v in d.spread(MAX_SAMPLES)] for name, d in dists.items()
            },
            "estimated": "t-digest quantiles",
        }
    return out


def burst_payload(report: BurstReport, load_scale: float | None = None) -> dict[str, Any]:
    """A burst run: shape, phases, per-second timeline (throughput, queue, p95), verdicts."""
    out: dict[str, Any] = jsonable(report.to_dict())
    out["headline"] = report.headline()
    out["load_scale"] = load_scale
    return out


def memory_payload(tracker: MemoryTracker, verdict: LeakCheck | None = None) -> dict[str, Any]:
    """A memory timeline (seconds from its first sample, MB), its phases and leak verdict."""
    samples = tracker.samples
    t0 = samples[0].t if samples else 0.0
    step = max(1, -(-len(samples) // MAX_MEMORY_POINTS))
    chosen = samples[::step]
    if samples and chosen[-1] is not samples[-1]:
        chosen.append(samples[-1])
    out: dict[str, Any] = {
        "source": tracker.source.describe(),
        "memory_kind": tracker.source.kind,
        "interval_s": tracker.interval_s,
        "sample_count": len(samples),
        "baseline_mb": None if tracker.baseline_bytes is None else tracker.baseline_bytes / MB,
        "baseline_t_s": None if tracker.baseline_at is None else tracker.baseline_at - t0,
        "peak_mb": max((s.total_bytes for s in samples), default=0) / MB,
        "timeline": [[round(s.t - t0, 3), round(s.total_bytes / MB, 3)] for s in chosen],
        "phases": [
            {
                "label": p.label,
                "start_s": p.start - t0,
                "end_s": p.end - t0,
                "before_mb": p.before_bytes / MB,
                "after_mb": p.after_bytes / MB,
                "peak_mb": p.peak_bytes / MB,
            }
            for p in tracker.phases
        ],
        "errors": tracker.errors,
        "gone": tracker.gone,
        "leak": None,
    }
    if verdict is not None:
        out["leak"] = {
            "passed": verdict.passed,
            "growth_mb": verdict.growth_bytes / MB,
            "max_growth_mb": verdict.max_growth_bytes / MB,
            "per_unit_mb": verdict.per_unit_mb,
            "unit": verdict.unit,
            "reasons": list(verdict.reasons),
            "verdicts": [v.to_dict() for v in verdict.verdicts],
        }
    return jsonable(out)


def boundary_payload(result: BoundaryResult, verdicts: Sequence[Verdict] = ()) -> dict[str, Any]:
    """An OOM/limit boundary search: safe value, first failure and its class, every probe, and
    the verdicts judged on it (the failure class it was named for)."""
    failure = result.first_failure
    return jsonable(
        {
            "verdicts": [v.to_dict() for v in verdicts],
            "dimension": result.dimension,
            "start": result.start,
            "max_value": result.max_value,
            "safe_value": result.safe_value,
            "first_failure": None
            if failure is None
            else {"value": failure.value, "outcome": failure.outcome.value},
            "exact": result.exact,
            "recoverable": result.recoverable,
            "stopped_reason": result.stopped_reason,
            "probes": [
                {
                    "value": p.value,
                    "outcome": p.outcome.value,
                    "seconds": p.seconds,
                    "recovered": p.recovered,
                    "detail": p.detail,
                }
                for p in result.probes
            ],
            "log_tail": result.log_tail if not result.recoverable else "",
        }
    )


def no_baseline_payload(verdict: Verdict) -> dict[str, Any]:
    """A regression check that had no stored baseline: its NOT JUDGED verdict, no rows."""
    return {
        "name": verdict.name,
        "baseline_path": None,
        "tolerance": None,
        "regressed": False,
        "rows": [],
        "table": verdict.message,
        "verdicts": [verdict.to_dict()],
    }


def note_payload(title: str, text: str) -> dict[str, Any]:
    """A block of text a test wanted in the report (a table, a recommendation)."""
    return {"title": title, "text": text}


def regression_payload(report: RegressionReport) -> dict[str, Any]:
    """A baseline comparison: per metric baseline, current, change, noise test and outcome."""
    return jsonable(
        {
            "verdicts": [v.to_dict() for v in report.verdicts()],
            "name": report.name,
            "baseline_path": report.baseline_path,
            "tolerance": report.tolerance,
            "regressed": report.regressed,
            "client_bound": report.client_bound,
            "rows": [
                {
                    **row.finding.to_dict(),
                    "worse": row.finding.regressed,
                    "regressed": row.regressed,
                    "noise": {
                        "method": row.noise.method,
                        "significant": row.noise.significant,
                        "detail": row.noise.detail,
                    },
                }
                for row in report.rows
            ],
            "table": report.table(),
        }
    )
