"""What a workload asked for beside what the server did: lengths, turns, embedding inputs.

* :func:`length_report` - per request, the asked prompt tokens (content before any chat template)
  and output tokens (``max_tokens``) against the achieved ones the server's ``usage`` reported, as
  distributions side by side, with the count of requests whose output differs from what was
  asked and the spread of (achieved - asked) prompt tokens: when every request is one user
  message, a spread of zero means every prompt arrived exactly as built, the constant being what
  the chat template adds.
* :func:`turn_stats` - TTFT, E2E and prompt tokens by turn index of a multi-turn workload, so a
  context that grows with each turn shows in the latency.
* :func:`embedding_figures` - inputs per second and latency of an embeddings run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_gpuinfer.metrics import stats, units
from pytest_gpuinfer.metrics.records import RequestRecord


@dataclass(frozen=True)
class LengthReport:
    """Asked vs achieved prompt and output lengths over the completed requests."""

    asked_input: stats.Distribution
    achieved_input: stats.Distribution
    input_offset: stats.Distribution
    """Achieved minus asked prompt tokens per request (the chat template's share when exact)."""
    asked_output: stats.Distribution
    achieved_output: stats.Distribution
    output_short: int
    """Completed requests that produced fewer output tokens than asked."""
    output_long: int
    """Completed requests that produced more output tokens than asked."""
    completed: int

    @property
    def output_exact(self) -> bool:
        """Every completed request with an asked output length produced exactly that many."""
        return self.asked_output.count > 0 and self.output_short == 0 and self.output_long == 0

    @property
    def input_exact(self) -> bool:
        """Every prompt differs from its asked length by the same number of template tokens."""
        offset = self.input_offset
        return offset.count > 0 and offset.min == offset.max

    def text(self) -> str:
        """Two lines: output then prompt lengths, asked vs achieved (min/p50/max)."""
        if not self.completed:
            return "lengths: no completed request"

        def span(d: stats.Distribution) -> str:
            """min/p50/max of a length distribution, or '-' without samples."""
            return "-" if not d.count else f"{d.min:.0f}/{d.p50:.0f}/{d.max:.0f}"

        output = (
            f"lengths: output tokens asked {span(self.asked_output)}, achieved "
            f"{span(self.achieved_output)} (min/p50/max, n={self.achieved_output.count})"
        )
        if self.asked_output.count:
            output += f"; {self.output_short} ended short, {self.output_long} ran long" + (
                " (exact)" if self.output_exact else ""
            )
        prompt = (
            f"         prompt tokens asked {span(self.asked_input)}, sent "
            f"{span(self.achieved_input)}"
        )
        if self.input_offset.count:
            offset = self.input_offset
            prompt += f"; sent - asked {offset.min:+.0f}..{offset.max:+.0f}" + (
                " (exact, the template's tokens)" if self.input_exact else ""
            )
        return f"{output}\n{prompt}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the achieved distributions keep their historical names)."""
        return {
            "output_tokens": self.achieved_output.to_dict(),
            "prompt_tokens": self.achieved_input.to_dict(),
            "asked_output_tokens": self.asked_output.to_dict(),
            "asked_prompt_tokens": self.asked_input.to_dict(),
            "prompt_offset_tokens": self.input_offset.to_dict(),
            "output_short": self.output_short,
            "output_long": self.output_long,
            "output_exact": self.output_exact,
            "input_exact": self.input_exact,
        }


def length_report(records: Sequence[RequestRecord]) -> LengthReport:
    """Asked vs achieved lengths of the completed requests (embedding requests left out)."""
    asked_in: list[float] = []
    got_in: list[float] = []
    offsets: list[float] = []
    asked_out: list[float] = []
    got_out: list[float] = []
    short = long = completed = 0
    for r in records:
        if not r.ok or r.inputs is not None:
            continue
        completed += 1
        if r.asked_input_tokens is not None:
            asked_in.append(r.asked_input_tokens)
        if r.prompt_tokens is not None:
            got_in.append(r.prompt_tokens)
            if r.asked_input_tokens is not None and r.turn in (None, 0):
                offsets.append(r.prompt_tokens - r.asked_input_tokens)
        if r.asked_output_tokens is not None:
            asked_out.append(r.asked_output_tokens)
        if r.completion_tokens is not None:
            got_out.append(r.completion_tokens)
            if r.asked_output_tokens is not None:
                short += r.completion_tokens < r.asked_output_tokens
                long += r.completion_tokens > r.asked_output_tokens
    return LengthReport(
        asked_input=stats.distribution(asked_in),
        achieved_input=stats.distribution(got_in),
        input_offset=stats.distribution(offsets),
        asked_output=stats.distribution(asked_out),
        achieved_output=stats.distribution(got_out),
        output_short=short,
        output_long=long,
        completed=completed,
    )


@dataclass(frozen=True)
class TurnStats:
    """Latency and context of the requests at one turn index of a conversation."""

    turn: int
    requests: int
    completed: int
    ttft: stats.Distribution
    e2e: stats.Distribution
    prompt_tokens: stats.Distribution

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "turn": self.turn,
            "requests": self.requests,
            "completed": self.completed,
            "ttft": self.ttft.to_dict(),
            "e2e": self.e2e.to_dict(),
            "prompt_tokens": self.prompt_tokens.to_dict(),
        }


