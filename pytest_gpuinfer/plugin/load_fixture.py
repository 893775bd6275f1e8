"""The load runs a test makes through the ``load_runner`` fixture: SLO gate, properties, reports."""

from __future__ import annotations

import functools
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer.plugin import report_plugin

if TYPE_CHECKING:
    from pytest_gpuinfer.load.runner import Limits, LoadResult, LoadRunner
    from pytest_gpuinfer.load.schedule import Schedule
    from pytest_gpuinfer.load.workloads import Workload
    from pytest_gpuinfer.metrics import slo
    from pytest_gpuinfer.metrics.verdicts import Verdict
    from pytest_gpuinfer.targets import InferenceServer


class ClientBoundWarning(UserWarning):
    """The load engine itself limited a run: its latencies include the client's own delay."""


class SLOViolation(AssertionError):
    """A load run missed one of its SLOs; the message lists measured vs limit per SLO."""


def slos_for(item: pytest.Item, global_slos: tuple[slo.SLO, ...]) -> tuple[slo.SLO, ...]:
    """The SLOs that apply to a test: its ``@pytest.mark.slo(...)`` ones, then ``--slo`` ones,
    each saying where it came from."""
    from pytest_gpuinfer.metrics import slo

    own: list[slo.SLO] = []
    for marker in item.iter_markers(name="slo"):
        own.extend(s.sourced("@pytest.mark.slo") for s in slo.parse_slos(marker.args))
    return (*own, *(s.sourced("--slo or the gpuinfer_slo ini key") for s in global_slos))


def result_line(result: LoadResult) -> str:
    """One line for the terminal summary: counts, key percentiles, throughput, self-check."""
    from pytest_gpuinfer.metrics import units

    summary = result.summary
    ttft = summary.ttft
    ms = functools.partial(units.ms, digits=1)

    bound = (
        "CLIENT-BOUND (latencies include the client's own delay)" if result.client_bound else "ok"
    )
    return (
        f"{summary.completed}/{summary.requests} ok, {summary.failed} failed; "
        f"TTFT p50/p95/p99 {ms(ttft.p50)}/{ms(ttft.p95)}/{ms(ttft.p99)} ms; "
        f"ITL p95 {ms(summary.itl_token.p95)} ms; E2E p95 {ms(summary.e2e.p95)} ms; "
        f"{summary.request_throughput:.1f} req/s, {summary.output_token_throughput:.0f} tok/s; "
        f"client {bound}"
    )


LOAD_RUNNERS = pytest.StashKey[list["TestLoadRunner"]]()
"""Every load_runner of the run, for the terminal summary."""


@dataclass
class TestLoadRunner:
    """What ``load_runner`` gives a test: ``run(schedule, workload, limits)`` like LoadRunner,
    with its SLOs applied and the result reported."""

    __test__ = False  # not a test class, despite the name

    runner: LoadRunner
    server: InferenceServer
    slos: tuple[slo.SLO, ...]
    item: pytest.Item
    report_dir: Path | None
    allow_errors: bool = False
    results: list[LoadResult] = field(default_factory=list)

    def run(
        self,
        schedule: Schedule,
        workload: Workload,
        limits: Limits | None = None,
        *,
        check_slos: bool = True,
    ) -> LoadResult:
        """Run load (as LoadRunner.run); fail the test when a verdict fails.

        The verdicts are the test's SLOs plus, unless an ``error_rate`` SLO or ``allow_errors``
        (``--allow-errors``) says otherwise, "no request failed"; without a latency SLO the
        run's latency reads NOT JUDGED. With ``check_slos=False`` the caller judges the run by
        its own verdicts (a burst, a matrix cell): it is neither judged nor checked here.
        Goodput counts the limits' SLOs, or the test's when the limits give none.
        """
        __tracebackhide__ = True
        from dataclasses import replace

        from pytest_gpuinfer.load.runner import Limits

        limits = limits or Limits()
        if not limits.slos:
            limits = replace(limits, slos=tuple(self.slos))
        runner = self.runner
        retention = runner.options.retention
        if self.report_dir is not None and retention.records_dir is None:
            # a streamed run's records go beside its per-run JSON file, which names them
            records_dir = self.report_dir / "loads"
            runner = runner.with_options(retention=replace(retention, records_dir=records_dir))
        if runner.options.progress is None:
            progress = report_plugin.live_progress(self.item.config, "load")
            if progress is not None:
                runner = runner.with_options(progress=progress)
        result = runner.run(schedule, workload, limits)
        if check_slos:
            self._judge(result)
        self.results.append(result)
        self._record(result)
        if result.client_bound:
            warnings.warn(
                ClientBoundWarning(
                    f"{self.item.nodeid}: the load engine was the bottleneck: "
                    f"{result.self_check.text()}"
                ),
                stacklevel=2,
            )
        if check_slos:
            self.check(result)
        return result

    def check(self, result: LoadResult) -> list[Verdict]:
        """Raise SLOViolation listing the verdicts ``result`` failed (judging it if needed);
        NOT JUDGED ones fail only when the run requires judgement."""
        __tracebackhide__ = True
        from pytest_gpuinfer.plugin.verdicts import settle_unjudged

        verdicts = result.verdicts
        if verdicts is None:
            verdicts = self._judge(result)
        failed = [v for v in verdicts if v.failed]
        if failed:
            lines = [f"missed {len(failed)} of {len(verdicts)} SLOs:"]
            lines += [f"  {v.message}" for v in failed]
            if result.client_bound:
                lines.append(
                    "  note: the load engine was itself the bottleneck, so part of this latency "
                    f"is the client's: {result.self_check.text()}"
                )
            raise SLOViolation("\n".join(lines))
        settle_unjudged(self.item.config, verdicts)
        return verdicts

    def _judge(self, result: LoadResult) -> list[Verdict]:
        """The run's SLO verdicts, and latency NOT JUDGED when no latency SLO applies."""
        from pytest_gpuinfer.metrics import slo

        verdicts = result.judge(self.slos, allow_errors=self.allow_errors)
        verdicts.extend(slo.unjudged_latency(self.slos, result.summary))
        return verdicts

    def _record(self, result: LoadResult) -> None:
        """Hand the run to the report (its kind adds the JUnit properties); write it as JSON."""
        index = len(self.results)
        from pytest_gpuinfer.report.jsonable import jsonable

        report_plugin.record(self.item, "load", result)
        if self.report_dir is not None:  # the per-run file keeps every record (or their file)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.item.nodeid).strip("_")
            path = self.report_dir / "loads" / f"{name}-{index}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            document = result.to_dict()
            document["test"] = self.item.nodeid
            document["target"] = self.server.describe()
            path.write_text(_json(jsonable(document)))  # inf (open-ended stages) -> null


def _json(document: dict[str, Any]) -> str:
    """Indented JSON; NaN must already be null (the summaries write it so)."""
    return json.dumps(document, indent=1, allow_nan=False)
