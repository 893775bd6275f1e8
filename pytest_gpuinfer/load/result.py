"""What a load run returns: its records, their summary, the engine's self-check, and what the
workload asked beside what happened (lengths, turns, embedding inputs, prefix-cache hits)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuinfer.load.gauges import GaugeSeries, PrefixCacheUse
from pytest_gpuinfer.load.retention import StreamedRecords
from pytest_gpuinfer.load.selfcheck import SelfCheck
from pytest_gpuinfer.metrics import slo, stats, units
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.streaming import Timeline, TimelineRow, fold_records
from pytest_gpuinfer.metrics.workload import (
    EmbeddingFigures,
    LengthReport,
    TurnStats,
    embedding_figures,
    length_report,
    turn_stats,
    turn_table,
)


class RecordsNotKept(ValueError):
    """A figure needs every record in memory, and the run streamed them (see ``retention``)."""


@dataclass(init=False)
class LoadResult:
    """The records of a load run, their summary and the engine's self-check."""

    _records: list[RequestRecord] = field(repr=False)
    summary: stats.Summary
    self_check: SelfCheck
    config: dict[str, Any]
    gauges: GaugeSeries | None = None
    """Engine gauges sampled during the run (or the client's in-flight count; see ``source``)."""
    verdicts: list[slo.SLOVerdict] | None = None
    """The run's verdicts once :meth:`judge` has been called."""
    workload_text: str = ""
    """What was sent, in one line (from the workload)."""
    streamed: StreamedRecords | None = None
    """A run past its retention limit: its figures were folded as it went (percentiles are
    estimates with bounds) and its records went to a file, if anywhere."""

    def __init__(
        self,
        records: list[RequestRecord],
        summary: stats.Summary,
        self_check: SelfCheck,
        config: dict[str, Any],
        gauges: GaugeSeries | None = None,
        verdicts: list[slo.SLOVerdict] | None = None,
        workload_text: str = "",
        streamed: StreamedRecords | None = None,
    ) -> None:
        """``records``: every record (empty when ``streamed`` says where they went instead)."""
        self._records = records
        self.summary = summary
        self.self_check = self_check
        self.config = config
        self.gauges = gauges
        self.verdicts = verdicts
        self.workload_text = workload_text
        self.streamed = streamed

    @property
    def records(self) -> list[RequestRecord]:
        """Every request's record, in index order; a streamed run kept none in memory and
        raises :class:`RecordsNotKept` (its figures are in ``summary``, ``timeline``, ...; its
        records, when written, come back from :meth:`read_records`)."""
        return self.require_records("reading result.records")

    def judge(self, slos: Sequence[slo.SLO], *, allow_errors: bool = False) -> list[slo.SLOVerdict]:
        """Judge the run by its SLOs and (unless allowed) its failed requests; keep the verdicts.

        A streamed run's percentile whose bounds hold the limit is judged exactly from its
        record file, or NOT JUDGED without one: a sketch's error never flips a verdict."""
        exact = None
        if self.streamed is not None and self.streamed.files:
            exact = self.streamed.exact_percentile
        self.verdicts = slo.judge_run(slos, self.summary, allow_errors=allow_errors, exact=exact)
        return self.verdicts

    def require_records(self, purpose: str) -> list[RequestRecord]:
        """Every record, or RecordsNotKept naming ``purpose`` when the run streamed them."""
        if self.streamed is not None:
            raise RecordsNotKept(
                f"{purpose} needs every request record in memory, but this run streamed them "
                f"({self.streamed.describe()}); run it with "
                "RunnerOptions(retention=Retention(keep='all')) or fewer requests"
            )
        return self._records

    def read_records(self) -> Iterator[RequestRecord]:
        """The records: those kept in memory, or a streamed run's, read back from its file."""
        if self.streamed is None:
            return iter(self.records)
        return self.streamed.read_records()

    @functools.cached_property
    def timeline(self) -> Timeline:
        """Per-window counts, in-flight requests and p95 latencies over the run."""
        if self.streamed is not None and self.streamed.fold.timeline is not None:
            return self.streamed.fold.timeline
        timeline = fold_records(self.records).timeline
        assert timeline is not None
        return timeline

    def timeline_rows(self) -> list[TimelineRow]:
        """:attr:`timeline` as rows (seconds from the run's first scheduled request)."""
        return self.timeline.rows()

    @property
    def client_bound(self) -> bool:
        """True when the load engine itself limited the run (see ``self_check``)."""
        return self.self_check.client_bound

    @property
    def ttft(self) -> stats.Distribution:
        """Time to first token, from each request's scheduled time."""
        return self.summary.ttft

    @property
    def itl(self) -> stats.Distribution:
        """Inter-token latency normalised per token."""
        return self.summary.itl_token

    @property
    def itl_chunk(self) -> stats.Distribution:
        """Gaps between chunks, one sample per gap."""
        return self.summary.itl_chunk

    @property
    def tpot(self) -> stats.Distribution:
        """Time per output token after the first."""
        return self.summary.tpot

    @property
    def e2e(self) -> stats.Distribution:
        """End-to-end latency from the scheduled time to the last byte."""
        return self.summary.e2e

    @property
    def queue(self) -> stats.Distribution:
        """Client-side queueing: scheduled time to send."""
        return self.summary.queue

    @functools.cached_property
    def lengths(self) -> LengthReport:
        """Asked vs achieved prompt and output lengths, per request."""
        if self.streamed is not None:
            return self.streamed.fold.length_report()
        return length_report(self.records)

    @functools.cached_property
    def turns(self) -> list[TurnStats]:
        """TTFT, E2E and prompt tokens by turn index (empty unless conversations ran)."""
        if self.streamed is not None:
            return self.streamed.fold.turn_stats()
        return turn_stats(self.records)

    @functools.cached_property
    def embeddings(self) -> EmbeddingFigures | None:
        """Inputs per second and latency (None unless embeddings ran)."""
        if self.streamed is not None:
            return self.streamed.fold.embedding_figures(self.summary)
        warmup = float(self.config.get("warmup_s") or 0.0)
        measured = self.records
        if warmup and self.records:
            cutoff = min(r.scheduled for r in self.records) + warmup
            measured = [r for r in self.records if r.scheduled >= cutoff]
        return embedding_figures(measured, self.summary)

    @property
    def prefix_cache(self) -> PrefixCacheUse | None:
        """The engine's prefix-cache hits over the run (None where it exposes no counters)."""
        return self.gauges.prefix_cache if self.gauges is not None else None

    @functools.cached_property
    def dispatch_error(self) -> stats.Distribution:
        """How late each request was sent after its scheduled time (all requests, warm-up too):
        against a replayed trace, the error of the replay."""
        if self.streamed is not None:
            return stats.sketch_distribution(self.streamed.fold.dispatch)
        return stats.distribution(r.sent - r.scheduled for r in self.records if r.sent is not None)

    def extra_lines(self) -> list[str]:
        """The workload's own figures: lengths, turns, embeddings, prefix cache, replay error."""
        lines = []
        if self.workload_text:
            lines.append(f"workload: {self.workload_text}")
        if self.embeddings is not None:
            lines.append(self.embeddings.text())
        else:
            lines.append(self.lengths.text())
        if self.turns:
            lines.append("per turn [ms]:\n" + turn_table(self.turns))
        if self.prefix_cache is not None:
            lines.append(self.prefix_cache.text())
        if self.streamed is not None:
            lines.append(f"kept: {self.streamed.describe()}")
        schedule = self.config.get("schedule") or {}
        if schedule.get("name") == "trace" and self.dispatch_error.count:
            error = self.dispatch_error
            lines.append(
                f"trace replay: dispatch error (sent - recorded time / speed) p50/p99/max "
                f"{units.ms(error.p50)}/{units.ms(error.p99)}/{units.ms(error.max)} ms "
                f"(n={error.count})"
            )
        return lines

    def summary_text(self) -> str:
        """The summary table, the workload's figures, then the self-check."""
        return "\n".join([self.summary.table(), *self.extra_lines(), self.self_check.text()])

    def to_dict(self, *, include_records: bool = True) -> dict[str, Any]:
        """Plain-JSON form: config, summary, self-check and (optionally) every record; a
        streamed run gives its record files and time series instead of its records."""
        out: dict[str, Any] = {
            "config": self.config,
            "summary": self.summary.to_dict(),
            "self_check": self.self_check.to_dict(),
            "lengths": self.lengths.to_dict(),
        }
        if self.gauges is not None:
            out["gauges"] = self.gauges.to_dict()
        if self.turns:
            out["turns"] = [t.to_dict() for t in self.turns]
        if self.embeddings is not None:
            out["embeddings"] = self.embeddings.to_dict()
        if (self.config.get("schedule") or {}).get("name") == "trace":
            out["dispatch_error"] = self.dispatch_error.to_dict()
        if self.verdicts is not None:
            out["verdicts"] = [slo.verdict_dict(v) for v in self.verdicts]
        if self.streamed is not None:
            out["streamed"] = self.streamed.to_dict()
        elif include_records:
            out["records"] = [record.to_dict() for record in self.records]
        return out

    def to_json(self, *, include_records: bool = True, indent: int | None = None) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(include_records=include_records), indent=indent)


def comparison_table(results: Mapping[str, LoadResult]) -> str:
    """Runs side by side: requests, TTFT p50/p95, E2E p50 (ms), prefix-cache hit rate."""
    lines = [
        f"{'run':<24}{'n':>6}{'ttft p50':>11}{'ttft p95':>11}{'e2e p50':>11}{'prefix hits':>13}"
    ]
    for label, result in results.items():
        summary = result.summary
        cache = result.prefix_cache
        rate = "-" if cache is None or cache.queries <= 0 else f"{cache.hit_rate:.1%}"
        lines.append(
            f"{label:<24}{summary.completed:>6}{units.ms(summary.ttft.p50):>11}"
            f"{units.ms(summary.ttft.p95):>11}{units.ms(summary.e2e.p50):>11}{rate:>13}"
        )
    return "\n".join(lines)
