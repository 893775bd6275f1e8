"""A run's figures folded from its records batch by batch, in memory that does not grow.

:class:`RunFold` takes finished :class:`~pytest_gpuinfer.metrics.records.RequestRecord` batches and
keeps what the summary, the workload figures and the time series need: exact counts, token
totals, the measured window and goodput, and a
:class:`~pytest_gpuinfer.metrics.sketch.LatencySketch` per latency metric, per length, per turn
and per time window. Folds from several client processes merge. The definitions are those of
:func:`pytest_gpuinfer.metrics.stats.summarize` (the warm-up cut, failures, TTFT to queue time,
per-token ITL); only the percentiles become estimates, with bounds.

The :class:`Timeline` keeps at most :data:`MAX_WINDOWS` windows: when a run outgrows them, each
pair of neighbouring windows is merged and the window doubles, so an hour costs what a minute does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pytest_gpuinfer.metrics import stats
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.sketch import LatencySketch
from pytest_gpuinfer.metrics.workload import EmbeddingFigures, LengthReport, TurnStats

MAX_WINDOWS = 512
"""Most windows a timeline keeps before it doubles its window."""

WINDOW_CENTROIDS = 100
"""A window's digests are smaller (about 1.6 KiB): 512 windows cost under 2 MB."""

_NAN = float("nan")


def _floats(values: list[float]) -> stats.FloatArray:
    """A list of floats as an array."""
    return np.asarray(values, dtype=np.float64)


@dataclass
class Window:
    """One time window of a run: requests scheduled, sent and ended in it, and their latencies."""

    scheduled: int = 0
    """Requests scheduled in the window (the latencies below are theirs)."""
    sent: int = 0
    """Requests whose bytes were sent in the window."""
    completed: int = 0
    """Requests that ended in the window without an error."""
    failed: int = 0
    """Requests that ended in the window with an error."""
    ttft: LatencySketch = field(default_factory=lambda: LatencySketch(WINDOW_CENTROIDS))
    e2e: LatencySketch = field(default_factory=lambda: LatencySketch(WINDOW_CENTROIDS))

    def merge(self, other: Window) -> None:
        """Fold another window's counts and latencies in."""
        self.scheduled += other.scheduled
        self.sent += other.sent
        self.completed += other.completed
        self.failed += other.failed
        self.ttft.merge(other.ttft)
        self.e2e.merge(other.e2e)


@dataclass(frozen=True)
class TimelineRow:
    """One window of :meth:`Timeline.rows`: seconds from the run start, counts, p95 latencies."""

    t_s: float
    width_s: float
    scheduled: int
    sent: int
    completed: int
    failed: int
    in_flight: int
    """Requests sent and not yet ended at the window's end."""
    ttft_p95_s: float | None
    e2e_p95_s: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "t_s": self.t_s,
            "width_s": self.width_s,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "completed": self.completed,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "ttft_p95_s": self.ttft_p95_s,
            "e2e_p95_s": self.e2e_p95_s,
        }


def _nonzero_counts(indexes: stats.IntArray) -> list[tuple[int, int]]:
    """(value, how often) for each value in an array of small non-negative ints."""
    if indexes.size == 0:
        return []
    counts = np.bincount(indexes)
    return [(int(i), int(counts[i])) for i in np.flatnonzero(counts)]


@dataclass
class _BatchTimes:
    """A batch's per-request times as arrays (NaN where a request has none)."""

    scheduled: stats.FloatArray
    sent: stats.FloatArray
    end: stats.FloatArray
    failed: npt.NDArray[np.bool_]
    ttft: stats.FloatArray
    e2e: stats.FloatArray


