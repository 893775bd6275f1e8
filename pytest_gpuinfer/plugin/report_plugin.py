"""The run's report in pytest: suites record results, test reports carry them (also across
pytest-xdist workers), the writing process keeps ``--gpuinfer-report DIR``/report.json up to
date after every test, renders report.html at the end, and prints the summary table.

Public API for fixtures and tests:

* ``record(item, kind, payload)``: hand a result of the running test to the report (kinds in
  :data:`pytest_gpuinfer.report.kinds.KINDS`; the object a suite produced, or a plain-JSON
  dict). Its key figures and each verdict's status also become JUnit properties.
* ``live_progress(config, label)``: a LoadRunner progress callback that prints on a terminal
  and stays quiet otherwise (None when quiet); ``progress_line(config, label)`` for any loop.
* the ``gpuinfer_report`` fixture: ``gpuinfer_report.record(kind, payload)`` and
  ``gpuinfer_report.progress(label)`` for the running test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer import __version__

if TYPE_CHECKING:
    from pytest_gpuinfer.report.collector import ReportCollector
    from pytest_gpuinfer.report.progress import ProgressLine

REPORT = pytest.StashKey["ReportCollector"]()
_ATTRIBUTE = "gpuinfer_report"
"""The test-report attribute that carries a phase's results (a JSON string: xdist-safe)."""
_PLUGIN_NAME = "gpuinfer-report"
_SUITE_MARKERS = ("compat", "perf", "load", "oom", "leak", "batch")


def is_xdist_worker(config: pytest.Config) -> bool:
    """True inside a pytest-xdist worker (the controller writes the report)."""
    return bool(getattr(config, "workerinput", None))


def _worker_id(config: pytest.Config) -> str | None:
    """This process's xdist worker id (gw0, ...), None outside xdist."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput.get("workerid")) if workerinput else None


def collector_of(config: pytest.Config) -> ReportCollector:
    """The run's collector, made on first use (the options are validated by then)."""
    collector = config.stash.get(REPORT, None)
    if collector is not None:
        return collector
    from pytest_gpuinfer.plugin.state import RUN_STATE
    from pytest_gpuinfer.report.collector import ReportCollector
    from pytest_gpuinfer.report.machine import machine_section

    state = config.stash.get(RUN_STATE, None)
    report_dir = state.settings.report_dir if state is not None else None
    writer = not is_xdist_worker(config)
    path = Path(report_dir) / "report.json" if report_dir is not None and writer else None
    machine: dict[str, Any] = {}
    if writer and state is not None:
        machine = machine_section(state.inventory, state.selected_gpus)
        config.hook.pytest_gpuinfer_machine_info(config=config, machine=machine)
    collector = ReportCollector(
        path=path,
        run={
            "plugin_version": __version__,
            "pytest_version": pytest.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "args": [str(a) for a in config.invocation_params.args],
            "rootdir": str(config.rootpath),
            "engine": state.settings.engine if state is not None else None,
            "engine_args": list(state.settings.engine_args) if state is not None else [],
            "xdist_workers": _xdist_worker_count(config),
            "exit_status": None,
        },
        machine=machine,
    )
    config.stash[REPORT] = collector
    return collector


def _xdist_worker_count(config: pytest.Config) -> int | None:
    """How many xdist workers this run asked for (None without -n)."""
    value = getattr(config.option, "numprocesses", None)
    return int(value) if isinstance(value, int) else None


def record(item: pytest.Item, kind: str, payload: Any) -> dict[str, Any]:
    """Hand a result of ``item`` to the run's report; its key figures and verdicts become JUnit
    properties (``<kind>[N]_<figure>``, ``<kind>[N]_verdict_<name>``: PASS, FAIL or NOT JUDGED)."""
    entry = collector_of(item.config).record(item.nodeid, kind, payload)
    prefix = f"{kind}{entry['index']}_" if entry["index"] > 1 else f"{kind}_"
    for name, value in junit_properties(entry):
        item.user_properties.append((prefix + name, value))
    return entry


def junit_properties(entry: dict[str, Any]) -> list[tuple[str, Any]]:
    """A recorded result's key figures, then per verdict its status and a count of each status
    (NOT JUDGED is its own count, never among the passed)."""
    import re

    from pytest_gpuinfer.metrics.verdicts import tally
    from pytest_gpuinfer.report.kinds import kind

    known = kind(entry["kind"])
    payload = entry["payload"]
    props = list(known.junit(payload))
    verdicts = known.verdicts(payload)
    for verdict in verdicts:
        slug = re.sub(r"\W+", "_", verdict.name).strip("_").lower()
        props.append((f"verdict_{slug}", verdict.label))
    if verdicts:
        counts = tally(verdicts)
        props += [
            ("verdicts_passed", counts.passed),
            ("verdicts_failed", counts.failed),
            ("verdicts_not_judged", counts.not_judged),
        ]
    return props


def progress_line(config: pytest.Config, label: str = "") -> ProgressLine:
    """A progress line on the terminal; quiet when the output is not a terminal, in xdist
    workers and under -q -q."""
    from pytest_gpuinfer.report.progress import ProgressLine

    reporter = config.pluginmanager.get_plugin("terminalreporter")
    enabled = (
        reporter is not None
        and bool(getattr(reporter, "isatty", False))
        and not is_xdist_worker(config)
        and config.get_verbosity() >= 0
    )
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write_line(text: str) -> None:
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(text)
        else:
            reporter.write_line(text)

    return ProgressLine(write_line, enabled=enabled, label=label, min_interval_s=2.0)


