"""Engine gauges during a load run: the target's own queue depth, running count and KV usage.

:class:`GaugeRecorder` samples the target's ``/metrics`` on a background thread (never on the load
client's event loop) several times a second for the length of a run, through
:class:`~pytest_gpuinfer.metrics.engine_gauges.MetricsSampler`. Each scrape keeps only the lines of
the few gauges read before parsing, so a large ``/metrics`` page (vLLM's histograms) costs the
client process little CPU.

The prefix cache's counters (vLLM's ``vllm:prefix_cache_queries_total`` and ``_hits_total``, in
prompt tokens) are read once before the run and once after it: their difference is the run's own
hit rate (:class:`PrefixCacheUse`), whatever ran on the server before.

When the target has no ``/metrics`` (or none of the known gauge names), the series falls back to
the client's own count of requests in flight, computed from the records after the run, and says
so: ``source == "client_in_flight"``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pytest_gpuinfer.metrics.engine_gauges import (
    ENGINE_METRICS,
    EngineGauges,
    GaugeReading,
    MetricsSampler,
    engine_gauges,
    fetch_metrics,
    parse_metrics,
)
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.streaming import Timeline

GaugeSource = Literal["engine", "client_in_flight"]
DEFAULT_INTERVAL_S = 0.5
"""Two readings a second. Each scrape of vLLM's /metrics (about 58 KB) costs the server about
6 ms of CPU, measured here; at five a second that took a visible share of a 2-core machine's
server time during throughput runs, at two a second it is about 1 % of a core."""

_WANTED = frozenset(
    name for table in ENGINE_METRICS.values() for names in table.values() for name in names
)


def _keep_gauge_lines(text: str) -> str:
    """Only the exposition lines of the gauges we read (and their TYPE/HELP comments)."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[2] in _WANTED:
                kept.append(line)
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in _WANTED:
            kept.append(line)
    return "\n".join(kept) + "\n"


