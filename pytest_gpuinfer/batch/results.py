"""What a batch run produced: rows checked one by one, throughput, timings, memory, leftovers.

A batch job sends rows (an id, a prompt of a known token length) through an engine and gets one
output row back per input row. :func:`check_rows` accounts for every row: lost (no output),
duplicated (more than one output), unexpected (an id that was never sent), and rows whose prompt
or output token counts differ from what was asked. :class:`BatchResult` carries the figures
(rows/s, output tokens/s, time to first result, total time, per-stage time, worker memory, the
run's wall time against the engine's own time) and turns into the online suites' formats: a
:class:`~pytest_gpuinfer.load.runner.LoadResult` (so the perf suite's matrix and ranking apply)
and plain JSON through :meth:`BatchResult.to_dict`.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_gpuinfer.load.runner import LoadResult, SelfCheck, SelfCheckLimits
from pytest_gpuinfer.metrics import stats
from pytest_gpuinfer.metrics.records import RequestRecord

MB = 1_000_000


class BatchError(RuntimeError):
    """A batch run could not complete (the message names the cause and the log tail)."""


class BatchTimeout(BatchError):
    """A batch run passed its hard time limit (the message says what it was waiting for)."""

    def __init__(self, message: str, *, waiting_for: str | None = None) -> None:
        super().__init__(message)
        self.waiting_for = waiting_for


@dataclass(frozen=True)
class InputRow:
    """One row sent: its id, its prompt and the prompt's length in the model's tokens."""

    id: int
    prompt: str
    prompt_tokens: int
    """Tokens the engine will see (the prompt plus special tokens such as BOS)."""


@dataclass(frozen=True)
class OutputRow:
    """One row returned by the engine, stamped when the driver received it."""

    id: int
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None
    done_s: float
    """Seconds from the job's start to when this row's result reached the driver."""
    where: str = ""
    """Which engine replica (Ray node and process) produced the row, when known."""


@dataclass(frozen=True)
class RowCheck:
    """Every row accounted for: what was lost, duplicated, unexpected or of the wrong length."""

    sent: int
    returned: int
    lost: tuple[int, ...]
    duplicated: tuple[int, ...]
    unexpected: tuple[int, ...]
    wrong_prompt_tokens: tuple[tuple[int, int, int], ...]
    """(id, expected, got) for rows whose prompt length differs from what was sent."""
    wrong_output_tokens: tuple[tuple[int, int, int], ...]
    """(id, expected, got) for rows whose output length differs from ``max_tokens``."""

    @property
    def ok(self) -> bool:
        """True when every row came back once, with the asked prompt and output lengths."""
        return not (
            self.lost
            or self.duplicated
            or self.unexpected
            or self.wrong_prompt_tokens
            or self.wrong_output_tokens
        )

    def describe(self) -> str:
        """One line: counts, and the first few offending ids of each kind."""

        def few(values: Sequence[Any]) -> str:
            shown = ", ".join(str(v) for v in values[:5])
            return shown + (f", ... ({len(values)} in all)" if len(values) > 5 else "")

        parts = [f"{self.returned}/{self.sent} rows returned"]
        if self.lost:
            parts.append(f"lost {few(self.lost)}")
        if self.duplicated:
            parts.append(f"duplicated {few(self.duplicated)}")
        if self.unexpected:
            parts.append(f"unexpected ids {few(self.unexpected)}")
        if self.wrong_prompt_tokens:
            parts.append(f"prompt tokens (id, want, got) {few(self.wrong_prompt_tokens)}")
        if self.wrong_output_tokens:
            parts.append(f"output tokens (id, want, got) {few(self.wrong_output_tokens)}")
        if self.ok:
            parts.append("every row once, with the asked token counts")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"ok": self.ok, **asdict(self)}


def check_rows(
    sent: Sequence[InputRow], returned: Sequence[OutputRow], *, max_tokens: int | None
) -> RowCheck:
    """Account for every row; ``max_tokens`` None skips the output-length check (EOS allowed)."""
    expected = {row.id: row for row in sent}
    counts = collections.Counter(row.id for row in returned)
    wrong_prompt: list[tuple[int, int, int]] = []
    wrong_output: list[tuple[int, int, int]] = []
    for row in returned:
        want = expected.get(row.id)
        if want is None:
            continue
        if row.prompt_tokens != want.prompt_tokens:
            wrong_prompt.append((row.id, want.prompt_tokens, row.prompt_tokens))
        if max_tokens is not None and row.output_tokens != max_tokens:
            wrong_output.append((row.id, max_tokens, row.output_tokens))
    return RowCheck(
        sent=len(sent),
        returned=len(returned),
        lost=tuple(sorted(set(expected) - set(counts))),
        duplicated=tuple(sorted(i for i, n in counts.items() if n > 1 and i in expected)),
        unexpected=tuple(sorted(i for i in counts if i not in expected)),
        wrong_prompt_tokens=tuple(wrong_prompt),
        wrong_output_tokens=tuple(wrong_output),
    )


@dataclass(frozen=True)
class Leftovers:
    """What a run left behind after its teardown (empty when it cleaned up)."""

    processes: tuple[str, ...] = ()
    """``pid name`` of Ray or vLLM processes of the run still alive after the teardown."""
    shm_files: tuple[str, ...] = ()
    """``/dev/shm`` files the run created that were still there after the teardown."""
    removed_shm_files: tuple[str, ...] = ()
    """``/dev/shm`` files the run created and the teardown removed (Ray/vLLM leave them)."""
    killed: tuple[str, ...] = ()
    """Processes the teardown had to kill (they did not exit on their own)."""

    @property
    def clean(self) -> bool:
        """True when no process and no shared-memory file of the run remains."""
        return not self.processes and not self.shm_files

    def describe(self) -> str:
        """One line."""
        if self.clean:
            extra = []
            if self.removed_shm_files:
                extra.append(f"removed {len(self.removed_shm_files)} /dev/shm file(s)")
            if self.killed:
                extra.append(f"killed {len(self.killed)} straggler(s)")
            return "nothing left behind" + (f" ({'; '.join(extra)})" if extra else "")
        return f"LEFT BEHIND: processes {list(self.processes)}; /dev/shm {list(self.shm_files)}"


@dataclass
class BatchResult:
    """One batch job: its rows, their check, and the figures measured around it."""

    engine: str
    """``vllm-offline``, ``ray-data`` or ``ray-data-llm``."""
    params: dict[str, Any]
    """What was asked: rows, prompt and output tokens, batch size, replicas, address."""
    rows: list[OutputRow]
    check: RowCheck
    wall_s: float
    """The job's own wall time, from submitting to the last row received."""
    engine_s: float | None
    """Time the engine itself spent generating (sum over replicas' calls), when reported."""
    engine_start_s: float | None = None
    """How long the engine took to load before this job (None when it was already loaded)."""
    first_result_s: float | None = None
    """From submitting the job to the first row's result reaching the driver."""
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per pipeline stage, as Ray Data reports them (empty where there are none)."""
    peak_memory_bytes: int | None = None
    baseline_memory_bytes: int | None = None
    memory_source: str = ""
    preemptions: int | None = None
    """Requests the engine preempted during the job (its KV cache ran out), when it reports it."""
    leftovers: Leftovers | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def completed_rows(self) -> int:
        """Rows returned (duplicates included; see ``check``)."""
        return len(self.rows)

    @property
    def output_tokens(self) -> int:
        """Output tokens over every returned row."""
        return sum(row.output_tokens for row in self.rows)

    @property
    def rows_per_s(self) -> float:
        """Rows returned per second of the job's wall time."""
        return self.completed_rows / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def output_tokens_per_s(self) -> float:
        """Output tokens per second of the job's wall time."""
        return self.output_tokens / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def engine_share(self) -> float | None:
        """Engine time over wall time (below 1: the rest went to the pipeline and transport)."""
        if self.engine_s is None or self.wall_s <= 0:
            return None
        return self.engine_s / self.wall_s

    def summary(self) -> stats.Summary:
        """The online suites' summary over the rows (one row = one request)."""
        return self.as_load_result().summary

    def as_load_result(self) -> LoadResult:
        """The rows as request records, so the perf suite's matrix and ranking apply.

        Every row is submitted at the job's start (time 0), and its result counts as its first
        and last token at once, when it reached the driver: TTFT and E2E are then the row's time
        to result, and throughput is rows (requests) and output tokens per second of wall time.
        """
        records = [
            RequestRecord(
                index=row.id,
                scheduled=0.0,
                sent=0.0,
                first_token=row.done_s,
                end=row.done_s,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.output_tokens,
                finish_reason=row.finish_reason,
                status=200,
            )
            for row in self.rows
        ]
        lost = [
            RequestRecord(index=i, scheduled=0.0, end=self.wall_s, error="lost")
            for i in self.check.lost
        ]
        summary = stats.summarize(records + lost)
        return LoadResult(
            records=records + lost,
            summary=summary,
            self_check=SelfCheck.from_figures([], SelfCheckLimits()),
            config={"kind": "batch", "engine": self.engine, **self.params},
        )

    def line(self) -> str:
        """One line of figures."""
        share = self.engine_share
        memory = (
            f", worker peak {self.peak_memory_bytes / MB:.0f} MB"
            if self.peak_memory_bytes is not None
            else ""
        )
        first = "-" if self.first_result_s is None else f"{self.first_result_s:.2f} s"
        return (
            f"{self.engine}: {self.completed_rows} rows in {self.wall_s:.2f} s -> "
            f"{self.rows_per_s:.2f} rows/s, {self.output_tokens_per_s:.1f} output tok/s; "
            f"first result {first}; engine time "
            + ("-" if self.engine_s is None else f"{self.engine_s:.2f} s")
            + ("" if share is None else f" ({share:.0%} of wall)")
            + memory
        )

    def describe(self) -> str:
        """Figures, row check, stages, memory and leftovers, one per line."""
        lines = [self.line(), f"rows: {self.check.describe()}"]
        if self.engine_start_s is not None:
            lines.append(f"engine start: {self.engine_start_s:.1f} s (not in the job's wall time)")
        if self.stages:
            lines.append(
                "stages (Ray Data): "
                + ", ".join(f"{name} {secs:.2f} s" for name, secs in self.stages.items())
            )
        if self.memory_source:
            lines.append(f"memory: {self.memory_source}")
        if self.preemptions:
            lines.append(f"preemptions: {self.preemptions} (the KV cache ran out)")
        if self.leftovers is not None:
            lines.append(f"teardown: {self.leftovers.describe()}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, beside the online suites' summary of the same rows."""

        def number(value: float | None) -> float | None:
            return value if value is not None and math.isfinite(value) else None

        return {
            "kind": "batch",
            "engine": self.engine,
            "params": dict(self.params),
            "rows": self.completed_rows,
            "output_tokens": self.output_tokens,
            "rows_per_s": number(self.rows_per_s),
            "output_tokens_per_s": number(self.output_tokens_per_s),
            "wall_s": self.wall_s,
            "engine_s": number(self.engine_s),
            "engine_share": number(self.engine_share),
            "engine_start_s": number(self.engine_start_s),
            "first_result_s": number(self.first_result_s),
            "stages_s": dict(self.stages),
            "peak_memory_bytes": self.peak_memory_bytes,
            "baseline_memory_bytes": self.baseline_memory_bytes,
            "memory_source": self.memory_source,
            "preemptions": self.preemptions,
            "check": self.check.to_dict(),
            "leftovers": None if self.leftovers is None else asdict(self.leftovers),
            "notes": list(self.notes),
            "summary": self.summary().to_dict(),
        }
