"""Recorded traces: Mooncake JSONL and Azure CSV, replayed with their own lengths and prefixes.

Formats read:

* ``mooncake`` - JSONL rows ``{"timestamp": MS, "input_length": N, "output_length": M,
  "hash_ids": [...]}`` (timestamps in milliseconds). Each hash id names a block of
  ``block_tokens`` prompt tokens (512 in Mooncake's published traces); requests that share leading
  hash ids shared that prefix.
* ``azure`` - the Azure LLM inference trace CSV: ``TIMESTAMP`` (a date-time, or seconds),
  ``ContextTokens``, ``GeneratedTokens``. No prefix information: every prompt is its own.

:func:`load_trace` reads a file into a :class:`TraceFile` (times in seconds from the first
request, sorted). :class:`~pytest_gpuinfer.load.schedule.TraceTimes` replays its times;
:class:`Trace` builds its requests: a prompt of exactly ``input_length`` target tokens whose
blocks are made of one-token words drawn from the block's hash id, so equal ``hash_ids`` blocks
are equal token prefixes (an engine's prefix cache then sees what the recorded service saw), and
``output_length`` as ``max_tokens`` (exact with ``ignore_eos``). Only the rows the run sends are
built.
"""

from __future__ import annotations

import bisect
import csv
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from pytest_gpuinfer.load.client import RequestSpec
from pytest_gpuinfer.load.prompts import TokenWords, token_words
from pytest_gpuinfer.load.workloads.base import (
    WORKLOADS,
    PreparedWorkload,
    WorkloadContext,
    body_extras,
)

TraceFormat = Literal["mooncake", "azure"]
TRACE_FORMATS: tuple[TraceFormat, ...] = ("mooncake", "azure")
MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per hash id in Mooncake's published traces."""
_CACHE: dict[tuple[str, str, int | None, int, int], TraceFile] = {}


class TraceError(ValueError):
    """A trace file that cannot be read (the message names the file and the line)."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One recorded request: when it came, its lengths, its prompt's prefix blocks."""

    timestamp_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class TraceFile:
    """A trace's requests, sorted by time, in seconds from the first."""

    path: Path
    format: TraceFormat
    requests: tuple[TraceRequest, ...]
    block_tokens: int | None = None
    """Prompt tokens per hash id (None when the trace has no prefix blocks)."""

    def rows_between(self, start_s: float, end_s: float) -> range:
        """Indices of the requests with ``start_s <= timestamp < end_s``."""
        times = [r.timestamp_s for r in self.requests]
        return range(bisect.bisect_left(times, start_s), bisect.bisect_left(times, end_s))

    @property
    def duration_s(self) -> float:
        """Time from the first request to the last."""
        return self.requests[-1].timestamp_s if self.requests else 0.0

    def __repr__(self) -> str:
        return f"TraceFile({str(self.path)!r}, {self.format}, {len(self.requests)} requests)"


def guess_trace_format(path: Path) -> TraceFormat:
    """``azure`` for a CSV file, else ``mooncake``."""
    return "azure" if path.suffix.lower() == ".csv" else "mooncake"


