"""Scrape an inference server's Prometheus ``/metrics`` and read its scheduler gauges.

Each engine names the same few facts differently; :data:`ENGINE_METRICS` maps them onto
:class:`EngineGauges` (requests running, requests waiting, KV-cache usage, preemptions, and the
prefix cache's queried and hit token counters, ``vllm:prefix_cache_queries_total`` and
``vllm:prefix_cache_hits_total`` in vLLM 0.32, and the server's own time per finished request,
the sum and count of ``vllm:e2e_request_latency_seconds``). vLLM comes
first; SGLang, TGI and llama.cpp are mapped where their names are known. :class:`MetricsSampler`
polls those gauges on a background thread, e.g. to watch queue depth during a burst.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pytest_gpuinfer.clock import PeriodicThread

__all__ = [
    "ENGINE_METRICS",
    "EngineGauges",
    "GaugeReading",
    "MetricsSampler",
    "Sample",
    "detect_engine",
    "engine_gauges",
    "fetch_metrics",
    "metrics_url",
    "parse_metrics",
    "scrape_gauges",
]

GaugeName = Literal[
    "running",
    "waiting",
    "kv_cache_usage",
    "preemptions",
    "prefix_cache_queries",
    "prefix_cache_hits",
    "request_seconds",
    "requests_finished",
]

ENGINE_METRICS: dict[str, dict[GaugeName, tuple[str, ...]]] = {
    "vllm": {
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "preemptions": ("vllm:num_preemptions_total",),
        "prefix_cache_queries": ("vllm:prefix_cache_queries_total",),
        "prefix_cache_hits": ("vllm:prefix_cache_hits_total",),
        "request_seconds": ("vllm:e2e_request_latency_seconds_sum",),
        "requests_finished": ("vllm:e2e_request_latency_seconds_count",),
    },
    "sglang": {
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "kv_cache_usage": ("sglang:token_usage",),
        "preemptions": ("sglang:num_retracted_requests_total",),
        "request_seconds": ("sglang:e2e_request_latency_seconds_sum",),
        "requests_finished": ("sglang:e2e_request_latency_seconds_count",),
    },
    "tgi": {
        "running": ("tgi_batch_current_size",),
        "waiting": ("tgi_queue_size",),
        "request_seconds": ("tgi_request_duration_sum",),
        "requests_finished": ("tgi_request_duration_count",),
    },
    "llamacpp": {
        "running": ("llamacpp:requests_processing",),
        "waiting": ("llamacpp:requests_deferred",),
        "kv_cache_usage": ("llamacpp:kv_cache_usage_ratio",),
    },
}
"""Per engine, the sample names behind each gauge (first found wins); KV usage is 0..1."""

_SUMMED: frozenset[GaugeName] = frozenset(
    {
        "running",
        "waiting",
        "preemptions",
        "prefix_cache_queries",
        "prefix_cache_hits",
        "request_seconds",
        "requests_finished",
    }
)
"""Gauges added up over label sets (data-parallel engines); KV usage takes the fullest engine."""


@dataclass(frozen=True)
class EngineGauges:
    """The scheduler state an engine reports; None where the engine does not expose a gauge."""

    running: float | None
    waiting: float | None
    kv_cache_usage: float | None
    """Fraction of the KV cache in use (0..1), the fullest engine when there are several."""
    preemptions: float | None
    """Cumulative preemptions (a counter: compare two readings to count those in between)."""
    engine: str | None = None
    """Which engine's names were found: 'vllm', 'sglang', 'tgi', 'llamacpp'."""
    prefix_cache_queries: float | None = None
    """Cumulative prompt tokens looked up in the prefix cache (vLLM's counter)."""
    prefix_cache_hits: float | None = None
    """Cumulative prompt tokens found in the prefix cache (vLLM's counter)."""
    request_seconds: float | None = None
    """Cumulative seconds the server itself took over finished requests, arrival to last token
    (the sum of its end-to-end latency histogram)."""
    requests_finished: float | None = None
    """How many finished requests ``request_seconds`` covers (the histogram's count)."""


@dataclass(frozen=True)
class GaugeReading:
    """Engine gauges at one moment (``time.perf_counter()`` seconds, like request records)."""

    t: float
    gauges: EngineGauges


def metrics_url(base_url: str) -> str:
    """The ``/metrics`` URL of a server given its base URL (a trailing ``/v1`` is dropped)."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if not path.endswith("/metrics"):
        if path.endswith("/v1"):
            path = path[: -len("/v1")]
        path += "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def fetch_metrics(base_url: str, timeout: float = 5.0) -> str:
    """Fetch the Prometheus text from a server's ``/metrics``; raises OSError on failure."""
    url = metrics_url(base_url)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        charset = response.headers.get_content_charset() or "utf-8"
        body: bytes = response.read()
    return body.decode(charset, errors="replace")


