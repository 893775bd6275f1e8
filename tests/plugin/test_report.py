"""The run report: one JSON per run (schema-valid, atomic, merged across xdist workers), JUnit
properties, the terminal table, the gpuinfer-report command and the progress helper."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuinfer.report import collector as collector_module
from pytest_gpuinfer.report.cli import main as report_main
from pytest_gpuinfer.report.collector import ReportCollector
from pytest_gpuinfer.report.progress import ProgressLine
from pytest_gpuinfer.report.schema import SchemaProblem, schema, validate

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (extra report)")

SIM = ("--engine=sim", "--engine-arg=--ttft-ms=20", "--engine-arg=--itl-ms=2", "-p", "no:randomly")

SUITE_TESTS = """
import os
import pytest
from pytest_gpuinfer.load import shapes
from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.memory.boundary import BoundaryResult, Outcome, ProbeResult

@pytest.mark.slo("ttft_p95<5s")
def test_matrix(load_runner):
    for concurrency in (1, 4):
        for max_tokens in (4, 8):
            load_runner.run(
                ClosedLoop(concurrency), Prompts(output_tokens=max_tokens), Limits(requests=8)
            )

def test_burst(burst_runner):
    shape = shapes.spike(10, 3, before_s=0.6, spike_s=0.4, after_s=0.6, arrival="constant")
    burst_runner.run(shape, Prompts(output_tokens=4), check=False)

def test_memory(vram_tracker, memory_report):
    tracker = vram_tracker.start(os.getpid(), interval_s=0.05, settle_s=0.1)
    with tracker.phase("batch 1"):
        blob = bytearray(20_000_000)
    del blob
    result = BoundaryResult("batch size", 1, 64, [ProbeResult(1, Outcome.OK),
        ProbeResult(32, Outcome.OK), ProbeResult(33, Outcome.SERVER_ERROR, "500")])
    memory_report("batch size limit", result)

def test_fails(gpuinfer_report):
    gpuinfer_report.record("note", {"title": "why", "text": "it fails on purpose"})
    assert 1 == 2
"""


def _report(path: Path) -> dict[str, Any]:
    """Read a report.json and validate it against the shipped schema."""
    document = json.loads((path / "report.json").read_text())
    jsonschema.Draft202012Validator(schema()).validate(document)
    return document  # type: ignore[no-any-return]


def _by_test(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's tests by function name."""
    return {t["nodeid"].split("::")[-1]: t for t in document["tests"]}


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())


