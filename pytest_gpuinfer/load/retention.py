"""What a load run keeps of its requests: every record in memory, or streamed figures and a file.

* **all**: every :class:`~pytest_gpuinfer.metrics.records.RequestRecord` stays in memory (about
  2.2 KB each) and the summary is exact. Short runs, the tests and the reports rely on it.
* **stream**: each client process folds finished records, a batch at a time, into a
  :class:`~pytest_gpuinfer.metrics.streaming.RunFold` (exact counts, t-digest percentiles, a
  time series) and, unless told not to, appends them to an Arrow IPC file
  (:mod:`pytest_gpuinfer.metrics.record_files`); then drops them. Memory stays flat however long
  the run.
* **auto** (the default): **all** up to :attr:`Retention.max_records` requests, **stream** past
  it. A run planned past the limit (an open loop's arrivals, a request cap, a finite workload)
  streams from its start; one that is not (a closed loop bounded by time) switches when it
  reaches the limit, folding the records it kept a few at a time alongside the new ones so the
  event loop never stalls.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pytest_gpuinfer.metrics import stats
from pytest_gpuinfer.metrics.record_files import (
    SUFFIX,
    RecordFileWriter,
    exact_percentile,
    read_records,
    spill_unavailable,
    warm_up,
)
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.streaming import RunFold, Timeline

KeepMode = Literal["auto", "all", "stream"]
KEEP_MODES: tuple[KeepMode, ...] = ("auto", "all", "stream")

DEFAULT_MAX_RECORDS = 50_000
"""Records an ``auto`` run keeps in memory (about 110 MB) before it streams."""

FOLD_BATCH = 256
"""Finished records folded at a time: 1 to 3 ms of the event loop."""

WRITE_BATCH = 1024
"""Records written to the record file at a time: zstd costs 6.5 us a record in batches of 256,
3.5 us in batches of 1,024 (64 bytes a record), for 2 to 4 ms of the event loop each time."""

_BACKLOG_PER_RECORD = 4
"""After a switch, kept records folded with each new one (the backlog drains 4x as fast)."""

_names = itertools.count()


@dataclass(frozen=True)
class Retention:
    """What a run keeps of its requests (``RunnerOptions.retention``; see the module doc)."""

    keep: KeepMode = "auto"
    max_records: int = DEFAULT_MAX_RECORDS
    """``auto``: records kept in memory before the run streams."""
    records_dir: Path | None = None
    """Where a streamed run writes its record files; None: a temporary folder that goes with
    the result."""
    spill: bool = True
    """False: a streamed run keeps its figures and no records at all."""
    window_s: float = 1.0
    """Width of the time series' windows (doubled as often as needed to keep at most 512)."""

    def __post_init__(self) -> None:
        if self.keep not in KEEP_MODES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_MODES)}, not {self.keep!r}")
        if self.max_records < 1:
            raise ValueError(f"max_records must be >= 1, not {self.max_records}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, not {self.window_s}")

    def streams_from_start(self, planned: int | None) -> bool:
        """Whether a run of ``planned`` requests (None: not known) streams from its start."""
        if self.keep == "stream":
            return True
        return self.keep == "auto" and planned is not None and planned > self.max_records


@dataclass(frozen=True)
class SinkPlan:
    """What one client process keeps, and how (picklable: it travels with a worker's plan)."""

    stream: bool
    """Stream from the start."""
    switch_at: float
    """Records kept in memory before switching to streaming (inf: never)."""
    first_offset_s: float
    """Offset of the run's first scheduled request from the start (the time series' origin)."""
    warmup_s: float
    slos: tuple[stats.RequestCheck, ...]
    window_s: float
    records_file: Path | None
    """This process's record file (None: no records are written)."""


@dataclass
class KeptRecords:
    """What one client process kept: its records, or its fold and record file."""

    records: list[RequestRecord] | None
    fold: RunFold | None = None
    files: list[Path] = field(default_factory=list)
    streamed_at: int | None = None
    """The request count at which this process switched to streaming (None: from the start)."""


