"""Request records on disk: a columnar Arrow IPC file (zstd) written batch by batch during a run.

A streamed run keeps no records in memory; when it keeps them at all, each client process appends
them here as they finish, 1,024 at a time. The format was chosen by measurement
(``bench/bench_memory.py --spill``, docs/workloads.md): Arrow IPC with zstd, about 3.5 us and 64
bytes per 16-chunk request, read by pyarrow, pandas, polars and DuckDB alike. pyarrow is the
``records`` extra; without it a streamed run keeps its figures but no records
(:func:`spill_unavailable` says why).

Columns are the :class:`~pytest_gpuinfer.metrics.records.RequestRecord` fields (the conversation
text kept between turns is left out); ``chunk_times`` and ``chunk_tokens`` are list columns.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pytest_gpuinfer.metrics import stats
from pytest_gpuinfer.metrics.records import RequestRecord

SUFFIX = ".arrow"
_LEFT_OUT = {"response_text"}
_FLOATS = {"scheduled", "sent", "first_byte", "first_token", "end"}
_STRINGS = {"error", "error_message", "finish_reason", "request_id"}
_LISTS = {"chunk_times", "chunk_tokens"}
FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(RequestRecord) if f.name not in _LEFT_OUT
)


def spill_unavailable() -> str | None:
    """Why records cannot be written to disk here (None when they can)."""
    if importlib.util.find_spec("pyarrow") is None:
        return "pyarrow is not installed (pip install 'pytest-gpuinfer[records]')"
    return None


def _schema() -> Any:
    """The Arrow schema of a record file."""
    import pyarrow as pa

    columns = []
    for name in FIELDS:
        if name in _FLOATS:
            kind = pa.float64()
        elif name in _STRINGS:
            kind = pa.string()
        elif name == "chunk_times":
            kind = pa.list_(pa.float64())
        elif name == "chunk_tokens":
            kind = pa.list_(pa.int32())
        else:
            kind = pa.int64()
        columns.append(pa.field(name, kind))
    return pa.schema(columns)


def warm_up() -> None:
    """Write one record to memory: pyarrow's first zstd batch costs about 200 ms, which must not
    fall inside a run."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    schema = _schema()
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, schema, options=ipc.IpcWriteOptions(compression="zstd")) as writer:
        record = RequestRecord(0, 0.0, chunk_times=[0.0], chunk_tokens=[1])
        columns = {name: [getattr(record, name)] for name in FIELDS}
        writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=schema))


class RecordFileWriter:
    """Appends batches of records to one Arrow IPC file."""

    def __init__(self, path: Path) -> None:
        import pyarrow.ipc as ipc

        self.path = path
        self.count = 0
        self._schema = _schema()
        self._sink = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._writer = ipc.new_file(
            self._sink, self._schema, options=ipc.IpcWriteOptions(compression="zstd")
        )

    def write(self, records: Sequence[RequestRecord]) -> None:
        """Append a batch of records."""
        if not records:
            return
        import pyarrow as pa

        columns = {name: [getattr(r, name) for r in records] for name in FIELDS}
        self._writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=self._schema))
        self.count += len(records)

    def close(self) -> None:
        """Finish the file (its footer makes it readable)."""
        try:
            self._writer.close()
        finally:
            self._sink.close()


