"""Burst measurements against the SIMULATOR (known capacity and failure rate), and their logic.

The simulator is an instrument: it checks our own queue-depth, recovery and drop accounting, never
an engine. Timing bounds here are deliberately loose (the machine is shared).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_gpuinfer.load import bursts, locust_process, shapes
from pytest_gpuinfer.load.gauges import GaugeRecorder, in_flight_series
from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import Poisson
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.sim import run_in_process

SEQS, TTFT_MS, ITL_MS, TOKENS = 4, 20, 5, 16
SERVICE_S = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000
CAPACITY_RPS = SEQS / SERVICE_S  # 42 req/s: what the simulator can finish at most


@pytest.fixture(scope="module")
def limited_sim() -> Iterator[str]:
    """A simulator that runs at most four sequences at once (as its own process)."""
    with run_in_process(
        "--max-num-seqs",
        str(SEQS),
        "--ttft-ms",
        str(TTFT_MS),
        "--itl-ms",
        str(ITL_MS),
        "--output-tokens",
        str(TOKENS),
    ) as url:
        yield url


def test_10x_spike_on_a_limited_simulator_queues_then_drains(limited_sim: str) -> None:
    base = CAPACITY_RPS * 0.15
    shape = shapes.spike(base, 10, before_s=2, spike_s=2, after_s=4, arrival="constant")
    result = LoadRunner(limited_sim, "sim-model").run(shape.schedule, Prompts(output_tokens=TOKENS))
    report = bursts.analyze(result, shape, bursts.BurstLimits(max_recovery_s=10))
    print(report.text())
    assert report.queue_source == "engine"
    assert report.max_queue is not None and report.max_queue > 0
    assert report.timeline[-1].queue == 0, "the queue must drain by the end"
    assert report.dropped == 0
    # The queue grows by (arrivals - capacity) during the spike and drains at (capacity - base).
    predicted = (shape.peak_rps - CAPACITY_RPS) * 2 / (CAPACITY_RPS - base)
    assert report.recovery_s is not None
    assert 0.3 * predicted - 0.3 <= report.recovery_s <= 2.5 * predicted + 1.0, (
        f"recovery {report.recovery_s:.2f} s, capacity predicts {predicted:.2f} s"
    )
    assert report.phases["during"].ttft.p95 > report.phases["before"].ttft.p95
    assert report.peak_throughput_rps <= CAPACITY_RPS * 1.3
    report.check()


def test_a_failing_simulator_fails_the_zero_drop_verdict_naming_the_count() -> None:
    with run_in_process("--error-rate", "0.05", "--ttft-ms", "5", "--itl-ms", "1") as url:
        shape = shapes.spike(15, 5, before_s=2, spike_s=1, after_s=2, arrival="constant")
        result = LoadRunner(url, "sim-model").run(shape.schedule, Prompts(output_tokens=8))
    report = bursts.analyze(result, shape)
    failed = sum(1 for record in result.records if not record.ok)
    assert failed > 0
    assert report.dropped == failed
    with pytest.raises(bursts.BurstViolation) as raised:
        report.check()
    message = str(raised.value)
    assert f"drops: {failed} of {report.sent} requests dropped" in message
    assert "allowed 0" in message
    assert "seconds with failures" in message
    allowed = bursts.analyze(result, shape, bursts.BurstLimits(allow_drops=failed))
    assert {v.name: v.label for v in allowed.verdicts}["drops"] == "PASS"


def _record(index: int, sent: float, end: float | None, ttft: float = 0.01) -> RequestRecord:
    """A finished (or failed, with end None) request for the pure-logic tests."""
    record = RequestRecord(index=index, scheduled=sent, sent=sent)
    if end is not None:
        record.first_token, record.end = sent + ttft, end
    else:
        record.end, record.error = sent + 0.5, "timeout"
    return record


def test_in_flight_fallback_counts_sent_but_unfinished() -> None:
    records = [_record(0, 0.0, 1.0), _record(1, 0.5, 2.0), _record(2, 1.5, 1.6)]
    readings = in_flight_series(records, 0.5)
    counts = {round(r.t, 2): r.gauges.running for r in readings}
    assert counts[0.0] == 1 and counts[0.5] == 2 and counts[1.0] == 1 and counts[2.0] == 0


def test_without_metrics_the_gauges_fall_back_to_client_counts_and_say_so() -> None:
    recorder = GaugeRecorder("http://127.0.0.1:9", interval_s=0.1, timeout_s=0.2).start()
    recorder.stop()
    series = recorder.series([_record(0, 0.0, 1.0)])
    assert series.source == "client_in_flight"
    assert "client-side" in series.queue_label
    assert "unavailable" in series.note


def test_queue_and_recovery_verdicts_print_the_rows_that_broke_them(limited_sim: str) -> None:
    shape = shapes.spike(CAPACITY_RPS * 0.15, 10, before_s=1, spike_s=1, after_s=2)
    result = LoadRunner(limited_sim, "sim-model").run(shape.schedule, Prompts(output_tokens=TOKENS))
    limits = bursts.BurstLimits(max_queue=1, max_recovery_s=0, max_preemptions=0)
    report = bursts.analyze(result, shape, limits)
    verdicts = {v.name: v for v in report.verdicts}
    assert not verdicts["queue"].passed
    assert "seconds over the limit" in verdicts["queue"].message
    assert verdicts["preemptions"].passed  # no --preempt-every: the counter stays at 0
    document = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert document["timeline"][0]["sent"] > 0
    rows = list(csv.DictReader(io.StringIO(report.timeline_csv())))
    assert len(rows) == len(report.timeline)
    assert {"sent", "completed", "in_flight", "queue", "running", "kv_usage", "p95_s"} <= set(
        rows[0]
    )
    # a 10x spike over capacity queues, so recovery takes time and a 0 s limit always fails
    recovery = verdicts["recovery"]
    assert recovery.failed and recovery.measured is not None and recovery.measured > 0
    assert recovery.message.startswith(f"{recovery.measured:.2f} s (limit 0 s)")
    assert "timeline from the burst end" in recovery.message


def test_preemptions_over_the_limit_fail_naming_the_count() -> None:
    """A server whose counter shows preemptions during the burst fails max_preemptions=0 with the
    count read from its /metrics; the same burst with a limit above the count passes."""
    with run_in_process(
        "--max-num-seqs", str(SEQS), "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS),
        "--output-tokens", str(TOKENS), "--preempt-every", "4",
    ) as url:  # fmt: skip
        shape = shapes.spike(CAPACITY_RPS * 0.15, 4, before_s=0.5, spike_s=0.5, after_s=1)
        result = LoadRunner(url, "sim-model").run(shape.schedule, Prompts(output_tokens=TOKENS))
    admitted = sum(1 for r in result.records if r.ok)
    strict = bursts.analyze(result, shape, bursts.BurstLimits(max_preemptions=0))
    verdict = {v.name: v for v in strict.verdicts}["preemptions"]
    assert verdict.failed and verdict.measured is not None and verdict.measured >= 1, verdict
    assert verdict.measured <= admitted // 4, (verdict.measured, admitted)
    assert verdict.message.startswith(f"{verdict.measured:g} during the run (limit 0)")
    loose = bursts.analyze(result, shape, bursts.BurstLimits(max_preemptions=admitted))
    assert {v.name: v for v in loose.verdicts}["preemptions"].passed


def test_recovery_without_queue_readings_is_not_judged_never_0_s(limited_sim: str) -> None:
    """No gauges sampled: the queue after the burst is unknown, so is recovery."""
    shape = shapes.spike(10, 3, before_s=0.6, spike_s=0.4, after_s=0.6, arrival="constant")
    runner = LoadRunner(limited_sim, "sim-model", options=RunnerOptions(gauge_interval_s=None))
    result = runner.run(shape.schedule, Prompts(output_tokens=4))
    report = bursts.analyze(result, shape, bursts.BurstLimits(max_recovery_s=5))
    recovery = {v.name: v for v in report.verdicts}["recovery"]
    assert recovery.label == "NOT JUDGED (no data)" and not recovery.passed
    assert "no queue readings after the burst" in recovery.message
    assert report.recovery_s is None and "recovery not measured" in report.headline()
    report.check()  # NOT JUDGED is not a failure of the burst; the plugin settles it


def test_recovery_without_arrivals_after_the_burst_is_not_judged(limited_sim: str) -> None:
    """A shape that ends with the burst (nothing arrives after it) cannot show recovery."""
    shape = shapes.spike(2, 3, before_s=1.0, spike_s=1.0, after_s=0.2, arrival="poisson", seed=3)
    result = LoadRunner(limited_sim, "sim-model").run(shape.schedule, Prompts(output_tokens=4))
    report = bursts.analyze(result, shape, bursts.BurstLimits(max_recovery_s=5))
    recovery = {v.name: v for v in report.verdicts}["recovery"]
    assert recovery.label == "NOT JUDGED (no data)"
    assert "no arrival after the burst" in recovery.message
    unlimited = bursts.analyze(result, shape)
    assert {v.name: v.label for v in unlimited.verdicts}["recovery"] == "NOT JUDGED (no limit)"


def test_burst_marker_limits_reach_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.burst(max_recovery_s=7, max_queue=3)
        def test_limits(burst_limits):
            assert burst_limits.max_recovery_s == 7
            assert burst_limits.max_queue == 3
            assert burst_limits.allow_drops == 0

        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1)


def test_burst_marker_with_a_misspelt_limit_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """A typo in a limit name would leave that limit unjudged: it stops the run up front."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.burst(max_quue=3)
        def test_typo(burst_limits):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_typo: @pytest.mark.burst: *max_quue*"])