@dataclass(frozen=True)
class PrefixCacheUse:
    """Prompt tokens the engine looked up in its prefix cache during a run, and found there."""

    queries: float
    hits: float

    @property
    def hit_rate(self) -> float:
        """Hits per queried token (NaN when nothing was queried)."""
        return self.hits / self.queries if self.queries > 0 else math.nan

    def text(self) -> str:
        """One line."""
        rate = "-" if math.isnan(self.hit_rate) else f"{self.hit_rate:.1%}"
        return (
            f"prefix cache: hit rate {rate} ({self.hits:.0f} of {self.queries:.0f} prompt tokens "
            "found cached during the run, engine counters)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        rate = self.hit_rate
        return {
            "queries": self.queries,
            "hits": self.hits,
            "hit_rate": None if math.isnan(rate) else rate,
        }


def prefix_cache_use(
    before: EngineGauges | None, after: EngineGauges | None
) -> PrefixCacheUse | None:
    """The counters' growth between two readings (None when either lacks them)."""
    if before is None or after is None:
        return None
    values = (
        before.prefix_cache_queries,
        before.prefix_cache_hits,
        after.prefix_cache_queries,
        after.prefix_cache_hits,
    )
    if any(v is None for v in values):
        return None
    q0, h0, q1, h1 = (float(v) for v in values if v is not None)
    return PrefixCacheUse(q1 - q0, h1 - h0)


@dataclass
class GaugeSeries:
    """Scheduler gauges over a run: the engine's own, or the client's in-flight count."""

    source: GaugeSource
    engine: str | None
    interval_s: float
    readings: list[GaugeReading] = field(default_factory=list)
    scrape_errors: int = 0
    note: str = ""
    prefix_cache: PrefixCacheUse | None = None
    """The engine's prefix-cache counters' growth over the run (None where not exposed)."""

    def values(self, gauge: str) -> list[tuple[float, float]]:
        """(time, value) pairs of one gauge ('running', 'waiting', 'kv_cache_usage', ...)."""
        out = []
        for reading in self.readings:
            value = getattr(reading.gauges, gauge)
            if value is not None:
                out.append((reading.t, float(value)))
        return out

    def queue(self) -> list[tuple[float, float]]:
        """Queue depth over time: the engine's waiting gauge, else the client's in-flight count."""
        if self.source == "engine":
            return self.values("waiting")
        return self.values("running")

    @property
    def queue_label(self) -> str:
        """What :meth:`queue` measures, in words."""
        if self.source == "engine":
            return f"{self.engine or 'engine'} requests waiting (engine gauge)"
        return "requests in flight (client-side count; the target exposes no queue gauge)"

    def preemptions_delta(self) -> float | None:
        """Preemptions counted during the run (last reading minus first); None if not exposed."""
        series = self.values("preemptions")
        if len(series) < 2:
            return None
        return series[-1][1] - series[0][1]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: source, label and one row per reading."""
        return {
            "source": self.source,
            "engine": self.engine,
            "interval_s": self.interval_s,
            "queue_label": self.queue_label,
            "scrape_errors": self.scrape_errors,
            "note": self.note,
            "prefix_cache": self.prefix_cache.to_dict() if self.prefix_cache else None,
            "readings": [
                {
                    "t": r.t,
                    "running": r.gauges.running,
                    "waiting": r.gauges.waiting,
                    "kv_cache_usage": r.gauges.kv_cache_usage,
                    "preemptions": r.gauges.preemptions,
                }
                for r in self.readings
            ],
        }


def in_flight_series(records: Sequence[RequestRecord], interval_s: float) -> list[GaugeReading]:
    """Requests in flight (sent, not yet ended) every ``interval_s`` across the records' span."""
    sent = sorted(r.sent for r in records if r.sent is not None)
    ended = sorted(r.end for r in records if r.sent is not None and r.end is not None)
    if not sent:
        return []
    start, stop = sent[0], max(ended[-1] if ended else sent[-1], sent[-1])
    readings = []
    steps = int((stop - start) / interval_s) + 2
    for step in range(steps):
        t = start + step * interval_s
        count = bisect.bisect_right(sent, t) - bisect.bisect_right(ended, t)
        gauges = EngineGauges(
            running=float(count), waiting=None, kv_cache_usage=None, preemptions=None
        )
        readings.append(GaugeReading(t, gauges))
    return readings


def in_flight_timeline(timeline: Timeline) -> list[GaugeReading]:
    """Requests in flight at the end of each window of a streamed run's time series."""
    return [
        GaugeReading(
            timeline.origin + row.t_s + row.width_s,
            EngineGauges(
                running=float(row.in_flight), waiting=None, kv_cache_usage=None, preemptions=None
            ),
        )
        for row in timeline.rows()
    ]


class GaugeRecorder:
    """Samples a target's engine gauges on a thread for the length of a run."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = 1.0,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.engine: str | None = None
        self.note = ""
        self._sampler: MetricsSampler | None = None
        self._before: EngineGauges | None = None

    def _fetch(self) -> str:
        """One scrape, cut down to the gauges we read."""
        return _keep_gauge_lines(fetch_metrics(self.base_url, self.timeout_s))

    def start(self) -> GaugeRecorder:
        """Probe ``/metrics`` once; sample it on a thread if it has known gauges."""
        try:
            probe = engine_gauges(parse_metrics(self._fetch()), model=self.model)
        except (OSError, ValueError) as exc:
            self.note = f"no engine gauges: /metrics unavailable ({type(exc).__name__}: {exc})"
            return self
        if probe.engine is None:
            self.note = "no engine gauges: /metrics has none of the known scheduler gauge names"
            return self
        self.engine = probe.engine
        self._before = probe
        self._sampler = MetricsSampler(
            fetch=self._fetch, interval=self.interval_s, model=self.model
        ).start()
        return self

    def stop(self) -> None:
        """Stop sampling (one last reading is taken)."""
        if self._sampler is not None:
            self._sampler.stop()

    def series(
        self, records: Sequence[RequestRecord], timeline: Timeline | None = None
    ) -> GaugeSeries:
        """The engine's series, or the client-side in-flight fallback built from ``records``
        (from a streamed run's ``timeline`` when it kept none)."""
        sampler = self._sampler
        readings = sampler.readings if sampler is not None else []
        if sampler is not None and readings:
            return GaugeSeries(
                "engine",
                self.engine,
                self.interval_s,
                readings,
                scrape_errors=sampler.errors,
                note=sampler.last_error or "",
                prefix_cache=prefix_cache_use(self._before, readings[-1].gauges),
            )
        return GaugeSeries(
            "client_in_flight",
            None,
            self.interval_s,
            in_flight_series(records, self.interval_s)
            if timeline is None
            else in_flight_timeline(timeline),
            note=self.note or "no engine gauges were read during the run",
        )