class RecordSink:
    """Where a client process puts each request's record: kept, or folded and written."""

    def __init__(self, plan: SinkPlan) -> None:
        self.plan = plan
        self.records: list[RequestRecord] = []
        self._finished: set[int] = set()
        self._batch: list[RequestRecord] = []
        self._unwritten: list[RequestRecord] = []
        self._backlog: list[RequestRecord] = []
        self._fold: RunFold | None = None
        self._writer: RecordFileWriter | None = None
        self._start = 0.0
        self._switched_at: int | None = None
        self.streaming = False

    def prepare(self) -> None:
        """Before the start: import what streaming needs, so no import stalls the run."""
        if self.plan.stream or math.isfinite(self.plan.switch_at):
            import fastdigest  # noqa: F401

            if self.plan.records_file is not None:
                warm_up()

    def start(self, start_at: float) -> None:
        """The run starts at ``start_at``: open the fold (and the file) when streaming."""
        self._start = start_at
        if self.plan.stream:
            self._begin_streaming()

    def _begin_streaming(self) -> None:
        """From now on, fold and write finished records instead of keeping them."""
        plan = self.plan
        origin = self._start + plan.first_offset_s
        self._fold = RunFold(
            warmup_cutoff=origin + plan.warmup_s,
            slos=plan.slos,
            timeline=Timeline(origin, plan.window_s),
        )
        if plan.records_file is not None:
            self._writer = RecordFileWriter(plan.records_file)
        self.streaming = True

    def opened(self, record: RequestRecord) -> None:
        """A request was created (before it is sent)."""
        if self.streaming:
            return
        self.records.append(record)
        if len(self.records) >= self.plan.switch_at:
            self._switch()

    def _switch(self) -> None:
        """Past the memory limit: stream, and fold the kept records gradually."""
        self._switched_at = len(self.records)
        self._begin_streaming()
        self._backlog = [r for r in self.records if r.index in self._finished]
        self.records = []
        self._finished = set()

    def closed(self, record: RequestRecord) -> None:
        """A request finished (answered, failed or timed out)."""
        if not self.streaming:
            if self.plan.switch_at != math.inf:  # only a run that may switch needs to know
                self._finished.add(record.index)
            return
        batch = self._batch
        batch.append(record)
        backlog = self._backlog
        if backlog:
            batch.extend(backlog[-_BACKLOG_PER_RECORD:])
            del backlog[-_BACKLOG_PER_RECORD:]
        if len(batch) >= FOLD_BATCH:
            self._flush()

    def _flush(self, last: bool = False) -> None:
        """Fold the pending batch; write the folded records once there are enough (or last)."""
        batch, self._batch = self._batch, []
        assert self._fold is not None
        self._fold.add(batch)
        if self._writer is not None:
            self._unwritten.extend(batch)
            if last or len(self._unwritten) >= WRITE_BATCH:
                self._writer.write(self._unwritten)
                self._unwritten = []

    def finish(self) -> KeptRecords:
        """The run ended: what this process kept."""
        if not self.streaming:
            return KeptRecords(self.records)
        self._batch.extend(self._backlog)
        self._backlog = []
        self._flush(last=True)
        files = []
        if self._writer is not None:
            self._writer.close()
            files.append(self._writer.path)
        return KeptRecords(None, self._fold, files, self._switched_at)

    def abandon(self) -> None:
        """The run failed: close the record file (it is removed with its folder)."""
        if self._writer is not None:
            self._writer.close()


def sink_plans(
    retention: Retention,
    *,
    processes: int,
    planned: int | None,
    first_offset_s: float,
    warmup_s: float,
    slos: tuple[stats.RequestCheck, ...],
    records_dir: Path | None,
) -> list[SinkPlan]:
    """One sink plan per client process: streaming from the start or past its share of the
    memory limit, with its own record file in ``records_dir`` (None: no files)."""
    stream = retention.streams_from_start(planned)
    switch_at = math.inf  # a run planned within the limit never switches
    if retention.keep == "auto" and planned is None:
        switch_at = math.ceil(retention.max_records / processes)
    stem = f"records-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_names)}"
    plans = []
    for worker in range(processes):
        name = stem if processes == 1 else f"{stem}-w{worker}"
        plans.append(
            SinkPlan(
                stream=stream,
                switch_at=switch_at,
                first_offset_s=first_offset_s,
                warmup_s=warmup_s,
                slos=slos,
                window_s=retention.window_s,
                records_file=None if records_dir is None else records_dir / f"{name}{SUFFIX}",
            )
        )
    return plans


def spill_note(retention: Retention) -> str | None:
    """Why a streamed run under ``retention`` writes no records (None when it does)."""
    if not retention.spill:
        return "records not kept (Retention(spill=False))"
    reason = spill_unavailable()
    return None if reason is None else f"records not kept: {reason}"