def test_every_load_run_samples_the_engine_gauges_several_times_a_second(
    limited_sim: str,
) -> None:
    result = LoadRunner(limited_sim, "sim-model").run(
        Poisson(20), Prompts(output_tokens=4), Limits(duration_s=2.0)
    )
    assert result.gauges is not None and result.gauges.source == "engine"
    times = [reading.t for reading in result.gauges.readings]
    assert len(times) >= 5, f"only {len(times)} readings in 2 s"
    assert result.to_dict(include_records=False)["gauges"]["source"] == "engine"
    off = LoadRunner(limited_sim, "sim-model", options=RunnerOptions(gauge_interval_s=None))
    assert off.run(Poisson(20), Prompts(output_tokens=4), Limits(duration_s=0.3)).gauges is None


def test_burst_limits_from_option_texts() -> None:
    from pytest_gpuinfer.plugin.load_fixtures import parse_limit_texts, resolve_load_scale

    parsed = parse_limit_texts(["max_recovery_s=10", "allow-drops=2", "latency=e2e"])
    assert bursts.BurstLimits().updated(parsed) == bursts.BurstLimits(
        max_recovery_s=10, allow_drops=2, latency="e2e"
    )
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_limit_texts(["max_recovery_s"])
    assert resolve_load_scale(1.0, True) == 0.1
    assert resolve_load_scale(0.5, True) == 0.5
    assert resolve_load_scale(1.0, False) == 1.0


