"""What verdicts do to a test; the one place that decides it.

* FAIL fails the test, listing each failed verdict with its measured figure and limit.
* NOT JUDGED for lack of a limit, a baseline or samples leaves the test's outcome to its other
  checks; the report shows the verdict as NOT JUDGED, never among the passed.
* NOT JUDGED because the run was too noisy (client-bound, machine busy) never passes: a test
  retries with a longer window (:meth:`VerdictGate.until_judged`), judged together with the
  noisy attempt where the two measure the same thing, and if it is still too noisy it is
  skipped, naming the measured CPU wait.
* With ``--gpuinfer-require-judgement`` every NOT JUDGED verdict fails the test instead.

Suites use the ``gpuinfer_verdicts`` fixture (:class:`VerdictGate`); fixtures call
:func:`enforce` or :func:`settle_unjudged`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import pytest

if TYPE_CHECKING:
    from pytest_gpuinfer.metrics.verdicts import Verdict

ResultT = TypeVar("ResultT")


def judgement_required(config: pytest.Config) -> bool:
    """True when the run asked that every verdict be judged (``--gpuinfer-require-judgement``)."""
    from pytest_gpuinfer.plugin.state import RUN_STATE

    state = config.stash.get(RUN_STATE, None)
    return bool(state is not None and state.settings.require_judgement)


def _lines(verdicts: Sequence[Verdict]) -> str:
    """One indented line per verdict (its first line: timelines stay in the report)."""
    return "\n".join(f"  {v.line()}" for v in verdicts)


def fail_on_failures(verdicts: Sequence[Verdict], title: str = "") -> None:
    """Fail the test when any verdict is FAIL, naming each with its measured figure."""
    __tracebackhide__ = True
    failed = [v for v in verdicts if v.failed]
    if failed:
        head = title or f"{len(failed)} of {len(verdicts)} verdicts failed:"
        pytest.fail(f"{head}\n{_lines(failed)}", pytrace=False)


def settle_unjudged(config: pytest.Config, verdicts: Sequence[Verdict]) -> None:
    """NOT JUDGED verdicts: fail when judgement is required; skip, naming the noise, when the
    run was too noisy to judge; otherwise leave the test to its other checks."""
    __tracebackhide__ = True
    unjudged = [v for v in verdicts if not v.judged]
    if not unjudged:
        return
    if judgement_required(config):
        pytest.fail(
            "judgement required (--gpuinfer-require-judgement), but NOT JUDGED:\n"
            + _lines(unjudged),
            pytrace=False,
        )
    noisy = [v for v in unjudged if v.noisy]
    if noisy:
        pytest.skip(
            "too noisy to judge (the machine, not the server, set these figures): "
            + "; ".join(f"{v.name}: {v.message}" for v in noisy)
        )


def enforce(config: pytest.Config, verdicts: Iterable[Verdict], title: str = "") -> None:
    """Apply every rule above to ``verdicts`` (failures first)."""
    __tracebackhide__ = True
    listed = list(verdicts)
    fail_on_failures(listed, title)
    settle_unjudged(config, listed)


@dataclass
class VerdictGate:
    """What the ``gpuinfer_verdicts`` fixture gives a test."""

    config: pytest.Config

    def check(self, verdicts: Iterable[Verdict], title: str = "") -> None:
        """Fail on FAIL; settle NOT JUDGED (see the module docstring)."""
        __tracebackhide__ = True
        enforce(self.config, verdicts, title)

    def until_judged(
        self,
        attempt: Callable[[int], ResultT],
        verdicts: Callable[[ResultT], Iterable[Verdict]],
        *,
        attempts: int = 2,
        combine: Callable[[ResultT, ResultT], ResultT] | None = None,
    ) -> ResultT:
        """``attempt(1)``, then ``attempt(2)``... while its verdicts are too noisy to judge; the
        attempt number lets it lengthen its window. Returns the last attempt's result, or with
        ``combine`` the retry judged together with what came before (``combine(earlier, retry)``:
        a server that degraded during a noisy first attempt cannot pass a steady retry).

        Example::

            report = gpuinfer_verdicts.until_judged(
                run_batches_sized, lambda r: r.verdicts, combine=judge_with_retry
            )
        """
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, not {attempts}")
        result = attempt(1)
        for number in range(2, attempts + 1):
            if not any(v.noisy for v in verdicts(result)):
                break
            retry = attempt(number)
            result = retry if combine is None else combine(result, retry)
        return result