@dataclass
class StreamedRecords:
    """A streamed run's figures (its fold) and where its records went, if anywhere."""

    fold: RunFold
    files: list[Path]
    note: str | None
    """Why the run wrote no records (None when it did)."""
    switched_at: int | None
    """Requests kept in memory before the run switched to streaming (None: from the start)."""
    warmup_cutoff: float
    folder: Path | None = None
    """A temporary folder holding ``files``, removed with this object (None: a chosen folder)."""
    _cleanup: weakref.finalize | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.folder is not None:
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)

    def read_records(self) -> Iterator[RequestRecord]:
        """The run's records from its files, one at a time (none when it wrote none)."""
        return read_records(self.files)

    def exact_percentile(self, metric: str, q: float, bounds: tuple[float, float]) -> float | None:
        """Percentile ``q`` of a summary distribution (``ttft``, ``itl_token``, ...) computed
        exactly from the record files in one bounded pass; None without files, or when the
        exact value lies outside the sketch's ``bounds``."""
        if not self.files:
            return None
        lo, hi = bounds
        for widen in (0.0, 4.0):  # the bounds are the digest's: try once more, four times wider
            width = (hi - lo) * widen
            found = exact_percentile(
                self.files, metric, q, self.warmup_cutoff, (lo - width, hi + width)
            )
            if found is not None:
                return found
        return None

    def describe(self) -> str:
        """One line: how the run was kept, and where its records are."""
        how = (
            "streamed from the start"
            if self.switched_at is None
            else f"streamed after {self.switched_at:,} requests kept in memory"
        )
        where = self.note or "records in " + ", ".join(str(p) for p in self.files)
        return f"figures {how} (percentiles are t-digest estimates); {where}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: how it was kept, the record files, the time series."""
        timeline = self.fold.timeline
        return {
            "switched_at": self.switched_at,
            "records_files": [str(p) for p in self.files],
            "note": self.note,
            "timeline": [row.to_dict() for row in timeline.rows()] if timeline else [],
        }


@dataclass
class Keeping:
    """How a run keeps its records: a sink plan per process, then what they kept, gathered."""

    retention: Retention
    sinks: list[SinkPlan]
    folder: Path | None
    """The temporary folder the record files go to (None: a chosen folder, or no files)."""
    note: str | None

    @classmethod
    def plan(
        cls,
        retention: Retention,
        *,
        processes: int,
        planned: int | None,
        first_offset_s: float,
        warmup_s: float,
        slos: tuple[stats.RequestCheck, ...],
    ) -> Keeping:
        """The sink plans of a run (and its records folder, made only when it may stream)."""
        note = spill_note(retention)
        folder = None
        records_dir = None
        may_stream = retention.streams_from_start(planned) or (
            retention.keep == "auto" and planned is None
        )
        if may_stream and note is None:
            if retention.records_dir is not None:
                records_dir = retention.records_dir
                records_dir.mkdir(parents=True, exist_ok=True)
            else:
                folder = records_dir = Path(tempfile.mkdtemp(prefix="gpuinfer-records-"))
        sinks = sink_plans(
            retention,
            processes=processes,
            planned=planned,
            first_offset_s=first_offset_s,
            warmup_s=warmup_s,
            slos=slos,
            records_dir=records_dir,
        )
        return cls(retention, sinks, folder, note)

    def gather(self, kept: list[KeptRecords]) -> tuple[list[RequestRecord], StreamedRecords | None]:
        """Every record (when each process kept them all) or the merged stream."""
        if all(k.records is not None for k in kept):
            self.discard()
            return [r for k in kept for r in k.records or ()], None
        streamed = [k for k in kept if k.fold is not None]
        fold = streamed[0].fold
        assert fold is not None
        for other in streamed[1:]:
            assert other.fold is not None
            fold.merge(other.fold)
        files = [path for k in streamed for path in k.files]
        leftover = [r for k in kept if k.records is not None for r in k.records]
        if leftover:  # a process that never reached its share of the limit
            fold.add(leftover)
            if files:
                writer = RecordFileWriter(files[0].with_name(files[0].stem + "-kept" + SUFFIX))
                writer.write(leftover)
                writer.close()
                files.append(writer.path)
        switched = [k.streamed_at for k in streamed if k.streamed_at is not None]
        return [], StreamedRecords(
            fold=fold,
            files=files,
            note=self.note,
            switched_at=sum(switched) if switched else None,
            warmup_cutoff=fold.warmup_cutoff,
            folder=self.folder,
        )

    def discard(self) -> None:
        """Remove the temporary records folder (the run kept every record in memory)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
