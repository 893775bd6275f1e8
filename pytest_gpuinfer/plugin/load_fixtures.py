"""Fixtures of the load suite: burst shapes with verdicts, and locust as its own process.

* ``load_scale`` (session): the duration multiplier for burst shapes, from ``--load-scale``; under
  ``CI=true`` with no scale given it is :data:`CI_LOAD_SCALE`, so CI runs seconds-long shapes.
* ``burst_limits``: :class:`~pytest_gpuinfer.load.bursts.BurstLimits` for this test, from its
  ``@pytest.mark.burst(max_recovery_s=..., max_queue=..., allow_drops=0, ...)`` marker.
* ``burst_runner``: runs a :class:`~pytest_gpuinfer.load.shapes.LoadShape` through ``load_runner``
  (so the engine's gauges are sampled), measures it, writes the JSON and the timeline CSV to the
  report directory, puts the headline figures in the test's report and judges the verdicts: a
  FAIL fails the test; a NOT JUDGED recovery (no limit, or no data) is reported as such, and
  fails the test under ``--gpuinfer-require-judgement``.
* ``locust_run``: runs ``locust`` against the server as a separate process (standalone, or one
  master and N local workers), bounded in time, and reads its CSV statistics back. Locust is
  never imported here: it patches the standard library with gevent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer.plugin import report_plugin
from pytest_gpuinfer.plugin.ci import in_ci
from pytest_gpuinfer.plugin.state import RUN_STATE
from pytest_gpuinfer.plugin.verdicts import settle_unjudged

if TYPE_CHECKING:
    from pytest_gpuinfer.load import bursts, locust_process
    from pytest_gpuinfer.load.shapes import LoadShape
    from pytest_gpuinfer.plugin.load_fixture import TestLoadRunner
    from pytest_gpuinfer.targets import InferenceServer

if TYPE_CHECKING:
    from pytest_gpuinfer.load.workloads import Workload

CI_LOAD_SCALE = 0.1
"""Shape durations under CI=true when --load-scale is not given (1.0)."""

_REPORTS = pytest.StashKey[list[tuple[str, str]]]()


def _node_file_name(nodeid: str) -> str:
    """A file-name-safe form of a test id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")


def resolve_load_scale(given: float, ci: bool) -> float:
    """The scale to use: the given one, or :data:`CI_LOAD_SCALE` under CI when none was given."""
    return CI_LOAD_SCALE if given == 1.0 and ci else given


@pytest.fixture(scope="session")
def load_scale(pytestconfig: pytest.Config) -> float:
    """Multiplier for every burst-shape duration (``--load-scale``; small under CI=true)."""
    settings = pytestconfig.stash[RUN_STATE].settings
    return resolve_load_scale(settings.load_scale, in_ci())