class Timeline:
    """Per-window counts and latency sketches from a fixed origin, at most :data:`MAX_WINDOWS`."""

    def __init__(self, origin: float, width_s: float = 1.0, max_windows: int = MAX_WINDOWS) -> None:
        if not width_s > 0:
            raise ValueError(f"window width must be > 0, not {width_s!r}")
        self.origin = origin
        self.width_s = width_s
        self.max_windows = max(2, max_windows)
        self.windows: list[Window] = []

    def _index(self, t: float) -> int:
        """The window holding time ``t`` (widening the windows when ``t`` is past the last)."""
        index = max(0, int((t - self.origin) / self.width_s))
        while index >= self.max_windows:
            self._coarsen()
            index = max(0, int((t - self.origin) / self.width_s))
        while len(self.windows) <= index:
            self.windows.append(Window())
        return index

    def _coarsen(self) -> None:
        """Merge each pair of windows into one twice as wide."""
        merged = []
        for i in range(0, len(self.windows), 2):
            window = self.windows[i]
            if i + 1 < len(self.windows):
                window.merge(self.windows[i + 1])
            merged.append(window)
        self.windows = merged
        self.width_s *= 2

    def add(self, times: _BatchTimes) -> None:
        """Count a batch of finished requests into their windows."""
        ends = times.end[~np.isnan(times.end)]
        last = max(float(times.scheduled.max()), float(ends.max()) if ends.size else -math.inf)
        while (last - self.origin) / self.width_s >= self.max_windows:
            self._coarsen()
        size = max(0, int((last - self.origin) / self.width_s)) + 1
        while len(self.windows) < size:
            self.windows.append(Window())

        def index(values: stats.FloatArray) -> stats.IntArray:
            """Window index of each time."""
            out: stats.IntArray = np.floor((values - self.origin) / self.width_s).astype(np.int64)
            return np.clip(out, 0, len(self.windows) - 1)

        at = index(times.scheduled)
        counts = {
            "scheduled": at,
            "sent": index(times.sent[~np.isnan(times.sent)]),
            "completed": index(times.end[~np.isnan(times.end) & ~times.failed]),
            "failed": index(times.end[~np.isnan(times.end) & times.failed]),
        }
        for name, indexes in counts.items():
            for window, count in _nonzero_counts(indexes):
                setattr(self.windows[window], name, getattr(self.windows[window], name) + count)
        for window in np.unique(at):
            mine = at == window
            ttft, e2e = times.ttft[mine], times.e2e[mine]
            self.windows[window].ttft.add(ttft[~np.isnan(ttft)])
            self.windows[window].e2e.add(e2e[~np.isnan(e2e)])

    def merge(self, other: Timeline) -> None:
        """Fold another process's timeline in (same origin; the wider window wins)."""
        while self.width_s < other.width_s:
            self._coarsen()
        while other.width_s < self.width_s:
            other._coarsen()
        while len(self.windows) < len(other.windows):
            self.windows.append(Window())
        for mine, theirs in zip(self.windows, other.windows, strict=False):
            mine.merge(theirs)

    def rows(self) -> list[TimelineRow]:
        """One row per window, with requests in flight at each window's end."""
        rows = []
        in_flight = 0
        for i, w in enumerate(self.windows):
            in_flight += w.sent - w.completed - w.failed
            rows.append(
                TimelineRow(
                    t_s=round(i * self.width_s, 6),
                    width_s=self.width_s,
                    scheduled=w.scheduled,
                    sent=w.sent,
                    completed=w.completed,
                    failed=w.failed,
                    in_flight=max(0, in_flight),
                    ttft_p95_s=w.ttft.quantile(0.95) if w.ttft.count else None,
                    e2e_p95_s=w.e2e.quantile(0.95) if w.e2e.count else None,
                )
            )
        return rows


@dataclass
class _TurnFold:
    """One turn index's requests, completions and sketches."""

    requests: int = 0
    completed: int = 0
    ttft: LatencySketch = field(default_factory=LatencySketch)
    e2e: LatencySketch = field(default_factory=LatencySketch)
    prompt_tokens: LatencySketch = field(default_factory=LatencySketch)

    def merge(self, other: _TurnFold) -> None:
        """Fold another process's figures for the same turn in."""
        self.requests += other.requests
        self.completed += other.completed
        self.ttft.merge(other.ttft)
        self.e2e.merge(other.e2e)
        self.prompt_tokens.merge(other.prompt_tokens)


_LATENCY_NAMES = ("ttft", "tpot", "itl_chunk", "itl_token", "e2e", "queue")
_LENGTH_NAMES = ("asked_input", "achieved_input", "input_offset", "asked_output", "achieved_output")


