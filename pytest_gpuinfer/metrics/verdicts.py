"""The one verdict of the whole package: PASS, FAIL or NOT JUDGED, never ambiguous.

Every judgement the suites print (an SLO, a throughput spread, a leak, a recovery time, a
boundary's failure class, a regression, a matrix cell, an SLA window...) is a :class:`Verdict`:
what was judged, its :class:`Status`, the measured figure, the limit and where the limit came
from. A measurement that cannot be judged (no limit, no baseline, too few samples, a run too
noisy to tell the server from the machine, no data) is NOT JUDGED with its :class:`Unjudged`
reason and its figures; it is never counted among the passed verdicts. Only the plugin layer
decides what NOT JUDGED does to a test (pass, retry, skip, or fail when judgement is required).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """The outcome of a verdict."""

    PASS = "PASS"
    FAIL = "FAIL"
    NOT_JUDGED = "NOT JUDGED"


class Unjudged(StrEnum):
    """Why a measurement was reported but not judged."""

    NO_LIMIT = "no limit"
    """Nothing to judge it by: no SLO, no marker limit, no default for this target."""
    NO_BASELINE = "no baseline"
    """A comparison with nothing stored to compare with."""
    TOO_FEW_SAMPLES = "too few samples"
    """Fewer samples than the statistic needs (a p99 from 20 requests is their maximum)."""
    NOISY = "too noisy"
    """The client was the bottleneck or the machine was busy: the figure measures the machine."""
    NO_DATA = "no data"
    """The figure could not be measured (no readings where it needs them)."""
    WITHIN_ESTIMATE_ERROR = "within estimate error"
    """A streamed run's estimated percentile could be either side of the limit, and no record
    file was kept to compute it exactly."""


@dataclass(frozen=True)
class Verdict:
    """One judged (or not judged) figure: what, the status, measured vs limit, and why."""

    name: str
    status: Status
    message: str
    """Measured vs limit in words, as a failure message shows it."""
    measured: float | None = None
    limit: float | None = None
    unit: str = ""
    """Unit of ``measured`` and ``limit``: s, fraction, req/s, MB, MB/request, ..."""
    source: str = ""
    """Where the limit came from: a marker, an option, a default and its reason."""
    reason: Unjudged | None = None
    """Why NOT JUDGED (None for PASS and FAIL)."""
    count: int | None = None
    """Samples behind the measured figure, when it is a statistic."""

    def __post_init__(self) -> None:
        """NOT JUDGED needs its reason; PASS and FAIL have none."""
        if (self.status is Status.NOT_JUDGED) != (self.reason is not None):
            raise ValueError(f"verdict {self.name!r}: a reason goes with NOT JUDGED, and only it")

    @property
    def passed(self) -> bool:
        """True for PASS only (NOT JUDGED never counts as passed)."""
        return self.status is Status.PASS

    @property
    def failed(self) -> bool:
        """True for FAIL."""
        return self.status is Status.FAIL

    @property
    def judged(self) -> bool:
        """False for NOT JUDGED."""
        return self.status is not Status.NOT_JUDGED

    @property
    def noisy(self) -> bool:
        """NOT JUDGED because the client or the machine, not the server, set the figure."""
        return self.reason is Unjudged.NOISY

    @property
    def label(self) -> str:
        """PASS, FAIL or NOT JUDGED (with its reason)."""
        return self.status.value if self.reason is None else f"NOT JUDGED ({self.reason.value})"

    def line(self) -> str:
        """``FAIL  name: message`` for tables and failure messages."""
        return f"{self.label}  {self.name}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (schema ``$defs/verdict``); ``passed`` is true for PASS only."""
        return {
            "name": self.name,
            "status": self.status.value,
            "passed": self.passed,
            "message": self.message,
            "measured": _finite(self.measured),
            "limit": _finite(self.limit),
            "unit": self.unit,
            "source": self.source,
            "reason": None if self.reason is None else self.reason.value,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """A verdict from its JSON form; reports of schema 1.0 (``passed``, ``judged``, ``slo``)
        read as PASS or FAIL, or NOT JUDGED where they said ``judged: false``."""
        reason = data.get("reason")
        if "status" in data:
            status = Status(data["status"])
        elif data.get("judged") is False:
            status, reason = Status.NOT_JUDGED, reason or Unjudged.NOISY.value
        else:
            status = Status.PASS if data.get("passed") else Status.FAIL
        return cls(
            name=str(data.get("name") or data.get("slo") or "?"),
            status=status,
            message=str(data.get("message") or ""),
            measured=_number(data.get("measured")),
            limit=_number(data.get("limit")),
            unit=str(data.get("unit") or ""),
            source=str(data.get("source") or ""),
            reason=None if status is not Status.NOT_JUDGED else Unjudged(str(reason)),
            count=data.get("count") if isinstance(data.get("count"), int) else None,
        )


def judged(
    name: str,
    passed: bool,
    message: str,
    *,
    measured: float | None = None,
    limit: float | None = None,
    unit: str = "",
    source: str = "",
    count: int | None = None,
) -> Verdict:
    """A PASS or FAIL verdict."""
    status = Status.PASS if passed else Status.FAIL
    return Verdict(name, status, message, measured, limit, unit, source, None, count)


def not_judged(
    name: str,
    reason: Unjudged,
    message: str,
    *,
    measured: float | None = None,
    limit: float | None = None,
    unit: str = "",
    source: str = "",
    count: int | None = None,
) -> Verdict:
    """A NOT JUDGED verdict: the figures, and why they could not be judged."""
    return Verdict(name, Status.NOT_JUDGED, message, measured, limit, unit, source, reason, count)


@dataclass(frozen=True)
class Tally:
    """How many verdicts passed, failed and were not judged."""

    passed: int = 0
    failed: int = 0
    not_judged: int = 0

    @property
    def total(self) -> int:
        """All verdicts."""
        return self.passed + self.failed + self.not_judged

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.passed + other.passed,
            self.failed + other.failed,
            self.not_judged + other.not_judged,
        )

    def text(self) -> str:
        """``3/5 passed, 1 failed, 1 NOT JUDGED`` ('-' without verdicts)."""
        if not self.total:
            return "-"
        parts = [f"{self.passed}/{self.total} passed"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.not_judged:
            parts.append(f"{self.not_judged} NOT JUDGED")
        return ", ".join(parts)


def tally(verdicts: Iterable[Verdict]) -> Tally:
    """Count verdicts by status."""
    counts = {status: 0 for status in Status}
    for verdict in verdicts:
        counts[verdict.status] += 1
    return Tally(counts[Status.PASS], counts[Status.FAIL], counts[Status.NOT_JUDGED])


def all_passed(verdicts: Iterable[Verdict]) -> bool:
    """True when every verdict is PASS (a NOT JUDGED one is not a pass)."""
    return all(v.passed for v in verdicts)


def failures(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """The FAIL verdicts."""
    return [v for v in verdicts if v.failed]


def _finite(value: float | None) -> float | None:
    """NaN and infinities as None (strict JSON)."""
    return value if value is None or math.isfinite(value) else None


def _number(value: Any) -> float | None:
    """A JSON number as float, anything else as None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