def parse_limit_texts(texts: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` texts (``--burst max_recovery_s=10``) as typed burst-limit overrides."""
    out: dict[str, Any] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or not key:
            raise ValueError(f"burst limit {text!r} is not KEY=VALUE, e.g. max_recovery_s=10")
        if key == "latency":
            out[key] = value
        elif key == "allow_drops":
            out[key] = int(value)
        else:
            out[key] = None if value.lower() in ("none", "") else float(value)
    return out


@pytest.fixture
def burst_limits(request: pytest.FixtureRequest) -> bursts.BurstLimits:
    """This test's burst verdicts: zero drops by default, then the run's ``--burst KEY=VALUE``
    options (Settings.burst, when declared), then the test's ``burst`` marker."""
    from pytest_gpuinfer.load import bursts

    limits = bursts.BurstLimits()
    settings = request.config.stash[RUN_STATE].settings
    try:
        limits = limits.updated(parse_limit_texts(settings.burst))
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"--burst: {exc}") from None
    for marker in reversed(list(request.node.iter_markers(name="burst"))):
        if marker.args:
            raise pytest.UsageError(
                f"{request.node.nodeid}: @pytest.mark.burst takes keyword limits, e.g. "
                "burst(max_recovery_s=10, max_queue=50, allow_drops=0)"
            )
        try:
            limits = limits.updated(marker.kwargs)
        except (TypeError, ValueError) as exc:
            raise pytest.UsageError(f"{request.node.nodeid}: @pytest.mark.burst: {exc}") from None
    return limits


@dataclass
class BurstRunner:
    """What ``burst_runner`` gives a test: ``run(shape)`` measures and judges one burst."""

    load_runner: TestLoadRunner
    limits: bursts.BurstLimits
    scale: float
    item: pytest.Item
    report_dir: Path | None
    reports: list[bursts.BurstReport] = field(default_factory=list)

    def run(
        self,
        shape: LoadShape,
        workload: Workload | None = None,
        *,
        check: bool = True,
        limits: bursts.BurstLimits | None = None,
    ) -> bursts.BurstReport:
        """Run ``shape`` as given (scale it first with ``shape.scaled(runner.scale)``), sending
        ``workload`` (default: synthetic prompts asking for 16 tokens each)."""
        __tracebackhide__ = True
        from pytest_gpuinfer.load.runner import Limits
        from pytest_gpuinfer.load.workloads import Synthetic

        # check_slos=False: the burst's own verdicts (drops first) judge this run.
        result = self.load_runner.run(
            shape.schedule,
            workload or Synthetic(output_tokens=16),
            Limits(requests=int(shape.expected_requests * 2) + 50),
            check_slos=False,
        )
        from pytest_gpuinfer.load import bursts

        report = bursts.analyze(result, shape, limits or self.limits)
        self.reports.append(report)
        self._record(report)
        if check:
            report.check()
            settle_unjudged(self.item.config, report.verdicts)
        return report

    def _record(self, report: bursts.BurstReport) -> None:
        """The burst into the run's report (its kind adds the JUnit properties), the test's
        report sections and the terminal summary; JSON and CSV to disk."""
        index = len(self.reports)
        self.item.add_report_section("call", f"gpuinfer burst {report.shape.name}", report.text())
        from pytest_gpuinfer.report.payloads import burst_payload

        report_plugin.record(self.item, "burst", burst_payload(report, self.scale))
        self.item.config.stash.setdefault(_REPORTS, []).append(
            (self.item.nodeid, report.headline())
        )
        if self.report_dir is not None:
            import json

            base = self.report_dir / "bursts" / f"{_node_file_name(self.item.nodeid)}-{index}"
            base.parent.mkdir(parents=True, exist_ok=True)
            document = report.to_dict()
            document["test"] = self.item.nodeid
            document["load_scale"] = self.scale
            base.with_suffix(".json").write_text(json.dumps(document, indent=1, allow_nan=False))
            base.with_suffix(".csv").write_text(report.timeline_csv())


@pytest.fixture
def burst_runner(
    request: pytest.FixtureRequest,
    load_runner: TestLoadRunner,
    burst_limits: bursts.BurstLimits,
    load_scale: float,
) -> BurstRunner:
    """Runs burst shapes against the server and judges them (see :class:`BurstRunner`)."""
    state = request.config.stash[RUN_STATE]
    return BurstRunner(
        load_runner=load_runner,
        limits=burst_limits,
        scale=load_scale,
        item=request.node,
        report_dir=state.settings.report_dir,
    )


@pytest.fixture
def locust_run(
    request: pytest.FixtureRequest, inference_server: InferenceServer, tmp_path: Path
) -> Callable[..., locust_process.LocustRun]:
    """Run locust against the server in its own process(es), bounded; returns its CSV stats.

    Call it with the locustfile path and ``run_time_s``, and optionally ``users``,
    ``spawn_rate``, ``workers`` (0: standalone; N: one master and N local workers), ``shape``
    (a name the locustfile's ``GPUINFER_SHAPE`` understands) and ``env`` for the locustfile.
    """

    def run(locustfile: str | Path, **kwargs: Any) -> locust_process.LocustRun:
        """One bounded locust run; its figures go into the test report."""
        env = {
            "GPUINFER_MODEL": inference_server.model,
            **({"GPUINFER_API_KEY": inference_server.api_key} if inference_server.api_key else {}),
            **kwargs.pop("env", {}),
        }
        out_dir = tmp_path / f"locust-{len(list(tmp_path.glob('locust-*')))}"
        from pytest_gpuinfer.load import locust_process

        outcome = locust_process.run_locust(
            locustfile, inference_server.base_url, out_dir=out_dir, env=env, **kwargs
        )
        request.node.add_report_section("call", "gpuinfer locust", outcome.text())
        for row in outcome.rows:
            if row.name in ("Aggregated", "TTFT", "ITL") or row.type in ("TTFT", "ITL"):
                key = re.sub(r"\W+", "_", f"locust_{row.type}_{row.name}").strip("_").lower()
                request.node.user_properties.append((f"{key}_p95_ms", row.percentiles.get("95%")))
                request.node.user_properties.append((f"{key}_failures", row.failures))
        request.config.stash.setdefault(_REPORTS, []).append(
            (request.node.nodeid, outcome.headline())
        )
        return outcome

    return run


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """One line per burst and locust run: the figures the load suite exists to print."""
    lines = config.stash.get(_REPORTS, None)
    if not lines:
        return
    terminalreporter.section("gpuinfer load shapes")
    for nodeid, line in lines:
        terminalreporter.write_line(f"{nodeid}: {line}")