class RunFold:
    """A run's summary figures, folded from batches of finished records (see the module doc)."""

    def __init__(
        self,
        *,
        warmup_cutoff: float = -math.inf,
        slos: Sequence[stats.RequestCheck] = (),
        timeline: Timeline | None = None,
    ) -> None:
        """``warmup_cutoff``: records scheduled before it are counted out of the summary (the
        first scheduled time plus the warm-up); ``slos``: the per-request checks goodput counts."""
        self.warmup_cutoff = warmup_cutoff
        self.checks = [check for check in slos if check.per_request]
        self.requests = self.completed = self.warmup_excluded = self.good = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.errors: Counter[str] = Counter()
        self.start = math.inf
        self.last_end = -math.inf
        self.latency = {name: LatencySketch() for name in _LATENCY_NAMES}
        self.dispatch = LatencySketch()
        """Sent minus scheduled of every request (warm-up included)."""
        self.lengths = {name: LatencySketch() for name in _LENGTH_NAMES}
        self.length_counts = Counter[str]()
        self.turns: dict[int, _TurnFold] = {}
        self.embedding_batch = LatencySketch()
        self.embedding_inputs = 0
        self.timeline = timeline

    def add(self, records: Sequence[RequestRecord]) -> None:
        """Fold a batch of finished records in."""
        if not records:
            return
        cutoff = self.warmup_cutoff
        nan = _NAN
        scheduled: list[float] = []
        sent: list[float] = []
        ended: list[float] = []
        failed: list[bool] = []
        every_ttft: list[float] = []
        every_e2e: list[float] = []
        latencies: dict[str, list[float]] = {name: [] for name in ("ttft", "tpot", "e2e", "queue")}
        lengths: dict[str, list[float]] = {name: [] for name in _LENGTH_NAMES}
        turns: dict[int, tuple[list[float], list[float], list[float], list[int]]] = {}
        batches: list[float] = []
        times: list[float] = []
        tokens: list[int] = []
        chunk_counts: list[int] = []
        for r in records:
            lat = stats.request_latencies(r)
            scheduled.append(r.scheduled)
            sent.append(nan if r.sent is None else r.sent)
            ended.append(nan if r.end is None else r.end)
            failed.append(r.error is not None)
            every_ttft.append(nan if lat is None or lat.ttft is None else lat.ttft)
            every_e2e.append(nan if lat is None else lat.e2e)
            if r.turn is not None:
                self._turn(turns, r, lat)
            if r.inputs is not None:
                batches.append(float(r.inputs))
            if r.scheduled < cutoff:
                self.warmup_excluded += 1
                continue
            self.requests += 1
            if r.scheduled < self.start:
                self.start = r.scheduled
            if r.end is not None and r.end > self.last_end:
                self.last_end = r.end
            if lat is None:
                self.errors[r.error or "incomplete"] += 1
                continue
            self.completed += 1
            self.completion_tokens += lat.output_tokens
            self.prompt_tokens += r.prompt_tokens or 0
            latencies["e2e"].append(lat.e2e)
            if lat.queue is not None:
                latencies["queue"].append(lat.queue)
            if lat.ttft is not None:
                latencies["ttft"].append(lat.ttft)
            if lat.tpot is not None:
                latencies["tpot"].append(lat.tpot)
            if self.checks and all(check.accepts(r) for check in self.checks):
                self.good += 1
            if r.inputs is not None:
                self.embedding_inputs += r.inputs
            else:
                self._lengths(lengths, r)
            n_chunks = len(r.chunk_times)
            if n_chunks >= 2:
                times.extend(r.chunk_times)
                tokens.extend(r.chunk_tokens if len(r.chunk_tokens) == n_chunks else [1] * n_chunks)
                chunk_counts.append(n_chunks)
        for name, values in latencies.items():
            self.latency[name].add(_floats(values))
        for name, values in lengths.items():
            self.lengths[name].add(_floats(values))
        for turn, (ttft, e2e, prompt, counts) in turns.items():
            fold = self.turns.setdefault(turn, _TurnFold())
            fold.requests += counts[0]
            fold.completed += counts[1]
            fold.ttft.add(_floats(ttft))
            fold.e2e.add(_floats(e2e))
            fold.prompt_tokens.add(_floats(prompt))
        self.embedding_batch.add(_floats(batches))
        batch = _BatchTimes(
            _floats(scheduled),
            _floats(sent),
            _floats(ended),
            np.asarray(failed, dtype=bool),
            _floats(every_ttft),
            _floats(every_e2e),
        )
        dispatch = batch.sent - batch.scheduled
        self.dispatch.add(dispatch[~np.isnan(dispatch)])
        if self.timeline is not None:
            self.timeline.add(batch)
        gaps, per_token, later = stats._itl_arrays(times, tokens, chunk_counts)
        self.latency["itl_chunk"].add(gaps)
        self.latency["itl_token"].add(per_token, None if (later == 1).all() else later)

    def _lengths(self, lengths: dict[str, list[float]], r: RequestRecord) -> None:
        """Asked vs achieved lengths of one completed generation request, into ``lengths``."""
        counts = self.length_counts
        counts["completed"] += 1
        if r.asked_input_tokens is not None:
            lengths["asked_input"].append(r.asked_input_tokens)
        if r.prompt_tokens is not None:
            lengths["achieved_input"].append(r.prompt_tokens)
            if r.asked_input_tokens is not None and r.turn in (None, 0):
                lengths["input_offset"].append(r.prompt_tokens - r.asked_input_tokens)
        if r.asked_output_tokens is not None:
            lengths["asked_output"].append(r.asked_output_tokens)
        if r.completion_tokens is not None:
            lengths["achieved_output"].append(r.completion_tokens)
            if r.asked_output_tokens is not None:
                counts["short"] += r.completion_tokens < r.asked_output_tokens
                counts["long"] += r.completion_tokens > r.asked_output_tokens

    @staticmethod
    def _turn(
        turns: dict[int, tuple[list[float], list[float], list[float], list[int]]],
        r: RequestRecord,
        lat: stats.RequestLatencies | None,
    ) -> None:
        """One request's share of its turn's figures, into ``turns``."""
        assert r.turn is not None
        ttft, e2e, prompt, counts = turns.setdefault(r.turn, ([], [], [], [0, 0]))
        counts[0] += 1
        if lat is None:
            return
        counts[1] += 1
        if lat.ttft is not None:
            ttft.append(lat.ttft)
        e2e.append(lat.e2e)
        if r.prompt_tokens is not None:
            prompt.append(float(r.prompt_tokens))

    def merge(self, other: RunFold) -> None:
        """Fold another client process's figures in."""
        self.requests += other.requests
        self.completed += other.completed
        self.warmup_excluded += other.warmup_excluded
        self.good += other.good
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.errors.update(other.errors)
        self.start = min(self.start, other.start)
        self.last_end = max(self.last_end, other.last_end)
        for name, sketch in self.latency.items():
            sketch.merge(other.latency[name])
        self.dispatch.merge(other.dispatch)
        for name, sketch in self.lengths.items():
            sketch.merge(other.lengths[name])
        self.length_counts.update(other.length_counts)
        for turn, fold in other.turns.items():
            self.turns.setdefault(turn, _TurnFold()).merge(fold)
        self.embedding_batch.merge(other.embedding_batch)
        self.embedding_inputs += other.embedding_inputs
        if self.timeline is not None and other.timeline is not None:
            self.timeline.merge(other.timeline)
        elif self.timeline is None:
            self.timeline = other.timeline

    def summary(self, goodput_slos: Iterable[str] = ()) -> stats.Summary:
        """The run's summary, as :func:`~pytest_gpuinfer.metrics.stats.summarize` defines it."""
        n = self.requests
        duration = (
            max(0.0, self.last_end - self.start) if n and math.isfinite(self.last_end) else 0.0
        )

        def rate(count: float) -> float:
            return count / duration if duration > 0 else _NAN

        dist = {name: stats.sketch_distribution(s) for name, s in self.latency.items()}
        texts = tuple(goodput_slos) or tuple(check.text for check in self.checks)
        return stats.Summary(
            requests=n,
            completed=self.completed,
            failed=n - self.completed,
            error_rate=(n - self.completed) / n if n else _NAN,
            errors=dict(self.errors),
            duration_s=duration,
            request_throughput=rate(self.completed),
            output_token_throughput=rate(self.completion_tokens),
            goodput=rate(self.good) if self.checks else None,
            ttft=dist["ttft"],
            tpot=dist["tpot"],
            itl_chunk=dist["itl_chunk"],
            itl_token=dist["itl_token"],
            e2e=dist["e2e"],
            queue=dist["queue"],
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            warmup_excluded=self.warmup_excluded,
            goodput_slos=texts,
        )

    def length_report(self) -> LengthReport:
        """Asked vs achieved lengths of the completed requests (as ``length_report``)."""
        d = {name: stats.sketch_distribution(s) for name, s in self.lengths.items()}
        return LengthReport(
            asked_input=d["asked_input"],
            achieved_input=d["achieved_input"],
            input_offset=d["input_offset"],
            asked_output=d["asked_output"],
            achieved_output=d["achieved_output"],
            output_short=self.length_counts["short"],
            output_long=self.length_counts["long"],
            completed=self.length_counts["completed"],
        )

    def turn_stats(self) -> list[TurnStats]:
        """Per turn index, in order (as ``turn_stats``; warm-up included, as there)."""
        return [
            TurnStats(
                turn=turn,
                requests=fold.requests,
                completed=fold.completed,
                ttft=stats.sketch_distribution(fold.ttft),
                e2e=stats.sketch_distribution(fold.e2e),
                prompt_tokens=stats.sketch_distribution(fold.prompt_tokens),
            )
            for turn, fold in sorted(self.turns.items())
        ]

    def embedding_figures(self, summary: stats.Summary) -> EmbeddingFigures | None:
        """Inputs per second over the summary's window (None unless embeddings ran)."""
        if not self.embedding_batch.count:
            return None
        window = summary.duration_s
        return EmbeddingFigures(
            batch=stats.sketch_distribution(self.embedding_batch),
            inputs=self.embedding_inputs,
            inputs_per_s=self.embedding_inputs / window if window > 0 else _NAN,
            latency=summary.e2e,
        )


def fold_records(
    records: Sequence[RequestRecord], *, width_s: float = 1.0, batch: int = 4096
) -> RunFold:
    """A timeline-carrying fold of kept records (their time series, built after the run)."""
    origin = min((r.scheduled for r in records), default=0.0)
    fold = RunFold(timeline=Timeline(origin, width_s))
    for start in range(0, len(records), batch):
        fold.add(records[start : start + batch])
    return fold