def test_locust_stats_csv_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "locust_stats.csv"
    path.write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
        "50%,95%,99%,100%\n"
        "TTFT,/v1/chat,12,0,40,41.5,30,60,0,3.9,0.0,40,55,60,60\n"
        "POST,/v1/chat,12,1,100,101,90,130,0,3.9,0.3,100,120,130,130\n"
        ",Aggregated,24,1,60,70,30,130,0,7.8,0.3,60,N/A,130,130\n"
    )
    rows = locust_process.read_stats_csv(path)
    run = locust_process.LocustRun(["locust"], 0, rows, [], tmp_path)
    ttft = run.row("TTFT")
    assert ttft is not None and ttft.percentiles["95%"] == 55 and ttft.median_ms == 40
    assert run.aggregated is not None and run.aggregated.percentiles["95%"] is None
    assert run.total_failures == 1
    assert "TTFT p50/p95 40/55 ms" in run.headline()


def test_locust_runs_only_against_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        locust_process.run_locust(
            "tests/load/locustfile.py", "http://10.0.0.1:8000", out_dir=tmp_path, run_time_s=1
        )


LOAD_SUITE = Path(__file__).parents[1] / "load"


def _load_suite(pytester: pytest.Pytester) -> None:
    """The load suite's burst test and its conftest, as the suite ships them."""
    pytester.makeconftest((LOAD_SUITE / "conftest.py").read_text())
    pytester.makepyfile(test_inner_bursts=(LOAD_SUITE / "test_burst_shapes.py").read_text())


def test_burst_suite_fails_a_server_that_does_not_recover_naming_its_figures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One sequence at a time (about 10 req/s) and a baseline of 5 req/s: the 10x spike queues
    far more than the 6 s after it can drain; the engine's own queue gauge shows it late, so a
    busy machine cannot excuse it."""
    _load_suite(pytester)
    monkeypatch.setenv("GPUINFER_BASELINE_RPS", "5")
    result = pytester.runpytest(
        "--engine=sim",
        "--engine-arg=--max-num-seqs=1",
        "--engine-arg=--ttft-ms=20",
        "--engine-arg=--itl-ms=5",
        "--load-scale=0.1",
        "-k",
        "spike10x",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*burst 'spike10x' failed:",
            "*FAIL  recovery: never (within the run) (limit 6 s): queue back at baseline (0) "
            "* s after the burst, latency p95 within * ms never (within the run) after it;*",
        ]
    )