def live_progress(config: pytest.Config, label: str) -> Callable[[Any], None] | None:
    """A LoadRunner progress callback for the terminal, or None where output is not one."""
    line = progress_line(config, label)
    return line.load if line.enabled else None


@dataclass
class TestReportRecorder:
    """What the ``gpuinfer_report`` fixture gives a test."""

    __test__ = False

    item: pytest.Item

    def record(self, kind: str, payload: Any) -> dict[str, Any]:
        """Hand a result of this test to the run's report (see :func:`record`)."""
        return record(self.item, kind, payload)

    def progress(self, label: str = "") -> ProgressLine:
        """A progress line for a long loop in this test (quiet off a terminal)."""
        return progress_line(self.item.config, label or self.item.name)


@pytest.fixture
def gpuinfer_report(request: pytest.FixtureRequest) -> TestReportRecorder:
    """Record results of this test into the run's report (``--gpuinfer-report DIR``)."""
    return TestReportRecorder(request.node)


def _outcome(report: pytest.TestReport) -> str:
    """passed, failed, skipped, xfailed or xpassed."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return str(report.outcome)


def _message(report: pytest.TestReport) -> str | None:
    """A failure's or skip's one-paragraph reason (at most 1000 characters)."""
    if report.passed:
        return None
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])[:1000]
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message)[:1000]
    text = report.longreprtext.strip()
    return text.splitlines()[-1][:1000] if text else None


class ReportPlugin:
    """The hooks that move results from tests into the report file and the terminal."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rendered: Path | None = None
        self.render_problem: str | None = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Attach the results recorded in this phase (and the test's target) to its report."""
        report = yield
        if self.config.stash.get(REPORT, None) is None:
            return report  # nothing recorded and no report asked for: nothing to carry
        from pytest_gpuinfer.report.machine import target_section
        from pytest_gpuinfer.targets import InferenceServer

        data: dict[str, Any] = {
            "entries": collector_of(item.config).take_pending(item.nodeid),
            "markers": sorted(
                {m.name for m in item.iter_markers()} & {*_SUITE_MARKERS, "requires_gpu", "slo"}
            ),
            "worker": _worker_id(item.config),
        }
        server = getattr(item, "funcargs", {}).get("inference_server")
        if isinstance(server, InferenceServer):
            from pytest_gpuinfer.plugin.state import RUN_STATE

            state = item.config.stash.get(RUN_STATE, None)
            engine_args = state.settings.engine_args if state is not None else ()
            data["target"] = target_section(server, engine_args if server.launched else ())
        setattr(report, _ATTRIBUTE, json.dumps(data, allow_nan=False))
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """In the writing process: fold the phase into the document; write after teardown."""
        if is_xdist_worker(self.config):
            return
        raw = getattr(report, _ATTRIBUTE, None)
        if raw is None and self.config.stash.get(REPORT, None) is None:
            return
        data = json.loads(raw) if isinstance(raw, str) else {}
        collector = collector_of(self.config)
        collector.absorb(
            report.nodeid,
            when=report.when or "call",
            outcome=_outcome(report),
            duration_s=float(report.duration or 0.0),
            message=_message(report),
            markers=data.get("markers"),
            entries=data.get("entries"),
            target=data.get("target"),
            worker=data.get("worker"),
            properties=list(report.user_properties) if report.when == "teardown" else None,
        )
        if report.when == "teardown" or (report.when == "setup" and not report.passed):
            collector.write()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the final report (status complete or interrupted) and render the HTML page."""
        if is_xdist_worker(self.config) or self.config.stash.get(REPORT, None) is None:
            return
        collector = collector_of(self.config)
        collector.run["exit_status"] = int(exitstatus)
        interrupted = int(exitstatus) == int(pytest.ExitCode.INTERRUPTED)
        path = collector.write("interrupted" if interrupted else "complete")
        if path is None:
            return
        try:
            from pytest_gpuinfer.report import html
        except ImportError as exc:
            self.render_problem = f"no HTML report: {exc.name} is not installed (extra 'report')"
            return
        out = path.with_name("report.html")
        html.write_page([collector.document("complete")], out)
        self.rendered = out

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """The end-of-run table: per suite its tests, verdicts and key metrics; where the
        report files are."""
        if is_xdist_worker(self.config) or self.config.stash.get(REPORT, None) is None:
            return
        from pytest_gpuinfer.report import summary

        collector = collector_of(self.config)
        tests = list(collector.tests.values())
        if not any(t["results"] for t in tests) and collector.path is None:
            return
        terminalreporter.section("gpuinfer summary")
        for line in summary.table(summary.suite_rows(tests)):
            terminalreporter.write_line(line)
        for line in summary.unsettled(tests):
            terminalreporter.write_line(line)
        if collector.path is not None:
            terminalreporter.write_line(f"report: {collector.path}")
        if self.rendered is not None:
            terminalreporter.write_line(f"html: {self.rendered}")
        if self.render_problem:
            terminalreporter.write_line(self.render_problem)


def pytest_configure(config: pytest.Config) -> None:
    """Register the report's hooks for this run; with a report folder, start the report now."""
    if not config.pluginmanager.has_plugin(_PLUGIN_NAME):
        config.pluginmanager.register(ReportPlugin(config), _PLUGIN_NAME)
    from pytest_gpuinfer.plugin.state import RUN_STATE

    state = config.stash.get(RUN_STATE, None)
    if state is not None and state.settings.report_dir is not None:
        collector_of(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Unregister them (pytester runs several sessions in one process)."""
    plugin = config.pluginmanager.get_plugin(_PLUGIN_NAME)
    if plugin is not None:
        config.pluginmanager.unregister(plugin)