def parse_metrics(text: str) -> dict[str, list[Sample]]:
    """Parse Prometheus text into samples keyed by sample name (counters keep ``_total``)."""
    out: dict[str, list[Sample]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append(sample)
    except ValueError as exc:
        raise ValueError(f"cannot parse Prometheus metrics text: {exc}") from exc
    return out


def detect_engine(metrics: Mapping[str, list[Sample]]) -> str | None:
    """Which engine's metric names appear in ``metrics`` (vLLM checked first)."""
    for engine, gauges in ENGINE_METRICS.items():
        if any(name in metrics for names in gauges.values() for name in names):
            return engine
    return None


def _gauge(
    metrics: Mapping[str, list[Sample]], names: tuple[str, ...], gauge: GaugeName, model: str | None
) -> float | None:
    """One gauge from the first name present, over the label sets that match ``model``."""
    for name in names:
        samples = metrics.get(name)
        if not samples:
            continue
        values = [
            s.value for s in samples if model is None or s.labels.get("model_name", model) == model
        ]
        if not values:
            return None
        return float(sum(values)) if gauge in _SUMMED else float(max(values))
    return None


def engine_gauges(
    metrics: Mapping[str, list[Sample]], *, engine: str | None = None, model: str | None = None
) -> EngineGauges:
    """Normalise one scrape into :class:`EngineGauges` (engine detected unless given)."""
    name = engine or detect_engine(metrics)
    if name is None:
        return EngineGauges(None, None, None, None, None)
    if name not in ENGINE_METRICS:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINE_METRICS)}")
    table = ENGINE_METRICS[name]

    def get(gauge: GaugeName) -> float | None:
        return _gauge(metrics, table.get(gauge, ()), gauge, model)

    return EngineGauges(
        running=get("running"),
        waiting=get("waiting"),
        kv_cache_usage=get("kv_cache_usage"),
        preemptions=get("preemptions"),
        engine=name,
        prefix_cache_queries=get("prefix_cache_queries"),
        prefix_cache_hits=get("prefix_cache_hits"),
        request_seconds=get("request_seconds"),
        requests_finished=get("requests_finished"),
    )


def scrape_gauges(base_url: str, timeout: float = 5.0, *, model: str | None = None) -> EngineGauges:
    """Fetch, parse and normalise a server's metrics in one call."""
    return engine_gauges(parse_metrics(fetch_metrics(base_url, timeout)), model=model)


class MetricsSampler:
    """Polls a server's engine gauges every ``interval`` seconds on a background thread."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        interval: float = 0.5,
        timeout: float = 2.0,
        model: str | None = None,
        fetch: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Sample ``base_url``'s ``/metrics``, or whatever ``fetch`` returns (for tests)."""
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        if fetch is None:
            if base_url is None:
                raise ValueError("MetricsSampler needs base_url or fetch")
            url = base_url

            def fetch_url() -> str:
                return fetch_metrics(url, timeout)

            fetch = fetch_url
        self.interval = interval
        self.model = model
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._readings: list[GaugeReading] = []
        self._thread = PeriodicThread(self.sample_once, interval, name="gpuinfer-metrics")
        self.errors = 0
        """How many scrapes failed (connection refused, timeout, unparsable text)."""
        self.last_error: str | None = None

    def sample_once(self) -> GaugeReading | None:
        """Take one reading now (stamped at the middle of the scrape); None when it failed."""
        t0 = self._clock()
        try:
            gauges = engine_gauges(parse_metrics(self._fetch()), model=self.model)
        except (OSError, ValueError) as exc:
            with self._lock:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        reading = GaugeReading((t0 + self._clock()) / 2.0, gauges)
        with self._lock:
            self._readings.append(reading)
        return reading

    def start(self) -> MetricsSampler:
        """Start sampling in a daemon thread (the first reading is taken at once)."""
        self._thread.start()
        return self

    def stop(self, *, final_sample: bool = True) -> None:
        """Stop the thread and, by default, take one last reading."""
        if self._thread.stop() and final_sample:
            self.sample_once()

    def __enter__(self) -> MetricsSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def readings(self) -> list[GaugeReading]:
        """A copy of the readings so far, oldest first."""
        with self._lock:
            return list(self._readings)

    def series(self, gauge: GaugeName) -> list[tuple[float, float]]:
        """(time, value) pairs of one gauge, skipping readings where it was not exposed."""
        out = []
        for r in self.readings:
            value = getattr(r.gauges, gauge)
            if value is not None:
                out.append((r.t, value))
        return out

    def peak(
        self, gauge: GaugeName, start: float = float("-inf"), end: float = float("inf")
    ) -> float | None:
        """The highest value of a gauge between ``start`` and ``end``; None without readings."""
        values = [v for t, v in self.series(gauge) if start <= t <= end]
        return max(values) if values else None