def _batches(paths: Iterable[Path], columns: Sequence[str] | None = None) -> Iterator[Any]:
    """Each record batch of each file, memory-mapped, cut to ``columns`` when given."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    for path in paths:
        with pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                yield batch.select(list(columns)) if columns is not None else batch


def read_records(paths: Iterable[Path]) -> Iterator[RequestRecord]:
    """The records in the files, one at a time (a streamed run's records, read back)."""
    for batch in _batches(paths):
        for row in batch.to_pylist():
            yield RequestRecord(**row)


def count_records(paths: Iterable[Path]) -> int:
    """How many records the files hold."""
    return sum(batch.num_rows for batch in _batches(paths, ["index"]))


def _floats(column: Any) -> stats.FloatArray:
    """An Arrow float column as an array, nulls as NaN."""
    out: stats.FloatArray = column.to_numpy(zero_copy_only=False).astype(np.float64)
    return out


def metric_values(
    paths: Iterable[Path], metric: str, cutoff: float
) -> Iterator[tuple[stats.FloatArray, stats.IntArray | None]]:
    """Per batch, the samples of a latency metric (and their weights for per-token ITL) of the
    completed requests scheduled at or after ``cutoff``, as ``summarize`` defines them."""
    import pyarrow.compute as pc

    names = ["scheduled", "sent", "first_token", "end", "error", "completion_tokens"]
    if metric.startswith("itl"):
        names += ["chunk_times", "chunk_tokens"]
    for batch in _batches(paths, names):
        scheduled = _floats(batch.column("scheduled"))
        end = _floats(batch.column("end"))
        ok = (
            (scheduled >= cutoff)
            & ~np.isnan(end)
            & np.asarray(batch.column("error").is_null().to_numpy(zero_copy_only=False))
        )
        if metric in ("ttft", "e2e", "queue", "tpot"):
            first = _floats(batch.column("first_token"))
            values = {
                "ttft": first - scheduled,
                "e2e": end - scheduled,
                "queue": _floats(batch.column("sent")) - scheduled,
            }.get(metric)
            if metric == "tpot":
                tokens = _floats(batch.column("completion_tokens"))
                if np.isnan(tokens).any():  # no usage: the chunks' own counts
                    counted = pc.list_value_length(batch.column("chunk_tokens"))
                    tokens = np.where(np.isnan(tokens), _floats(counted), tokens)
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = np.where(tokens >= 2, (end - first) / (tokens - 1), np.nan)
            assert values is not None
            values = values[ok & ~np.isnan(values)]
            yield values, None
            continue
        kept = batch.filter(ok)
        times = kept.column("chunk_times")
        lengths = pc.list_value_length(times).to_numpy(zero_copy_only=False)
        flat_times = _floats(pc.list_flatten(times))
        flat_tokens = pc.list_flatten(kept.column("chunk_tokens")).to_numpy(zero_copy_only=False)
        if flat_tokens.size != flat_times.size:
            flat_tokens = np.ones(flat_times.size, dtype=np.int64)
        many = lengths >= 2
        keep = np.repeat(many, lengths)
        gaps, per_token, later = stats._itl_arrays(
            flat_times[keep].tolist(), flat_tokens[keep].tolist(), lengths[many].tolist()
        )
        if metric == "itl_chunk":
            yield gaps, None
        else:
            yield per_token, later


def exact_percentile(
    paths: Sequence[Path], metric: str, q: float, cutoff: float, bounds: tuple[float, float]
) -> float | None:
    """The exact percentile ``q`` (0..100) of a metric over the records in ``paths``, read in
    one pass that keeps only the samples within ``bounds`` (a sketch's); None when the exact
    value turns out to lie outside them."""
    lo, hi = bounds
    below = 0
    kept: list[stats.FloatArray] = []
    kept_weights: list[stats.IntArray] = []
    total = 0
    for values, weights in metric_values(paths, metric, cutoff):
        w = np.ones(values.size, dtype=np.int64) if weights is None else weights
        total += int(w.sum())
        below += int(w[values < lo].sum())
        inside = (values >= lo) & (values <= hi)
        kept.append(values[inside])
        kept_weights.append(w[inside])
    if total == 0:
        return None
    values = np.concatenate(kept)
    weights = np.concatenate(kept_weights)
    rank = (total - 1) * q / 100.0
    first, second = math.floor(rank), min(math.floor(rank) + 1, total - 1)
    if values.size == 0 or first < below or second >= below + int(weights.sum()):
        return None
    order = np.argsort(values, kind="stable")
    ordered, cum = values[order], np.cumsum(weights[order]) + below
    a = float(ordered[np.searchsorted(cum, first, side="right")])
    b = float(ordered[np.searchsorted(cum, second, side="right")])
    t = rank - first
    return b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t
