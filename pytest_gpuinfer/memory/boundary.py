"""OOM boundary search: the largest value of one dimension a target handles, in few probes.

Engine-agnostic: a *probe* is any callable taking the value to try (batch size, prompt length,
max_tokens, ...) and returning a :class:`ProbeResult` whose :class:`Outcome` classifies what
happened. The search doubles from ``start`` until a probe fails (or ``max_value`` passes), then
bisects between the last passing and the first failing value, so it needs about
``2 * log2(max_value / start)`` probes. After every failing probe a *canary* must succeed (the
target recovered); when it does not, the search stops and says "not recoverable", with the log
tail. The batch suite reuses this module with its own probes.

:func:`class_verdict` judges what a search is named for: the failure class past the boundary.
A search expects certain classes (a clean 4xx for an over-long prompt; a clean 4xx or a
preemption storm for a batch too big for the KV cache); any other failing probe (a 5xx, a hang,
a crash) fails it, naming the value and what was seen, and so does a target that did not recover.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pytest_gpuinfer.metrics.verdicts import Unjudged, Verdict, judged, not_judged


class Outcome(StrEnum):
    """What one probe did to the target."""

    OK = "ok"
    CLIENT_ERROR = "clean 4xx"
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    CRASH = "crash (health lost)"
    PREEMPTION_STORM = "preemption storm"

    @property
    def failed(self) -> bool:
        """Every outcome but OK counts as past the boundary."""
        return self is not Outcome.OK


SEVERITY = (
    Outcome.CRASH,
    Outcome.TIMEOUT,
    Outcome.SERVER_ERROR,
    Outcome.CLIENT_ERROR,
    Outcome.PREEMPTION_STORM,
    Outcome.OK,
)
"""Most severe first: when one probe saw several outcomes, it is classified by the worst."""


def worst(outcomes: Sequence[Outcome]) -> Outcome:
    """The most severe of ``outcomes`` (OK for an empty sequence)."""
    for outcome in SEVERITY:
        if outcome in outcomes:
            return outcome
    return Outcome.OK


@dataclass(frozen=True)
class ProbeResult:
    """One probe: the value tried, its outcome class, and what was seen."""

    value: int
    outcome: Outcome
    detail: str = ""
    seconds: float = 0.0
    recovered: bool | None = None
    """After a failing probe: did the canary succeed? None when no canary ran."""


@dataclass
class BoundaryResult:
    """The search's answer for one dimension, with every probe it took."""

    dimension: str
    start: int
    max_value: int
    probes: list[ProbeResult] = field(default_factory=list)
    recoverable: bool = True
    log_tail: str = ""
    stopped_reason: str | None = None

    @property
    def probe_count(self) -> int:
        """How many probes the search took (canaries not counted)."""
        return len(self.probes)

    @property
    def safe_value(self) -> int | None:
        """The largest value that passed; None when nothing did."""
        passed = [p.value for p in self.probes if not p.outcome.failed]
        return max(passed) if passed else None

    @property
    def first_failure(self) -> ProbeResult | None:
        """The smallest value that failed (the boundary), or None when nothing failed."""
        failed = [p for p in self.probes if p.outcome.failed]
        return min(failed, key=lambda p: p.value) if failed else None

    @property
    def exact(self) -> bool:
        """True when the safe value and first failure are adjacent (or max_value passed)."""
        failure = self.first_failure
        safe = self.safe_value
        if failure is None:
            return safe == self.max_value
        return (safe or 0) + 1 >= failure.value

    def row(self) -> str:
        """One table row: dimension, safe limit, first failing value and its class, probes."""
        failure = self.first_failure
        safe = "none" if self.safe_value is None else str(self.safe_value)
        if failure is None:
            failing = f"none up to {self.max_value}"
        else:
            failing = f"{failure.value} ({failure.outcome.value})"
        note = "" if self.recoverable else "  NOT RECOVERABLE"
        if self.stopped_reason and self.recoverable:
            note = f"  ({self.stopped_reason})"
        return f"{self.dimension:<16} {safe:>10} {failing:>28} {self.probe_count:>7}{note}"

    def describe(self) -> str:
        """The row plus each probe, and the log tail when the target did not recover."""
        lines = [self.row()]
        for p in self.probes:
            canary = (
                "" if p.recovered is None else ("; canary ok" if p.recovered else "; canary FAILED")
            )
            lines.append(
                f"    {p.value:>8}: {p.outcome.value} in {p.seconds:.1f} s{canary}"
                + (f" - {p.detail}" if p.detail else "")
            )
        if not self.recoverable:
            lines.append("not recoverable: the canary request failed after the last probe")
            lines.append("--- log tail ---")
            lines.append(self.log_tail.rstrip() or "(no log available)")
        return "\n".join(lines)


GRACEFUL = frozenset({Outcome.CLIENT_ERROR, Outcome.PREEMPTION_STORM})
"""The failure classes of a target that refuses or queues work it cannot hold, and stays up."""