def test_one_schema_valid_report_with_every_kind_and_junit_properties(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(SUITE_TESTS)
    out = tmp_path / "reports"
    result = pytester.runpytest(*SIM, f"--gpuinfer-report={out}", "--junitxml=junit.xml")
    result.assert_outcomes(passed=3, failed=1)
    document = _report(out)
    assert document["run"]["status"] == "complete" and document["run"]["exit_status"] == 1
    assert document["run"]["counts"] == {"passed": 3, "failed": 1}
    assert "cpu" in document["machine"] and isinstance(document["machine"]["gpus"], list)
    tests = _by_test(document)
    matrix = tests["test_matrix"]
    assert matrix["outcome"] == "passed"
    assert matrix["target"]["engine"] == "sim" and matrix["target"]["simulator"] is True
    assert matrix["target"]["args"] == ["--ttft-ms=20", "--itl-ms=2"]
    loads = [e for e in matrix["results"] if e["kind"] == "load"]
    assert [e["index"] for e in loads] == [1, 2, 3, 4]
    for entry in loads:
        summary = entry["payload"]["summary"]
        assert summary["ttft"]["count"] == summary["completed"] == 8
        assert entry["payload"]["samples"]["counts"]["ttft"] == 8
        assert entry["payload"]["verdicts"][0]["slo"] == "ttft_p95<5s"
    burst = [e for e in tests["test_burst"]["results"] if e["kind"] == "burst"]
    assert len(burst) == 1 and burst[0]["payload"]["timeline"]
    assert burst[0]["payload"]["sent"] > 0
    kinds = [e["kind"] for e in tests["test_memory"]["results"]]
    assert sorted(kinds) == ["boundary", "memory"]
    memory = next(e for e in tests["test_memory"]["results"] if e["kind"] == "memory")
    assert memory["payload"]["memory_kind"] == "rss" and len(memory["payload"]["timeline"]) >= 2
    assert memory["payload"]["phases"][0]["label"] == "batch 1"
    boundary = next(e for e in tests["test_memory"]["results"] if e["kind"] == "boundary")
    assert boundary["payload"]["safe_value"] == 32
    assert boundary["payload"]["first_failure"] == {"value": 33, "outcome": "5xx"}
    failed = tests["test_fails"]
    assert failed["outcome"] == "failed" and "assert 1 == 2" in failed["message"]
    assert failed["results"][0]["payload"]["text"] == "it fails on purpose"
    junit = (pytester.path / "junit.xml").read_text()
    for name in (
        "load_ttft_p95_ms",
        "load4_ttft_p95_ms",
        "burst_recovery_s",
        "memory_peak_mb",
        "boundary_safe_value",
        "boundary_failure_class",
    ):
        assert f'name="{name}"' in junit, name
    assert "loads" in {p.name for p in out.iterdir()}  # the per-run files stay
    result.stdout.fnmatch_lines(
        [
            "*= gpuinfer summary =*",
            "suite*tests*outcomes*verdicts*key metrics",
            "other*4*1 failed, 3 passed*passed*load runs, worst TTFT p95 * ms (n=*)*",
            f"report: {out / 'report.json'}",
        ]
    )


def test_a_killed_run_leaves_a_valid_report_of_what_completed(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(
        """
        import os, signal
        from pytest_gpuinfer.load.runner import Limits
        from pytest_gpuinfer.load.schedule import ClosedLoop
        from pytest_gpuinfer.load.workloads import Prompts

        def test_one(load_runner):
            load_runner.run(ClosedLoop(2), Prompts(output_tokens=4), Limits(requests=4))

        def test_two():
            pass

        def test_killed():
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = tmp_path / "reports"
    result = pytester.runpytest_subprocess(*SIM, f"--gpuinfer-report={out}", timeout=120)
    assert result.ret == -signal.SIGKILL
    document = _report(out)
    assert document["run"]["status"] == "running"
    assert sorted(_by_test(document)) == ["test_one", "test_two"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".report.json")] == []


def test_xdist_workers_results_merge_into_one_report(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist is not installed")
    pytester.makepyfile(
        """
        import pytest
        from pytest_gpuinfer.load.runner import Limits
        from pytest_gpuinfer.load.schedule import ClosedLoop
        from pytest_gpuinfer.load.workloads import Prompts

        @pytest.mark.parametrize("n", range(4))
        def test_load(load_runner, n):
            load_runner.run(ClosedLoop(2), Prompts(output_tokens=4), Limits(requests=4 + n))
        """
    )
    out = tmp_path / "reports"
    result = pytester.runpytest_subprocess(*SIM, "-n", "2", f"--gpuinfer-report={out}", timeout=300)
    result.assert_outcomes(passed=4)
    document = _report(out)
    assert document["run"]["xdist_workers"] == 2
    tests = document["tests"]
    assert len(tests) == 4
    assert {t["worker"] for t in tests} == {"gw0", "gw1"}
    requests = sorted(t["results"][0]["payload"]["summary"]["requests"] for t in tests)
    assert requests == [4, 5, 6, 7]
    assert all(t["target"]["engine"] == "sim" for t in tests)
    assert document["machine"]["cpu"]["logical_cores"] >= 1
    result.stdout.fnmatch_lines(["*= gpuinfer summary =*", "other*4*4 passed*"])


def _document(**run: Any) -> dict[str, Any]:
    """A small report document made through the collector."""
    report = ReportCollector(path=None, run={"plugin_version": "0", "started": "now", **run})
    report.absorb("tests/perf/test_a.py::test_a", when="call", outcome="passed", duration_s=1.0)
    return report.document("complete")


def test_collector_rejects_unknown_kinds_and_writes_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = ReportCollector(path=tmp_path / "report.json")
    with pytest.raises(ValueError, match="unknown report kind 'lod'"):
        report.record("t", "lod", {})
    report.record("tests/load/test_x.py::test_x", "note", {"title": "a", "text": float("nan")})
    entries = report.take_pending("tests/load/test_x.py::test_x")
    assert entries[0]["payload"]["text"] is None  # NaN is never written
    report.absorb(
        "tests/load/test_x.py::test_x",
        when="setup",
        outcome="failed",
        duration_s=0.1,
        entries=entries,
    )
    report.write()
    before = (tmp_path / "report.json").read_text()
    assert json.loads(before)["tests"][0]["outcome"] == "error"
    assert json.loads(before)["tests"][0]["suite"] == "load"

    def broken(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(collector_module.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        report.write("complete")
    assert (tmp_path / "report.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_validate_names_what_is_wrong() -> None:
    document = _document()
    validate(document)
    with pytest.raises(SchemaProblem, match="not a pytest-gpuinfer-report"):
        validate({"tests": []})
    with pytest.raises(SchemaProblem, match=r"schema version '2\.0'"):
        validate({**document, "schema_version": "2.0"})
    broken = json.loads(json.dumps(document))
    broken["tests"][0]["outcome"] = "fine"
    with pytest.raises(SchemaProblem, match="/tests/0/outcome"):
        validate(broken)


def test_markdown_summary_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_document()))
    assert report_main([str(path), "--markdown"]) == 0
    markdown = capsys.readouterr().out
    assert "| suite | tests | outcomes | verdicts | key metrics |" in markdown
    assert "| perf | 1 | 1 passed | - | - |" in markdown
    assert report_main([str(path), "--check"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match=r"bad\.json is not a valid report"):
        report_main([str(bad), "--check"])


def test_progress_line_is_quiet_off_a_terminal_and_throttled() -> None:
    lines: list[str] = []
    now = [0.0]
    quiet = ProgressLine(lines.append, enabled=False, label="load")
    assert not quiet.update("1/10") and lines == []
    live = ProgressLine(
        lines.append, enabled=True, label="sweep", min_interval_s=1.0, clock=lambda: now[0]
    )
    assert live.step("configuration", 1, 3)
    assert not live.step("configuration", 2, 3)  # too soon
    now[0] = 1.5
    assert live.step("configuration", 3, 3)
    assert lines == [
        "gpuinfer progress sweep: configuration 1/3",
        "gpuinfer progress sweep: configuration 3/3",
    ]


def test_load_progress_stays_out_of_a_non_terminal_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_gpuinfer.load.runner import Limits
        from pytest_gpuinfer.load.schedule import ClosedLoop
        from pytest_gpuinfer.load.workloads import Prompts

        def test_load(load_runner):
            load_runner.runner = load_runner.runner.with_options(progress_interval_s=0.05)
            load_runner.run(ClosedLoop(1), Prompts(output_tokens=4), Limits(requests=30))
        """
    )
    result = pytester.runpytest_subprocess(*SIM, "-s", timeout=120)
    result.assert_outcomes(passed=1)
    assert "gpuinfer progress" not in result.stdout.str() + result.stderr.str()


@pytest.mark.skipif(os.name != "posix", reason="needs a POSIX pseudo-terminal")
def test_load_progress_shows_on_a_terminal(pytester: pytest.Pytester) -> None:
    import pty
    import subprocess
    import sys

    pytester.makepyfile(
        """
        from pytest_gpuinfer.load.runner import Limits
        from pytest_gpuinfer.load.schedule import Poisson
        from pytest_gpuinfer.load.workloads import Prompts

        def test_load(load_runner):
            load_runner.runner = load_runner.runner.with_options(progress_interval_s=0.2)
            load_runner.run(Poisson(20), Prompts(output_tokens=4), Limits(duration_s=3))
        """
    )
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            *SIM,
            "test_load_progress_shows_on_a_terminal.py",
        ],
        cwd=pytester.path,
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the child exited
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 0, output.decode(errors="replace")[-2000:]
    assert b"gpuinfer progress load: " in output and b"requests done" in output


def test_not_judged_is_never_counted_as_passed_in_json_junit_or_terminal(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """A load run without a latency SLO: its latency verdict is NOT JUDGED (no limit) in the
    report's JSON (status, reason, passed false), in JUnit (its own count and status) and in
    the terminal table; only "no failed requests" counts as passed."""
    pytester.makepyfile(
        """
        from pytest_gpuinfer.load.runner import Limits
        from pytest_gpuinfer.load.schedule import ClosedLoop
        from pytest_gpuinfer.load.workloads import Prompts

        def test_no_slo(load_runner):
            load_runner.run(ClosedLoop(2), Prompts(output_tokens=4), Limits(requests=30))
        """
    )
    out = tmp_path / "reports"
    result = pytester.runpytest(*SIM, f"--gpuinfer-report={out}", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    document = _report(out)
    assert document["schema_version"] == "1.1"
    (entry,) = _by_test(document)["test_no_slo"]["results"]
    no_failures, latency = entry["payload"]["verdicts"]
    assert (latency["name"], latency["status"], latency["reason"]) == (
        "latency",
        "NOT JUDGED",
        "no limit",
    )
    assert latency["passed"] is False and latency["measured"] > 0 and latency["unit"] == "s"
    assert no_failures["status"] == "PASS" and no_failures["source"].startswith("default")
    junit = (pytester.path / "junit.xml").read_text()
    for name, value in (
        ("load_verdict_latency", "NOT JUDGED (no limit)"),
        ("load_verdicts_passed", "1"),
        ("load_verdicts_not_judged", "1"),
        ("load_verdicts_failed", "0"),
    ):
        assert f'name="{name}" value="{value}"' in junit, name
    result.stdout.fnmatch_lines(
        [
            "other*1 passed*1/2 passed, 1 NOT JUDGED*",
            "NOT JUDGED (no limit)  *test_no_slo: latency: no latency SLO applies to this run*",
        ]
    )


def test_every_kind_is_one_object_reading_its_own_and_older_payloads() -> None:
    """The registry knows every kind the schema allows; verdicts of schema 1.0 payloads still
    read (a 1.0 NOT JUDGED batches verdict stays NOT JUDGED, never a pass)."""
    from pytest_gpuinfer.report.kinds import KINDS, entry_verdicts, kind

    kinds_in_schema = schema()["$defs"]["result"]["properties"]["kind"]["enum"]
    assert list(KINDS) == kinds_in_schema
    old = {
        "kind": "batches",
        "payload": {
            "verdicts": [
                {"name": "throughput spread", "passed": False, "message": "m", "judged": False}
            ]
        },
    }
    (verdict,) = entry_verdicts(old)
    assert verdict.label == "NOT JUDGED (too noisy)" and not verdict.passed
    memory = {
        "kind": "memory",
        "payload": {"leak": {"passed": True, "growth_mb": 3.0, "max_growth_mb": 200.0}},
    }
    assert [v.label for v in entry_verdicts(memory)] == ["PASS"]
    with pytest.raises(ValueError, match="unknown report kind 'lod'"):
        kind("lod")
