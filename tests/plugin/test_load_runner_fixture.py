"""The load_runner fixture against the simulator: SLO gate, markers, --slo, reports (pytester)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SIM = ("--engine=sim", "--engine-arg=--ttft-ms=20", "--engine-arg=--itl-ms=2")

LOAD_TEST = """
import pytest
from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.load.workloads import Prompts

{marker}
def test_load(load_runner):
    result = load_runner.run(ClosedLoop(4), Prompts(output_tokens=8), Limits(requests=40))
    assert result.summary.completed == 40
"""


def test_passing_slos_pass_and_are_reported(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(LOAD_TEST.format(marker='@pytest.mark.slo("ttft_p50<2s", "error_rate<1%")'))
    result = pytester.runpytest(*SIM, f"--gpuinfer-report={tmp_path}", "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "gpuinfer *: target sim (simulator, not a real engine), model sim-model*",
            "*test_load ?load 1?: 40/40 ok, 0 failed; TTFT p50/p95/p99 */*/* ms;*client *",
            "target: sim (simulator, not a real engine), model sim-model at http://127.0.0.1:*",
        ]
    )
    reports = list((tmp_path / "loads").glob("*.json"))
    assert len(reports) == 1
    document = json.loads(reports[0].read_text())
    assert [v["slo"] for v in document["verdicts"]] == ["ttft_p50<2s", "error_rate<1%"]
    assert all(v["passed"] for v in document["verdicts"])
    assert document["summary"]["completed"] == 40 and len(document["records"]) == 40
    assert "simulator" in document["target"]
    junit = (pytester.path / "out.xml").read_text()
    assert 'name="load_ttft_p95_ms"' in junit


def test_missed_slo_fails_with_measured_vs_limit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(LOAD_TEST.format(marker='@pytest.mark.slo("ttft_p50<1ms")'))
    result = pytester.runpytest(*SIM)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*SLOViolation: missed 1 of 2 SLOs:*",
            "*ttft_p50 = * ms > limit 1 ms (n=40)*",
        ]
    )


def test_command_line_slo_applies_to_every_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(LOAD_TEST.format(marker=""))
    assert pytester.runpytest(*SIM, "--slo=e2e_p99<30s").ret == 0
    failed = pytester.runpytest(*SIM, "--slo", "error_rate<1%,throughput>=100000rps")
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(["*throughput = * req/s < limit 100000 req/s (n=40)"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('@pytest.mark.slo("ttft_p95<500")', "missing unit"),
        ('@pytest.mark.slo("latency<5ms")', "latency"),
        ("@pytest.mark.slo()", "takes SLO strings"),
    ],
)
def test_bad_slo_marker_is_a_usage_error(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(LOAD_TEST.format(marker=marker))
    result = pytester.runpytest(*SIM)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *test_load: @pytest.mark.slo*{message}*"])


def test_bad_command_line_slo_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(LOAD_TEST.format(marker=""))
    result = pytester.runpytest(*SIM, "--slo=ttft_p95<fast")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --slo is malformed: bad SLO 'ttft_p95<fast'*"])


def test_failed_requests_fail_the_test_unless_allowed(pytester: pytest.Pytester) -> None:
    """No SLO at all: a run whose requests failed still fails, naming the count and class."""
    pytester.makepyfile(
        """
        from pytest_gpuinfer.load.runner import Limits
        from pytest_gpuinfer.load.schedule import ClosedLoop
        from pytest_gpuinfer.load.workloads import Prompts

        def test_load(load_runner):
            load_runner.run(ClosedLoop(2), Prompts(output_tokens=4), Limits(requests=10))
        """
    )
    failing = (*SIM, "--engine-arg=--error-rate=1.0")
    result = pytester.runpytest(*failing)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*10 of 10 requests failed (http=10); any failed request*"])
    pytester.runpytest(*failing, "--allow-errors").assert_outcomes(passed=1)
    pytester.runpytest(*SIM).assert_outcomes(passed=1)
