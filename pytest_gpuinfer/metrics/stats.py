"""Metric definitions: per-request latencies, percentiles, run summaries, goodput, regressions.

Every latency starts at the request's *scheduled* time (its arrival time in an open-loop run, the
moment a slot freed in a closed-loop run), so a server that falls behind cannot hide its backlog
in the client's queue (coordinated omission). Client-side queueing (scheduled to sent) is reported
on its own as ``queue``. The definitions are written out for users in ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from pytest_gpuinfer.metrics import units
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.sketch import LatencySketch


class RequestCheck(Protocol):
    """A check each request meets or misses on its own (an SLO); goodput counts the ones met."""

    @property
    def text(self) -> str:
        """How the check was written, e.g. 'ttft_p95<500ms'."""
        ...

    @property
    def per_request(self) -> bool:
        """False for checks of the whole run (error rate, throughput), which goodput skips."""
        ...

    def accepts(self, record: RequestRecord) -> bool:
        """Whether this request met the check."""
        ...


FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
"""The percentiles every :class:`Distribution` carries as fields."""

DISTRIBUTION_METRICS: tuple[str, ...] = (
    "ttft",
    "tpot",
    "itl",
    "itl_chunk",
    "itl_token",
    "e2e",
    "queue",
)
"""Metric names whose value is a latency distribution (seconds)."""

SCALAR_METRICS: tuple[str, ...] = ("error_rate", "throughput", "token_throughput", "goodput")
"""Metric names whose value is one number for the whole run."""

HIGHER_IS_BETTER: frozenset[str] = frozenset({"throughput", "token_throughput", "goodput"})
"""Metrics where a lower value is the regression (all others: a higher value is)."""

_DIST_FIELD = {
    "ttft": "ttft",
    "tpot": "tpot",
    "itl": "itl_token",
    "itl_chunk": "itl_chunk",
    "itl_token": "itl_token",
    "e2e": "e2e",
    "queue": "queue",
}
_SCALAR_FIELD = {
    "error_rate": "error_rate",
    "throughput": "request_throughput",
    "token_throughput": "output_token_throughput",
    "goodput": "goodput",
}
_STAT_KEYS = {50.0: "p50", 90.0: "p90", 95.0: "p95", 99.0: "p99", 99.9: "p999"}
_NAN = float("nan")


def _empty_floats() -> FloatArray:
    """An empty float array (dataclass default)."""
    return np.empty(0, dtype=np.float64)


def _json_float(value: float | None) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def min_samples(q: float) -> int:
    """Fewest samples for which percentile ``q`` has at least one sample above it."""
    if q <= 0.0 or q >= 100.0:
        return 1
    return max(1, math.ceil(round(100.0 / (100.0 - q), 6)))


def stat_label(q: float) -> str:
    """The stat name of percentile ``q``: 95 -> 'p95', 99.9 -> 'p99.9'."""
    return f"p{int(q)}" if float(q).is_integer() else f"p{q!r}"


def _weighted_percentiles(values: FloatArray, cum: IntArray, qs: FloatArray) -> FloatArray:
    """Linear-interpolation percentiles of sorted ``values`` repeated by cumulative weights ``cum``.

    Gives what ``numpy.percentile`` gives on the expanded array, without building it.
    """
    total = int(cum[-1])
    h = (total - 1) * qs / 100.0
    lo = np.floor(h)
    hi = np.minimum(lo + 1.0, total - 1)
    a = values[np.searchsorted(cum, lo, side="right")]
    b = values[np.searchsorted(cum, hi, side="right")]
    t = h - lo
    diff = b - a
    out: FloatArray = np.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)
    return out


@dataclass(frozen=True)
class Distribution:
    """Summary statistics of one latency metric (seconds), keeping the sorted samples for any q.

    A distribution of a streamed run keeps a :class:`~pytest_gpuinfer.metrics.sketch.LatencySketch`
    instead of its samples: count, mean, min and max stay exact, percentiles are estimates
    (``exact`` is False) and :meth:`bounds` says where the exact value lies.
    """

    count: int
    mean: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float
    p999: float
    _values: FloatArray = field(default_factory=_empty_floats, repr=False, compare=False)
    _cum_weights: IntArray | None = field(default=None, repr=False, compare=False)
    _sketch: LatencySketch | None = field(default=None, repr=False, compare=False)

    @property
    def exact(self) -> bool:
        """False when the percentiles are a sketch's estimates (a streamed run)."""
        return self._sketch is None

    def bounds(self, q: float) -> tuple[float, float]:
        """Where the exact percentile ``q`` (0..100) lies: the value itself when exact, else the
        sketch's bounds around its estimate."""
        if self._sketch is None:
            value = self.percentile(q)
            return value, value
        return self._sketch.bounds(q / 100.0)

    def spread(self, limit: int) -> list[float]:
        """At most ``limit`` values evenly spaced in rank, first and last included: the sorted
        samples thinned, or a streamed run's quantiles (its distribution's shape for a plot)."""
        if self.count == 0 or limit < 1:
            return []
        if self._sketch is not None:
            qs = np.linspace(0.0, 1.0, min(limit, self.count))
            return [float(v) for v in self._sketch.quantiles(qs)]
        if self._values.size == 0:
            return []
        step = max(1, -(-self._values.size // limit))
        picked = self._values[::step].tolist()
        if picked[-1] != self._values[-1]:
            picked[-1] = float(self._values[-1])
        return [float(v) for v in picked]

    def percentile(self, q: float) -> float:
        """Percentile ``q`` (0..100) with linear interpolation; NaN when there are no samples."""
        if not 0.0 <= q <= 100.0 or math.isnan(q):
            raise ValueError(f"percentile must be within 0..100, got {q!r}")
        if self.count == 0:
            return _NAN
        if self._sketch is not None:
            return self._sketch.quantile(q / 100.0)
        if self._values.size == 0:
            return self._stored_percentile(q)
        qs = np.asarray([q], dtype=np.float64)
        if self._cum_weights is not None:
            return float(_weighted_percentiles(self._values, self._cum_weights, qs)[0])
        return float(np.percentile(self._values, q))

    def _stored_percentile(self, q: float) -> float:
        """Percentile from the stored fields, for a distribution rebuilt without its samples."""
        if q == 0.0:
            return self.min
        if q == 100.0:
            return self.max
        key = _STAT_KEYS.get(float(q))
        if key is None:
            raise ValueError(f"p{q} is not stored and the samples were not kept")
        value: float = getattr(self, key)
        return value

    def stat(self, name: str) -> float:
        """A statistic by name: 'mean', 'min', 'max', 'count' or a percentile such as 'p99.9'."""
        if name in ("mean", "min", "max"):
            value: float = getattr(self, name)
            return value
        if name == "count":
            return float(self.count)
        if name.startswith("p"):
            try:
                q = float(name[1:])
            except ValueError:
                pass
            else:
                return self.percentile(q)
        raise ValueError(f"unknown statistic {name!r}: use mean, min, max or pNN")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: the count and the statistics in seconds (NaN becomes None)."""
        out: dict[str, Any] = {"count": self.count}
        for key in ("mean", "min", "max", "p50", "p90", "p95", "p99", "p999"):
            out[key] = _json_float(getattr(self, key))
        if self._sketch is not None and self.count:
            out["estimated"] = "t-digest"
            out["bounds"] = {
                key: [_json_float(v) for v in self.bounds(q)] for q, key in _STAT_KEYS.items()
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Distribution:
        """Rebuild from :meth:`to_dict` output (without samples: only stored percentiles work)."""

        def num(key: str) -> float:
            value = data.get(key)
            return _NAN if value is None else float(value)

        return cls(
            count=int(data.get("count") or 0),
            mean=num("mean"),
            min=num("min"),
            max=num("max"),
            p50=num("p50"),
            p90=num("p90"),
            p95=num("p95"),
            p99=num("p99"),
            p999=num("p999"),
        )


def _as_float_array(values: Iterable[float]) -> FloatArray:
    """Values as a 1-D float array (a copy is not guaranteed)."""
    if isinstance(values, np.ndarray):
        return np.asarray(values, dtype=np.float64).ravel()
    if isinstance(values, (list, tuple)):
        return np.asarray(values, dtype=np.float64)
    return np.fromiter(values, dtype=np.float64)


def distribution(values: Iterable[float], weights: Iterable[int] | None = None) -> Distribution:
    """Statistics of ``values``; with ``weights``, value i counts ``weights[i]`` times."""
    arr = _as_float_array(values)
    if np.isnan(arr).any():
        raise ValueError("distribution() got NaN values")
    qs = np.asarray(PERCENTILES, dtype=np.float64)
    if weights is None:
        if arr.size == 0:
            return _empty_distribution()
        ordered = np.sort(arr)
        pct = np.percentile(ordered, qs)
        return _make_distribution(ordered.size, float(np.mean(ordered)), ordered, pct, None)
    w = np.asarray(list(weights) if not isinstance(weights, np.ndarray) else weights)
    w = w.astype(np.int64, copy=False).ravel()
    if w.shape != arr.shape:
        raise ValueError(f"{arr.size} values but {w.size} weights")
    if (w < 0).any():
        raise ValueError("weights must not be negative")
    keep = w > 0
    arr, w = arr[keep], w[keep]
    if arr.size == 0:
        return _empty_distribution()
    order = np.argsort(arr, kind="stable")
    ordered, w = arr[order], w[order]
    cum = np.cumsum(w)
    total = int(cum[-1])
    pct = _weighted_percentiles(ordered, cum, qs)
    return _make_distribution(total, float(np.dot(ordered, w) / total), ordered, pct, cum)


def _make_distribution(
    count: int,
    mean: float,
    ordered: FloatArray,
    pct: npt.NDArray[np.floating[Any]],
    cum: IntArray | None,
) -> Distribution:
    """Build a Distribution from sorted samples and their :data:`PERCENTILES` values."""
    lowest, highest = float(ordered[0]), float(ordered[-1])
    return _with_percentiles(count, mean, lowest, highest, pct, values=ordered, cum_weights=cum)


def sketch_distribution(sketch: LatencySketch) -> Distribution:
    """The distribution a streamed run's sketch estimates (percentiles are estimates)."""
    if sketch.count == 0:
        return _empty_distribution()
    pct = sketch.quantiles(np.asarray(PERCENTILES, dtype=np.float64) / 100.0)
    return _with_percentiles(sketch.count, sketch.mean, sketch.min, sketch.max, pct, sketch=sketch)


def _with_percentiles(
    count: int,
    mean: float,
    lowest: float,
    highest: float,
    pct: npt.NDArray[np.floating[Any]],
    *,
    values: FloatArray | None = None,
    cum_weights: IntArray | None = None,
    sketch: LatencySketch | None = None,
) -> Distribution:
    """A Distribution from its exact figures and its values at :data:`PERCENTILES`, backed by
    its sorted samples (exact percentiles) or by a sketch (estimates)."""
    p50, p90, p95, p99, p999 = (float(p) for p in pct)
    return Distribution(
        count=count,
        mean=mean,
        min=lowest,
        max=highest,
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        p999=p999,
        _values=_empty_floats() if values is None else values,
        _cum_weights=cum_weights,
        _sketch=sketch,
    )


def _empty_distribution() -> Distribution:
    """The distribution of no samples: count 0, every statistic NaN."""
    return Distribution(0, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN)


def completion_tokens(record: RequestRecord) -> int:
    """Output tokens of a record: the server's usage when given, else the sum of chunk tokens."""
    if record.completion_tokens is not None:
        return record.completion_tokens
    return sum(record.chunk_tokens)


def _chunk_token_counts(record: RequestRecord) -> list[int]:
    """Tokens per chunk, each at least 1 (a chunk that carries text carries part of a token)."""
    if len(record.chunk_tokens) != len(record.chunk_times):
        return [1] * len(record.chunk_times)
    return [k if k > 0 else 1 for k in record.chunk_tokens]


def _py_percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile of a small sorted list, in plain Python."""
    h = (len(ordered) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    a, b, t = ordered[lo], ordered[hi], h - lo
    return b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t


def summary_field(metric: str) -> str:
    """The Summary field a latency metric name reads: 'itl' -> 'itl_token', 'ttft' -> 'ttft'."""
    return _DIST_FIELD[metric]


class RequestLatencies(NamedTuple):
    """One completed request's single-valued latencies (seconds; None where it has none)."""

    ttft: float | None
    tpot: float | None
    e2e: float
    queue: float | None
    output_tokens: int


def request_latencies(record: RequestRecord) -> RequestLatencies | None:
    """TTFT, TPOT, E2E and queue time of a completed request, from its scheduled start."""
    end = record.end
    if end is None or record.error is not None:  # not record.ok, without a property call
        return None
    s = record.scheduled
    n = record.completion_tokens
    if n is None:
        n = sum(record.chunk_tokens)
    first = record.first_token
    sent = record.sent
    return RequestLatencies(
        None if first is None else first - s,
        None if first is None or n < 2 else (end - first) / (n - 1),
        end - s,
        None if sent is None else sent - s,
        n,
    )


_SCALAR_LATENCIES = ("ttft", "tpot", "e2e", "queue")


def request_samples(record: RequestRecord, metric: str) -> list[float]:
    """One request's own samples of a latency metric (seconds); empty when it has none."""
    if metric in _SCALAR_LATENCIES:
        latencies = request_latencies(record)
        value = None if latencies is None else getattr(latencies, metric)
        return [] if value is None else [value]
    if not record.ok:
        return []
    if metric not in ("itl", "itl_chunk", "itl_token"):
        raise ValueError(f"{metric!r} is not a per-request latency metric")
    times = record.chunk_times
    gaps = [times[i + 1] - times[i] for i in range(len(times) - 1)]
    if metric == "itl_chunk":
        return gaps
    tokens = _chunk_token_counts(record)[1:]
    return [g / k for g, k in zip(gaps, tokens, strict=True) for _ in range(k)]


def request_value(record: RequestRecord, metric: str, stat: str | None) -> float | None:
    """A statistic of one request's own samples of ``metric``; None when it has no samples."""
    samples = request_samples(record, metric)
    if not samples:
        return None
    if len(samples) == 1:
        return samples[0]
    if stat is None or stat == "mean":
        return math.fsum(samples) / len(samples)
    if stat == "min":
        return min(samples)
    if stat == "max":
        return max(samples)
    if stat.startswith("p"):
        return _py_percentile(sorted(samples), float(stat[1:]))
    raise ValueError(f"unknown statistic {stat!r}")


@dataclass(frozen=True)
class Summary:
    """What a run measured: counts, rates and latency distributions over the measured window."""

    requests: int
    completed: int
    failed: int
    error_rate: float
    errors: dict[str, int]
    duration_s: float
    request_throughput: float
    output_token_throughput: float
    goodput: float | None
    ttft: Distribution
    tpot: Distribution
    itl_chunk: Distribution
    itl_token: Distribution
    e2e: Distribution
    queue: Distribution
    prompt_tokens: int
    completion_tokens: int
    warmup_excluded: int = 0
    """Records left out because they were scheduled inside the warm-up period."""
    goodput_slos: tuple[str, ...] = ()
    """The per-request SLOs goodput was judged against."""

    def metric(self, name: str) -> Distribution | float:
        """A metric by its user-facing name ('ttft', 'itl', 'throughput', 'goodput', ...)."""
        if name in _DIST_FIELD:
            dist: Distribution = getattr(self, _DIST_FIELD[name])
            return dist
        if name in _SCALAR_FIELD:
            value: float | None = getattr(self, _SCALAR_FIELD[name])
            return _NAN if value is None else value
        known = ", ".join(DISTRIBUTION_METRICS + SCALAR_METRICS)
        raise KeyError(f"unknown metric {name!r}; known: {known}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (NaN becomes None); :func:`compare` reads it back as a baseline."""
        return {
            "requests": self.requests,
            "completed": self.completed,
            "failed": self.failed,
            "error_rate": _json_float(self.error_rate),
            "errors": dict(self.errors),
            "duration_s": _json_float(self.duration_s),
            "request_throughput": _json_float(self.request_throughput),
            "output_token_throughput": _json_float(self.output_token_throughput),
            "goodput": _json_float(self.goodput),
            "goodput_slos": list(self.goodput_slos),
            "ttft": self.ttft.to_dict(),
            "tpot": self.tpot.to_dict(),
            "itl_chunk": self.itl_chunk.to_dict(),
            "itl_token": self.itl_token.to_dict(),
            "e2e": self.e2e.to_dict(),
            "queue": self.queue.to_dict(),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "warmup_excluded": self.warmup_excluded,
        }

    def table(self) -> str:
        """A fixed-width text table: latency metrics by count, mean and percentiles in ms."""
        head = ["metric [ms]", "n", "mean", "p50", "p90", "p95", "p99", "p99.9"]
        lines = [f"{head[0]:<12}{head[1]:>9}" + "".join(f"{h:>10}" for h in head[2:])]
        for name in ("ttft", "tpot", "itl_chunk", "itl_token", "e2e", "queue"):
            d: Distribution = getattr(self, name)
            stats = (d.mean, d.p50, d.p90, d.p95, d.p99, d.p999)
            cells = "".join(f"{units.ms(v):>10}" for v in stats)
            lines.append(f"{name:<12}{d.count:>9}{cells}")
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items()))
        lines.append(
            f"requests {self.requests}  completed {self.completed}  failed {self.failed}"
            f"  error rate {units.percent(self.error_rate)}" + (f" ({errors})" if errors else "")
        )
        goodput = "-" if self.goodput is None else f"{self.goodput:.2f} req/s"
        lines.append(
            f"window {self.duration_s:.3f} s  throughput {self.request_throughput:.2f} req/s"
            f"  {self.output_token_throughput:.1f} tok/s  goodput {goodput}"
        )
        if self.warmup_excluded:
            lines.append(f"warm-up: {self.warmup_excluded} requests excluded")
        return "\n".join(lines)


def _measured(records: Sequence[RequestRecord], warmup_s: float) -> list[RequestRecord]:
    """Records scheduled at or after the end of the warm-up period."""
    if warmup_s < 0 or math.isnan(warmup_s):
        raise ValueError(f"warmup_s must be >= 0, got {warmup_s!r}")
    if not records or warmup_s == 0:
        return list(records)
    cutoff = min(r.scheduled for r in records) + warmup_s
    return [r for r in records if r.scheduled >= cutoff]


def _itl_arrays(
    times: list[float], tokens: list[int], lengths: list[int]
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Gaps between chunks of many records laid end to end: gaps, per-token gaps, tokens."""
    if not lengths:
        return _empty_floats(), _empty_floats(), np.empty(0, dtype=np.int64)
    t = np.asarray(times, dtype=np.float64)
    k = np.maximum(np.asarray(tokens, dtype=np.int64), 1)  # see _chunk_token_counts
    gaps = np.diff(t)
    keep = np.ones(gaps.size, dtype=bool)
    keep[np.cumsum(lengths)[:-1] - 1] = False  # a gap across two records is no gap
    gaps = gaps[keep]
    later = k[1:][keep]
    return gaps, gaps / later, later


def summarize(
    records: Sequence[RequestRecord],
    *,
    warmup_s: float = 0.0,
    slos: Sequence[RequestCheck] = (),
) -> Summary:
    """Summarise a run: drop the warm-up, count failures, and build each latency distribution."""
    measured = _measured(records, warmup_s)
    errors: Counter[str] = Counter()
    ttft: list[float] = []
    tpot: list[float] = []
    e2e: list[float] = []
    queue: list[float] = []
    times: list[float] = []
    tokens: list[int] = []
    lengths: list[int] = []
    completed: list[RequestRecord] = []
    prompt_total = completion_total = 0
    last_end = -math.inf
    for r in measured:
        end = r.end
        if end is not None and end > last_end:
            last_end = end
        latencies = request_latencies(r)
        if latencies is None:
            errors[r.error or "incomplete"] += 1
            continue
        completed.append(r)
        e2e.append(latencies.e2e)
        if latencies.queue is not None:
            queue.append(latencies.queue)
        completion_total += latencies.output_tokens
        prompt_total += r.prompt_tokens or 0
        if latencies.ttft is not None:
            ttft.append(latencies.ttft)
        if latencies.tpot is not None:
            tpot.append(latencies.tpot)
        n_chunks = len(r.chunk_times)
        if n_chunks >= 2:
            times.extend(r.chunk_times)
            if len(r.chunk_tokens) == n_chunks:
                tokens.extend(r.chunk_tokens)
            else:
                tokens.extend([1] * n_chunks)
            lengths.append(n_chunks)

    gaps, per_token, later = _itl_arrays(times, tokens, lengths)
    n_req = len(measured)
    start = min((r.scheduled for r in measured), default=_NAN)
    duration = max(0.0, last_end - start) if n_req and math.isfinite(last_end) else 0.0

    def rate(count: float) -> float:
        return count / duration if duration > 0 else _NAN

    goodput: float | None = None
    per_request = [check for check in slos if check.per_request]
    if per_request:
        good = sum(1 for r in completed if all(check.accepts(r) for check in per_request))
        goodput = rate(good)

    return Summary(
        requests=n_req,
        completed=len(completed),
        failed=n_req - len(completed),
        error_rate=(n_req - len(completed)) / n_req if n_req else _NAN,
        errors=dict(errors),
        duration_s=duration,
        request_throughput=rate(len(completed)),
        output_token_throughput=rate(completion_total),
        goodput=goodput,
        ttft=distribution(ttft),
        tpot=distribution(tpot),
        itl_chunk=distribution(gaps),
        itl_token=distribution(per_token, None if (later == 1).all() else later),
        e2e=distribution(e2e),
        queue=distribution(queue),
        prompt_tokens=prompt_total,
        completion_tokens=completion_total,
        warmup_excluded=len(records) - n_req,
        goodput_slos=tuple(s.text for s in per_request),
    )


@dataclass(frozen=True)
class RegressionFinding:
    """How one metric of the current run compares with the baseline."""

    metric: str
    current: float
    baseline: float
    change: float
    """Relative change (current - baseline) / baseline; NaN when either value is missing."""
    regressed: bool
    few_samples: bool
    """True when either run had too few samples for the percentile to be trusted."""
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (NaN becomes None)."""
        return {
            "metric": self.metric,
            "current": _json_float(self.current),
            "baseline": _json_float(self.baseline),
            "change": _json_float(self.change),
            "regressed": self.regressed,
            "few_samples": self.few_samples,
            "message": self.message,
        }


def _split_metric_path(path: str) -> tuple[str, str | None]:
    """Split 'ttft.p99.9' into ('ttft', 'p99.9') and 'throughput' into ('throughput', None)."""
    name, _, stat = path.partition(".")
    if name in _DIST_FIELD:
        if not stat:
            raise ValueError(f"{path!r}: a latency metric needs a statistic, e.g. {name}.p95")
        return name, stat
    if name in _SCALAR_FIELD:
        if stat:
            raise ValueError(f"{path!r}: {name} takes no statistic")
        return name, None
    known = ", ".join(DISTRIBUTION_METRICS + SCALAR_METRICS)
    raise ValueError(f"unknown metric {name!r} in {path!r}; known: {known}")


def _stat_key(stat: str) -> str:
    """The to_dict key of a statistic: 'p99.9' -> 'p999', 'p95' -> 'p95'."""
    if stat in ("mean", "min", "max", "count"):
        return stat
    try:
        key = _STAT_KEYS.get(float(stat[1:]) if stat.startswith("p") else _NAN)
    except ValueError:
        key = None
    if key is None:
        raise ValueError(
            f"statistic {stat!r} is not stored in a summary (use mean, min, max, "
            "p50, p90, p95, p99 or p99.9)"
        )
    return key


def _stat_q(stat: str) -> float | None:
    """The percentile a stat names, or None for mean/min/max."""
    return float(stat[1:]) if stat.startswith("p") else None


def _baseline_number(value: Any) -> float:
    """A baseline JSON value as a float (None or missing -> NaN)."""
    return _NAN if value is None else float(value)


def _format_value(name: str, value: float) -> str:
    """A metric value for a message: latencies in ms, rates per second, fractions in %."""
    if name in _DIST_FIELD:
        return units.with_unit(units.LATENCY, value)
    if name == "error_rate":
        return units.with_unit(units.FRACTION, value)
    if name == "token_throughput":
        return units.with_unit(units.TOKEN_RATE, value)
    return units.with_unit(units.REQUEST_RATE, value)


def compare(
    current: Summary,
    baseline: Mapping[str, Any],
    *,
    tolerance: float = 0.10,
    metrics: Sequence[str] = ("ttft.p95", "itl_token.p95", "e2e.p95", "throughput"),
) -> list[RegressionFinding]:
    """Compare a run with a baseline (a Summary.to_dict()) metric by metric, within a tolerance."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    findings = []
    for path in metrics:
        name, stat = _split_metric_path(path)
        few = False
        if stat is None:
            field_name = _SCALAR_FIELD[name]
            cur_value = current.metric(name)
            assert isinstance(cur_value, float)
            cur = cur_value
            base = _baseline_number(baseline.get(field_name))
            note = ""
        else:
            field_name = _DIST_FIELD[name]
            dist = current.metric(name)
            assert isinstance(dist, Distribution)
            cur = dist.stat(stat)
            base_dist = baseline.get(field_name) or {}
            base = _baseline_number(base_dist.get(_stat_key(stat)))
            q = _stat_q(stat)
            need = 1 if q is None else min_samples(q)
            base_n = int(base_dist.get("count") or 0)
            few = dist.count < need or base_n < need
            note = (
                f" [few samples: {dist.count} now, {base_n} in baseline; {stat} needs {need}]"
                if few
                else ""
            )
        findings.append(_finding(path, name, cur, base, tolerance, few, note))
    return findings


def _finding(
    path: str, name: str, cur: float, base: float, tolerance: float, few: bool, note: str
) -> RegressionFinding:
    """Judge one metric against its baseline value and word the result."""
    if math.isnan(base):
        msg = f"{path}: no baseline value to compare with (now {_format_value(name, cur)})"
        return RegressionFinding(path, cur, base, _NAN, False, few, msg + note)
    if math.isnan(cur):
        msg = f"{path} regressed: no value in this run (baseline {_format_value(name, base)})"
        return RegressionFinding(path, cur, base, _NAN, True, few, msg + note)
    if base == 0:
        change = 0.0 if cur == 0 else math.copysign(math.inf, cur)
    else:
        change = (cur - base) / abs(base)
    higher_better = name in HIGHER_IS_BETTER
    worse = -change if higher_better else change
    regressed = worse > tolerance
    verdict = "regressed" if regressed else ("improved" if worse < -tolerance else "ok")
    msg = (
        f"{path} {verdict}: {_format_value(name, cur)} vs baseline {_format_value(name, base)}"
        f" ({change * 100.0:+.1f}%, tolerance {tolerance * 100.0:g}%,"
        f" {'lower' if higher_better else 'higher'} is worse)"
    )
    return RegressionFinding(path, cur, base, change, regressed, few, msg + note)