def load_trace(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    block_tokens: int | None = None,
) -> TraceFile:
    """Read a trace file (format guessed from the suffix when not given)."""
    file = Path(path)
    if not file.is_file():
        raise TraceError(f"trace {file}: no such file")
    chosen = format or guess_trace_format(file)
    stat = file.stat()
    key = (str(file.resolve()), chosen, block_tokens, stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE.clear()  # one trace at a time
        _CACHE[key] = _load(file, chosen, block_tokens)
    return _CACHE[key]


def _load(file: Path, chosen: str, block_tokens: int | None) -> TraceFile:
    """Parse a trace file (see :func:`load_trace`)."""
    if chosen == "mooncake":
        rows = _mooncake(file)
        blocks = block_tokens or MOONCAKE_BLOCK_TOKENS
    elif chosen == "azure":
        rows = _azure(file)
        blocks = None
    else:
        raise TraceError(f"trace format {chosen!r} unknown; known: {', '.join(TRACE_FORMATS)}")
    if not rows:
        raise TraceError(f"trace {file} ({chosen}): no requests")
    rows.sort(key=lambda r: r.timestamp_s)
    first = rows[0].timestamp_s
    shifted = tuple(
        TraceRequest(r.timestamp_s - first, r.input_tokens, r.output_tokens, r.hash_ids)
        for r in rows
    )
    return TraceFile(file, chosen, shifted, blocks)  # type: ignore[arg-type]


def _number(row: dict[str, Any], key: str, where: str) -> float:
    """A numeric field of a row (TraceError naming it otherwise)."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TraceError(f"{where}: {key!r} must be a number, not {value!r}")
    return float(value)


def _mooncake(file: Path) -> list[TraceRequest]:
    """Rows of a Mooncake JSONL trace (timestamps in milliseconds)."""
    rows = []
    with file.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"trace {file} line {number}"
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise TraceError(f"{where}: not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise TraceError(f"{where}: not a JSON object")
            hash_ids = row.get("hash_ids", [])
            if not isinstance(hash_ids, list) or not all(isinstance(h, int) for h in hash_ids):
                raise TraceError(f"{where}: 'hash_ids' must be a list of integers")
            inputs = int(_number(row, "input_length", where))
            outputs = int(_number(row, "output_length", where))
            if inputs < 1 or outputs < 1:
                raise TraceError(f"{where}: lengths must be >= 1 ({inputs}, {outputs})")
            rows.append(
                TraceRequest(
                    _number(row, "timestamp", where) / 1000.0, inputs, outputs, tuple(hash_ids)
                )
            )
    return rows


def _timestamp(text: str, where: str) -> float:
    """Seconds from a TIMESTAMP cell: a number, or a date-time (fraction of any length)."""
    try:
        return float(text)
    except ValueError:
        pass
    head, _, fraction = text.strip().partition(".")
    try:
        moment = datetime.fromisoformat(head)
    except ValueError:
        raise TraceError(f"{where}: TIMESTAMP {text!r} is not a date-time") from None
    digits = "".join(ch for ch in fraction if ch.isdigit())
    return moment.timestamp() + (int(digits) / 10 ** len(digits) if digits else 0.0)


def _azure(file: Path) -> list[TraceRequest]:
    """Rows of an Azure LLM inference trace CSV."""
    rows = []
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        needed = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise TraceError(
                f"trace {file} (azure): missing columns {sorted(missing)}; has {reader.fieldnames}"
            )
        for number, row in enumerate(reader, 2):
            where = f"trace {file} line {number}"
            try:
                inputs, outputs = int(row["ContextTokens"]), int(row["GeneratedTokens"])
            except (TypeError, ValueError):
                raise TraceError(f"{where}: token counts are not integers") from None
            if inputs < 1 or outputs < 1:
                raise TraceError(f"{where}: lengths must be >= 1 ({inputs}, {outputs})")
            rows.append(TraceRequest(_timestamp(row["TIMESTAMP"], where), inputs, outputs))
    return rows


class _BlockTexts:
    """Prompt text per hash-id block, built once per id (a shorter block is a prefix)."""

    def __init__(self, words: TokenWords, block_tokens: int, seed: int) -> None:
        self.words = words
        self.block_tokens = block_tokens
        self.seed = seed
        self._blocks: dict[int, str] = {}
        self._word_len: dict[int, list[int]] = {}

    def block(self, hash_id: int, tokens: int) -> str:
        """The first ``tokens`` words of the block ``hash_id``."""
        full = self._blocks.get(hash_id)
        if full is None:
            full = self.words.text(self.block_tokens, f"{self.seed}:block:{hash_id}")
            self._blocks[hash_id] = full
        if tokens >= self.block_tokens:
            return full
        ends = self._word_len.get(hash_id)
        if ends is None:
            ends = _word_ends(full)
            self._word_len[hash_id] = ends
        return full[: ends[tokens - 1]] if tokens > 0 else ""


def _word_ends(text: str) -> list[int]:
    """End offset of each space-led word of ``text``."""
    starts = [i for i, ch in enumerate(text) if ch == " "]
    return [*starts[1:], len(text)]


def trace_prompt(
    request: TraceRequest, index: int, blocks: _BlockTexts | None, words: TokenWords, seed: int
) -> str:
    """A prompt of ``input_tokens`` words: the hash-id blocks in order, then words of its own."""
    need = request.input_tokens
    parts = []
    if blocks is not None:
        for hash_id in request.hash_ids:
            if need <= 0:
                break
            take = min(need, blocks.block_tokens)
            parts.append(blocks.block(hash_id, take))
            need -= take
    if need > 0:
        parts.append(words.text(need, f"{seed}:row:{index}"))
    return "".join(parts)


@WORKLOADS.register("trace")
@dataclass(frozen=True)
class Trace:
    """Each trace row's own lengths, its prompt built from its hash-id blocks."""

    path: str
    format: str | None = None
    block_tokens: int | None = None
    """Prompt tokens per hash id (Mooncake's 512 when None)."""
    ignore_eos: bool = False
    seed: int = 0
    extra_body: dict[str, Any] | None = None

    def load(self) -> TraceFile:
        """The trace file (for :class:`~pytest_gpuinfer.load.schedule.TraceTimes`)."""
        return load_trace(self.path, self.format, block_tokens=self.block_tokens)

    def prepare(self, context: WorkloadContext) -> PreparedWorkload:
        """Prompts for the rows the run sends, from ``context.first_item`` on."""
        trace = self.load()
        words = token_words(context.counter)
        blocks = (
            _BlockTexts(words, trace.block_tokens, self.seed)
            if trace.block_tokens is not None
            else None
        )
        first = context.first_item
        available = len(trace.requests) - first
        if available <= 0:
            raise TraceError(f"trace {self.path}: no row from {first} on")
        count = available if context.count is None else min(context.count, available)
        extras = body_extras(self.ignore_eos, self.extra_body)
        specs = []
        for index in range(first, first + count):
            request = trace.requests[index]
            specs.append(
                RequestSpec(
                    trace_prompt(request, index, blocks, words, self.seed),
                    request.output_tokens,
                    stream=context.stream,
                    extra_body=extras,
                    input_tokens=request.input_tokens,
                )
            )
        span = trace.requests[first + count - 1].timestamp_s - trace.requests[first].timestamp_s
        info = {
            "name": "trace",
            "path": str(self.path),
            "format": trace.format,
            "rows": len(trace.requests),
            "first_row": first,
            "sent_rows": count,
            "block_tokens": trace.block_tokens,
            "exact": words.exact,
            "source": words.source,
            "ignore_eos": self.ignore_eos,
        }
        text = (
            f"trace {self.path} ({trace.format}): rows {first}..{first + count - 1} of "
            f"{len(trace.requests)} ({span:.1f} s recorded), prompts "
            f"{'exact' if words.exact else 'APPROXIMATE'} ({words.source})"
            + (f", {trace.block_tokens}-token prefix blocks" if blocks is not None else "")
        )
        return PreparedWorkload(specs, info, text, finite=True)


def speed_for(trace: TraceFile, rate: float) -> float:
    """The speed factor that replays ``trace`` at a mean of ``rate`` requests per second."""
    duration = trace.duration_s
    if duration <= 0 or not math.isfinite(duration):
        raise TraceError(f"trace {trace.path}: all requests at one time; no rate to scale")
    return rate * duration / max(1, len(trace.requests) - 1)
