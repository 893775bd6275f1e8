"""What a load run under a fault (or a kill) came to: every request counted, none miscounted.

The verdict every fault and kill test states: each request ended (no hang), each failure has a
class (``connect``, ``timeout``, ``http``, ``stream``, ``server``, ``disconnect``), and no request
counts as a success unless it carried the whole answer (its finish reason and, when the test
asked for an exact length, that many tokens).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuinfer.metrics.records import RequestRecord


@dataclass(frozen=True)
class FaultOutcome:
    """Counts of a run's requests by how they ended, and the ones that break the rules."""

    requests: int
    ok: int
    failed: dict[str, int]
    """Failed requests by error class."""
    unended: list[int] = field(default_factory=list)
    """Indexes of requests with no end time (a hang the client did not close)."""
    unclassified: list[int] = field(default_factory=list)
    """Indexes of failed requests without an error class."""
    false_successes: list[str] = field(default_factory=list)
    """Requests counted ok whose answer was not whole, each with what was missing."""

    @property
    def failures(self) -> int:
        """How many requests failed (any class)."""
        return sum(self.failed.values())

    def problems(self) -> list[str]:
        """What breaks the rules above; empty when the run was counted honestly."""
        found: list[str] = []
        if self.unended:
            found.append(f"{len(self.unended)} request(s) never ended: {self.unended[:10]}")
        if self.unclassified:
            found.append(
                f"{len(self.unclassified)} failed request(s) have no error class: "
                f"{self.unclassified[:10]}"
            )
        if self.false_successes:
            found.append(
                f"{len(self.false_successes)} request(s) counted ok without a whole answer: "
                + "; ".join(self.false_successes[:5])
            )
        return found

    def line(self) -> str:
        """One line: ``40 requests: 35 ok, 5 failed (disconnect 5)``."""
        classes = ", ".join(f"{name} {count}" for name, count in sorted(self.failed.items()))
        failed = f", {self.failures} failed ({classes})" if self.failures else ""
        return f"{self.requests} requests: {self.ok} ok{failed}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for reports."""
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failed": dict(self.failed),
            "unended": list(self.unended),
            "unclassified": list(self.unclassified),
            "false_successes": list(self.false_successes),
        }


def count_outcome(
    records: Sequence[RequestRecord], *, expected_tokens: int | None = None
) -> FaultOutcome:
    """Count ``records`` by outcome; ``expected_tokens``: every success must carry that many."""
    failed: Counter[str] = Counter()
    unended: list[int] = []
    unclassified: list[int] = []
    false_successes: list[str] = []
    ok = 0
    for record in records:
        if record.end is None:
            unended.append(record.index)
        elif record.error is not None:
            failed[record.error] += 1
        elif record.ok:
            ok += 1
            missing = _missing(record, expected_tokens)
            if missing:
                false_successes.append(f"#{record.index} {missing}")
        else:
            unclassified.append(record.index)
    return FaultOutcome(len(records), ok, dict(failed), unended, unclassified, false_successes)


def _missing(record: RequestRecord, expected_tokens: int | None) -> str | None:
    """What a request counted ok lacks of a whole answer, or None."""
    if record.finish_reason is None:
        return "no finish_reason"
    if expected_tokens is not None and record.completion_tokens != expected_tokens:
        return f"{record.completion_tokens} of {expected_tokens} tokens"
    return None