def class_verdict(
    result: BoundaryResult, expected: Collection[Outcome], *, source: str = ""
) -> Verdict:
    """Every failing probe of ``result`` in ``expected``, and the target recovered after each.

    NOT JUDGED when nothing failed up to ``max_value`` (no failure class to judge).
    """
    name = f"{result.dimension} failure class"
    wanted = " or ".join(sorted(o.value for o in expected))
    failed = [p for p in result.probes if p.outcome.failed]
    first = result.first_failure
    if not result.recoverable:
        return judged(
            name,
            False,
            f"{result.stopped_reason}: the canary failed after the probe at "
            f"{result.probes[-1].value} ({result.probes[-1].outcome.value})",
            measured=None if first is None else first.value,
            unit=result.dimension,
            source=source,
        )
    if first is None:
        return not_judged(
            name,
            Unjudged.NO_DATA,
            f"no {result.dimension} up to {result.max_value} failed: no failure class to judge "
            f"(expected {wanted})",
            unit=result.dimension,
            source=source,
        )
    unexpected = sorted((p for p in failed if p.outcome not in expected), key=lambda p: p.value)
    if unexpected:
        head = unexpected[0]
        message = f"expected {wanted} past the boundary, got {head.value}: {head.outcome.value}"
        message += f" ({head.detail})" if head.detail else ""
        if len(unexpected) > 1:
            rest = ", ".join(f"{p.value}: {p.outcome.value}" for p in unexpected[1:])
            message += f"; also {rest}"
    else:
        message = f"first failure at {first.value}: {first.outcome.value}, as expected ({wanted})"
    return judged(
        name,
        not unexpected,
        message,
        measured=first.value,
        unit=result.dimension,
        source=source,
    )


TABLE_HEADER = f"{'dimension':<16} {'safe limit':>10} {'first failing (class)':>28} {'probes':>7}"


def format_table(results: Sequence[BoundaryResult]) -> str:
    """A table of safe limits, first failing values with their class, and probe counts."""
    return "\n".join([TABLE_HEADER, *(r.row() for r in results)])


def search_boundary(
    dimension: str,
    probe: Callable[[int], ProbeResult],
    *,
    start: int,
    max_value: int,
    canary: Callable[[], bool] | None = None,
    log_tail: Callable[[], str] = lambda: "",
    max_probes: int = 32,
    resolution: int = 1,
    progress: Callable[[str], object] | None = None,
) -> BoundaryResult:
    """Doubling from ``start`` to the first failure, then bisection to ``resolution``.

    ``progress`` gets one line per probe (e.g. a terminal progress line's ``update``).
    """
    if start < 1 or max_value < start:
        raise ValueError(f"need 1 <= start <= max_value, got start={start}, max={max_value}")
    result = BoundaryResult(dimension=dimension, start=start, max_value=max_value)

    def attempt(value: int) -> bool:
        """Probe ``value``; on failure run the canary. False when the search must stop."""
        began = time.monotonic()
        outcome = probe(value)
        seconds = outcome.seconds or time.monotonic() - began
        recovered: bool | None = None
        if outcome.outcome.failed and canary is not None:
            recovered = canary()
        result.probes.append(
            ProbeResult(value, outcome.outcome, outcome.detail, seconds, recovered)
        )
        if progress is not None:
            progress(f"{dimension}: probe {len(result.probes)} at {value}: {outcome.outcome.value}")
        if recovered is False:
            result.recoverable = False
            result.log_tail = log_tail()
            result.stopped_reason = f"target not recoverable after {value}"
            return False
        return True

    low, high, value = 0, None, start
    while True:  # doubling
        if result.probe_count >= max_probes:
            result.stopped_reason = f"probe budget of {max_probes} spent"
            return result
        if not attempt(value):
            return result
        if result.probes[-1].outcome.failed:
            high = value
            break
        low = value
        if value >= max_value:
            return result
        value = min(value * 2, max_value)
    while high - low > resolution:  # bisection
        if result.probe_count >= max_probes:
            result.stopped_reason = f"probe budget of {max_probes} spent"
            return result
        middle = (low + high) // 2
        if not attempt(middle):
            return result
        if result.probes[-1].outcome.failed:
            high = middle
        else:
            low = middle
    return result


def recommend_batch(result: BoundaryResult, *, headroom: float = 0.8) -> str:
    """A sentence recommending the largest safe batch (with headroom below the boundary)."""
    safe = result.safe_value
    failure = result.first_failure
    if safe is None:
        return f"no safe {result.dimension}: even {result.start} failed" + (
            f" ({failure.outcome.value})" if failure else ""
        )
    suggested = max(1, int(safe * headroom)) if failure is not None else safe
    if failure is None:
        return (
            f"largest safe {result.dimension}: at least {safe} (nothing failed up to "
            f"{result.max_value}); the boundary lies beyond the search range"
        )
    return (
        f"largest safe {result.dimension}: {safe}; {failure.value} gave "
        f"{failure.outcome.value}. Recommended: {suggested} ({headroom:.0%} of the safe "
        "value, headroom for longer prompts and traffic noise)"
    )