def turn_stats(records: Sequence[RequestRecord]) -> list[TurnStats]:
    """Per turn index (records with a turn only), in order."""
    by_turn: dict[int, list[RequestRecord]] = defaultdict(list)
    for r in records:
        if r.turn is not None:
            by_turn[r.turn].append(r)
    out = []
    for turn in sorted(by_turn):
        group = by_turn[turn]
        latencies = [lat for r in group if (lat := stats.request_latencies(r)) is not None]
        out.append(
            TurnStats(
                turn=turn,
                requests=len(group),
                completed=len(latencies),
                ttft=stats.distribution(lat.ttft for lat in latencies if lat.ttft is not None),
                e2e=stats.distribution(lat.e2e for lat in latencies),
                prompt_tokens=stats.distribution(
                    float(r.prompt_tokens) for r in group if r.ok and r.prompt_tokens is not None
                ),
            )
        )
    return out


def turn_table(turns: Sequence[TurnStats]) -> str:
    """Per-turn TTFT and E2E (p50/p95 ms) and median prompt tokens, one line per turn."""
    lines = ["turn      n   ttft p50   ttft p95    e2e p50    e2e p95  prompt p50"]
    for t in turns:
        lines.append(
            f"{t.turn:>4}{t.completed:>7}{units.ms(t.ttft.p50):>11}{units.ms(t.ttft.p95):>11}"
            f"{units.ms(t.e2e.p50):>11}{units.ms(t.e2e.p95):>11}"
            f"{t.prompt_tokens.p50:>12.0f}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class EmbeddingFigures:
    """An embeddings run: inputs per request, inputs answered per second, request latency."""

    batch: stats.Distribution
    inputs: int
    inputs_per_s: float
    latency: stats.Distribution

    def text(self) -> str:
        """One line."""
        lat = self.latency
        return (
            f"embeddings: {self.inputs} inputs in batches of {self.batch.p50:.0f} "
            f"({self.inputs_per_s:.1f} inputs/s); latency p50/p95/p99 "
            f"{units.ms(lat.p50)}/{units.ms(lat.p95)}/{units.ms(lat.p99)} ms (n={lat.count})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "batch": self.batch.to_dict(),
            "inputs": self.inputs,
            "inputs_per_s": self.inputs_per_s,
            "latency": self.latency.to_dict(),
        }


def embedding_figures(
    records: Sequence[RequestRecord], summary: stats.Summary
) -> EmbeddingFigures | None:
    """Inputs per second over the summary's window, when the run sent embeddings requests."""
    embedding = [r for r in records if r.inputs is not None]
    if not embedding:
        return None
    done = [r for r in embedding if r.ok]
    inputs = sum(r.inputs or 0 for r in done)
    window = summary.duration_s
    return EmbeddingFigures(
        batch=stats.distribution(float(r.inputs or 0) for r in embedding),
        inputs=inputs,
        inputs_per_s=inputs / window if window > 0 else float("nan"),
        latency=summary.e2e,
    )
