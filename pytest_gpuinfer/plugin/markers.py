"""Every marker of the plugin, in one table that both registers and evaluates them.

Each :class:`MarkerSpec` says how the marker is written (for ``--markers``), what is wrong with a
use of it (checked at collection, so a bad marker is a usage error before anything runs) and, for
markers that decide whether a test can run at all, the skip reason at setup. Markers whose effect
is a verdict on what a test measured (``slo``, ``leak``, ``burst``) are applied by the fixtures
that measure; their arguments are still checked here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_gpuinfer.plugin.state import RunState


def _slo_problem(mark: pytest.Mark) -> str | None:
    """What is wrong with an ``slo`` marker: no expressions, keywords, or a malformed one."""
    from pytest_gpuinfer.metrics import slo

    if not mark.args or mark.kwargs:
        return (
            "@pytest.mark.slo takes SLO strings, "
            'e.g. @pytest.mark.slo("ttft_p95<500ms", "error_rate<1%")'
        )
    try:
        slo.parse_slos(mark.args)
    except slo.SLOSyntaxError as exc:
        return f"@pytest.mark.slo: {str(exc).splitlines()[0]}"
    return None


def _gpu_count(mark: pytest.Mark) -> object:
    """The count a ``requires_gpu`` marker asks for (first argument or ``count=``)."""
    return mark.kwargs.get("count", mark.args[0] if mark.args else 1)


def _requires_gpu_problem(mark: pytest.Mark) -> str | None:
    """What is wrong with a ``requires_gpu`` marker: a count that is not a positive integer."""
    count = _gpu_count(mark)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return f"requires_gpu(count={count!r}): count must be a positive integer"
    memory = mark.kwargs.get("min_memory_gb")
    if memory is not None and not (isinstance(memory, int | float) and memory > 0):
        return f"requires_gpu(min_memory_gb={memory!r}): must be a positive number of GiB"
    return None


def _requires_gpu_skip(mark: pytest.Mark, state: RunState) -> str | None:
    """The skip reason when the GPUs in use do not satisfy a ``requires_gpu`` marker."""
    count = int(_gpu_count(mark))  # type: ignore[call-overload]
    min_memory_gb = mark.kwargs.get("min_memory_gb")
    gpus = state.gpus_in_use
    if not gpus:
        why = state.inventory.unavailable_reason or "no GPU found"
        return f"requires {count} GPU(s); none available ({why})"
    if min_memory_gb is not None:
        big_enough = [g for g in gpus if g.memory_total_gb >= float(min_memory_gb)]
        if len(big_enough) < count:
            largest = max(g.memory_total_gb for g in gpus)
            return (
                f"requires {count} GPU(s) with >= {min_memory_gb} GiB; "
                f"{len(big_enough)} of {len(gpus)} qualify (largest has {largest:.0f} GiB)"
            )
        return None
    if len(gpus) < count:
        return f"requires {count} GPU(s); {len(gpus)} available"
    return None


def _burst_problem(mark: pytest.Mark) -> str | None:
    """What is wrong with a ``burst`` marker, as the burst limits themselves judge it."""
    from pytest_gpuinfer.load import bursts

    if mark.args:
        return (
            "@pytest.mark.burst takes keyword limits, "
            "e.g. burst(max_recovery_s=10, max_queue=50, allow_drops=0)"
        )
    try:
        bursts.BurstLimits().updated(mark.kwargs)
    except (TypeError, ValueError) as exc:
        return f"@pytest.mark.burst: {exc}"
    return None


def _leak_problem(mark: pytest.Mark) -> str | None:
    """What is wrong with a ``leak`` marker, as the leak limits themselves judge it."""
    from pytest_gpuinfer.plugin.memory_fixtures import LeakLimits

    try:
        LeakLimits.from_marker(mark)
    except pytest.UsageError as exc:
        return str(exc)
    return None


def _fault_problem(mark: pytest.Mark) -> str | None:
    """What is wrong with a ``fault`` marker: not one name, an unknown fault or parameter."""
    from pytest_gpuinfer.faults.scenario import Fault, FaultSpecError

    if len(mark.args) != 1 or not isinstance(mark.args[0], str):
        return (
            "@pytest.mark.fault takes one fault name and keyword parameters, "
            'e.g. @pytest.mark.fault("reset_mid_stream", p=0.05)'
        )
    try:
        Fault.of(mark.args[0], **mark.kwargs)
    except (FaultSpecError, TypeError) as exc:
        return f"@pytest.mark.fault: {exc}"
    return None


@dataclass(frozen=True)
class MarkerSpec:
    """One marker: how it is written, what makes a use of it wrong, and when it skips a test."""

    name: str
    signature: str
    """What follows the name in ``--markers``, e.g. ``(count=1, min_memory_gb=None)``."""
    doc: str
    problem: Callable[[pytest.Mark], str | None] | None = None
    """A usage problem with one use of the marker (checked at collection), or None."""
    skip: Callable[[pytest.Mark, RunState], str | None] | None = None
    """The reason to skip a test carrying the marker, decided at setup, or None to run it."""

    @property
    def line(self) -> str:
        """The ``markers`` ini line that registers it."""
        return f"{self.name}{self.signature}: {self.doc}"


MARKERS: tuple[MarkerSpec, ...] = (
    MarkerSpec("compat", "", "compatibility checks of engine, model, GPU, driver and API"),
    MarkerSpec("perf", "", "latency and throughput measurements"),
    MarkerSpec("load", "", "burst and sustained load runs"),
    MarkerSpec(
        "burst",
        "(allow_drops=0, max_recovery_s=None, max_queue=None, max_preemptions=None, "
        "p95_tolerance=0.5, p95_slack_s=0.05, latency='ttft')",
        "verdicts for burst_runner runs",
        problem=_burst_problem,
    ),
    MarkerSpec("oom", "", "out-of-memory boundary searches"),
    MarkerSpec(
        "leak",
        "(max_growth_mb=None, settle_s=None, release_timeout_s=None)",
        "memory leak checks across batches",
        problem=_leak_problem,
    ),
    MarkerSpec("batch", "", "offline batch inference (vLLM LLM, Ray Data)"),
    MarkerSpec(
        "requires_gpu",
        "(count=1, min_memory_gb=None)",
        "skip unless enough GPUs (with enough memory) are available",
        problem=_requires_gpu_problem,
        skip=_requires_gpu_skip,
    ),
    MarkerSpec(
        "fault",
        "(name, p=1.0, start_s=0, duration_s=None, **params)",
        "run this test's faulty_server and load_runner through the fault proxy with this fault "
        "(latency, bandwidth, reset_mid_stream, stall, black_hole; see docs/faults.md)",
        problem=_fault_problem,
    ),
    MarkerSpec(
        "slo",
        "(*expressions)",
        "SLOs every load_runner run in this test must meet, "
        "e.g. slo('ttft_p95<500ms', 'error_rate<1%')",
        problem=_slo_problem,
    ),
)
"""The plugin's markers; ``--markers`` lists them, ``--strict-markers`` accepts them."""

MARKER_NAMES: frozenset[str] = frozenset(spec.name for spec in MARKERS)


def register(config: pytest.Config) -> None:
    """Register every marker so ``--markers`` shows it and ``--strict-markers`` accepts it."""
    for spec in MARKERS:
        config.addinivalue_line("markers", spec.line)


def check_uses(items: list[pytest.Item]) -> None:
    """Raise a usage error naming the test for the first malformed use of one of our markers."""
    for item in items:
        for spec in MARKERS:
            if spec.problem is None:
                continue
            for mark in item.iter_markers(name=spec.name):
                problem = spec.problem(mark)
                if problem:
                    raise pytest.UsageError(f"{item.nodeid}: {problem}")


def skip_reason(item: pytest.Item, state: RunState) -> str | None:
    """Why the test cannot run here (an unmet ``requires_gpu``), or None."""
    for spec in MARKERS:
        if spec.skip is None:
            continue
        for mark in item.iter_markers(name=spec.name):
            reason = spec.skip(mark, state)
            if reason:
                return reason
    return None
