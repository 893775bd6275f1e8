"""Memory that does not grow with the run: retention policy, streamed figures against exact ones,
record files, and verdicts that a sketch's error cannot flip (simulator and pytester)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pytest_gpuinfer.load import cli as load_cli
from pytest_gpuinfer.load.result import RecordsNotKept
from pytest_gpuinfer.load.retention import Retention
from pytest_gpuinfer.load.runner import Limits, LoadResult, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import ClosedLoop, Poisson
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.metrics import slo, stats
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.sketch import LatencySketch
from pytest_gpuinfer.metrics.streaming import RunFold, Timeline
from pytest_gpuinfer.metrics.verdicts import Status, Unjudged
from pytest_gpuinfer.sim import SimConfig, run_in_thread

pytest.importorskip("fastdigest", reason="fastdigest (a core dependency) is not installed")
pyarrow = pytest.importorskip("pyarrow", reason="the records extra (pyarrow) is not installed")

AGREEMENT = 0.01
"""Stated tolerance: a streamed percentile within 1 % of the exact one (and the exact one within
the estimate's bounds) on these short runs."""

METRICS = ("ttft", "tpot", "itl_chunk", "itl_token", "e2e", "queue")


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """A fast simulator in a thread (sharing the GIL with the client spreads the latencies)."""
    config = SimConfig(ttft_s=0.01, itl_s=0.002, output_tokens=8)
    with run_in_thread(config) as url:
        yield url


def runner(url: str, **retention: object) -> LoadRunner:
    """A runner for the simulator with the given retention."""
    options = RunnerOptions(gauge_interval_s=None, retention=Retention(**retention))
    return LoadRunner(url, "sim-model", options=options)


def records_back(result: LoadResult) -> list[RequestRecord]:
    """A streamed run's records, read back from its file."""
    assert result.streamed is not None
    return sorted(result.read_records(), key=lambda r: r.index)


def assert_agrees(estimated: stats.Summary, exact: stats.Summary) -> None:
    """Counts, rates and means equal; percentiles within AGREEMENT and inside their bounds."""
    for name in ("requests", "completed", "failed", "errors", "warmup_excluded"):
        assert getattr(estimated, name) == getattr(exact, name), name
    assert estimated.completion_tokens == exact.completion_tokens
    assert estimated.duration_s == pytest.approx(exact.duration_s, rel=1e-9)
    for metric in METRICS:
        mine, truth = getattr(estimated, metric), getattr(exact, metric)
        assert not mine.exact and truth.exact and mine.count == truth.count, metric
        assert mine.mean == pytest.approx(truth.mean, rel=1e-9), metric
        for q in stats.PERCENTILES:
            value, want = mine.percentile(q), truth.percentile(q)
            lo, hi = mine.bounds(q)
            assert lo <= want <= hi, f"{metric} p{q}: exact {want} outside {lo}..{hi}"
            assert value == pytest.approx(want, rel=AGREEMENT), f"{metric} p{q}"


def test_sketch_of_few_values_is_numpy_exact() -> None:
    """Under 1,000 values every one is its own centroid: the same numbers numpy gives."""
    values = np.random.default_rng(0).lognormal(-3, 0.7, 800)
    sketch = LatencySketch()
    for start in range(0, 800, 100):
        sketch.add(values[start : start + 100])
    for q in (0, 10, 50, 90, 95, 99, 99.9, 100):
        assert sketch.quantile(q / 100) == pytest.approx(np.percentile(values, q), rel=1e-9)
    assert sketch.count == 800 and sketch.mean == pytest.approx(values.mean())


def test_fold_agrees_with_summarize_on_many_records() -> None:
    """20,000 records folded 256 at a time, in three merged parts, against summarize()."""
    rng = np.random.default_rng(1)
    records = []
    for i in range(20_000):
        start = 100.0 + i * 0.001
        first = start + rng.lognormal(-3, 0.6)
        times = list(first + np.cumsum(rng.uniform(0.008, 0.012, 12)))
        records.append(
            RequestRecord(
                i, start, sent=start + rng.exponential(1e-4), first_token=first, end=times[-1],
                chunk_times=times, chunk_tokens=[1] * 11 + [3], completion_tokens=14,
                error="http" if i % 997 == 0 else None,
            )
        )  # fmt: skip
    checks = slo.parse_slos("ttft_p95<100ms")
    exact = stats.summarize(records, warmup_s=1.0, slos=checks)
    parts = [RunFold(warmup_cutoff=101.0, slos=checks, timeline=Timeline(100.0)) for _ in range(3)]
    for n, start in enumerate(range(0, len(records), 256)):
        parts[n % 3].add(records[start : start + 256])
    for part in parts[1:]:
        parts[0].merge(part)
    estimated = parts[0].summary()
    assert_agrees(estimated, exact)
    assert estimated.goodput == pytest.approx(exact.goodput, rel=1e-9)
    rows = parts[0].timeline.rows() if parts[0].timeline else []
    assert sum(row.scheduled for row in rows) == 20_000 and len(rows) == 21


def test_timeline_doubles_its_window_instead_of_growing() -> None:
    """An hour of one request a second fits in 512 windows: the window widens, nothing grows."""
    timeline = Timeline(0.0, 1.0)
    fold = RunFold(timeline=timeline)
    for hour_part in range(0, 3600, 300):
        fold.add(
            [
                RequestRecord(t, float(t), sent=float(t), first_token=t + 0.1, end=t + 0.2)
                for t in range(hour_part, hour_part + 300)
            ]
        )
    assert len(timeline.windows) <= 512 and timeline.width_s == 8.0
    assert sum(row.completed for row in timeline.rows()) == 3600


def test_streamed_run_agrees_with_the_exact_summary_of_its_own_records(sim_url: str) -> None:
    """keep='stream' on a short run: the streamed summary against summarize() of the records
    read back from its file (same run, so any difference is the sketch's)."""
    limits = Limits(requests=1500, warmup_s=0.1)
    result = runner(sim_url, keep="stream").run(ClosedLoop(8), Prompts(output_tokens=8), limits)
    assert result.streamed is not None
    with pytest.raises(RecordsNotKept, match=r"reading result\.records needs every request record"):
        _ = result.records  # loud, never an empty list a caller could take for no requests
    back = records_back(result)
    assert [r.index for r in back] == list(range(1500))  # every record once: none lost, none twice
    assert_agrees(result.summary, stats.summarize(back, warmup_s=0.1))
    assert result.lengths.output_exact and result.lengths.achieved_output.p50 == 8
    assert sum(row.scheduled for row in result.timeline_rows()) == 1500


def test_streamed_verdicts_agree_with_exact_verdicts(sim_url: str) -> None:
    """The same SLOs judged on the streamed summary and on the exact one, limits spread from
    well under to well over the measured percentiles: the same PASS/FAIL each time."""
    result = runner(sim_url, keep="stream").run(
        ClosedLoop(8), Prompts(output_tokens=8), Limits(requests=1500)
    )
    exact = stats.summarize(records_back(result))
    texts = []
    for metric, field in (("ttft", "ttft"), ("itl", "itl_token"), ("e2e", "e2e")):
        for q in ("p50", "p95", "p99"):
            value = exact.metric(field).stat(q)
            for factor in (0.5, 0.98, 1.0, 1.02, 2.0):
                texts.append(f"{metric}_{q}<{value * factor * 1e3:.6f}ms")
    slos = slo.parse_slos(texts)
    streamed = result.judge(slos, allow_errors=True)
    truth = slo.judge_run(slos, exact, allow_errors=True)
    assert [v.status for v in streamed] == [v.status for v in truth]
    near = [v for v in streamed if "exact from the record file" in v.message]
    assert near, "no limit fell within the bounds: the test proves nothing about them"


def test_estimate_within_its_error_is_not_judged_without_a_record_file(sim_url: str) -> None:
    """No record file (spill=False): a limit inside the estimate's bounds is NOT JUDGED, never a
    verdict the sketch's error could flip; a limit outside them is judged from the estimate."""
    result = runner(sim_url, keep="stream", spill=False).run(
        ClosedLoop(8), Prompts(output_tokens=8), Limits(requests=1500)
    )
    assert result.streamed is not None and result.streamed.files == []
    assert "records not kept" in result.summary_text()
    p95 = result.summary.ttft.p95
    near, far = result.judge(slo.parse_slos([f"ttft_p95<{p95 * 1e3}ms", "ttft_p95<10s"]))[:2]
    assert near.status is Status.NOT_JUDGED and near.reason is Unjudged.WITHIN_ESTIMATE_ERROR
    assert "which holds the limit" in near.message
    assert far.passed and "t-digest estimate, exact value within" in far.message


def test_red_a_streamed_run_over_its_slo_fails(
    sim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """RED: a run that deserves to fail (TTFT about 10 ms against a 2 ms limit) fails from its
    sketch, with measured vs limit, through gpuinfer-load --keep stream."""
    argv = ["--endpoint", sim_url, "--model", "sim-model", "--requests", "1200", "--quiet"]
    argv += ["--concurrency", "8", "--max-tokens", "8", "--prompt-tokens", "5", "--keep", "stream"]
    assert load_cli.main([*argv, "--slo", "ttft_p95<2ms"]) == load_cli.EXIT_SLO_FAILED == 1
    out = capsys.readouterr().out
    assert "FAIL  ttft_p95" in out and "t-digest estimate, exact value within" in out
    assert "kept: figures streamed from the start" in out


def test_auto_keeps_short_runs_and_streams_those_planned_past_the_limit(sim_url: str) -> None:
    """auto: a run planned within max_records keeps every record (exact); one planned past it
    streams from the start; neither leaves a temporary folder behind."""
    short = runner(sim_url, max_records=500).run(
        ClosedLoop(4), Prompts(output_tokens=4), Limits(requests=400)
    )
    assert short.streamed is None and len(short.records) == 400 and short.summary.ttft.exact
    long = runner(sim_url, max_records=500).run(
        Poisson(2000, seed=1), Prompts(output_tokens=4), Limits(requests=800)
    )
    assert long.streamed is not None and long.streamed.switched_at is None
    assert long.summary.requests == 800 and not long.summary.ttft.exact
    folder = long.streamed.folder
    assert folder is not None and folder.exists()
    del long
    assert not folder.exists()  # the temporary records folder goes with the result


def test_auto_switches_mid_run_without_losing_or_repeating_a_record(sim_url: str) -> None:
    """A closed loop bounded by time has no planned count: it keeps records until max_records,
    then streams, folding what it kept alongside: every request counted once."""
    result = runner(sim_url, max_records=300).run(
        ClosedLoop(8), Prompts(output_tokens=4), Limits(duration_s=1.5)
    )
    assert result.streamed is not None and result.streamed.switched_at == 300
    back = records_back(result)
    assert [r.index for r in back] == list(range(len(back))) and len(back) > 300
    assert result.summary.requests == len(back)
    assert_agrees(result.summary, stats.summarize(back))


def test_two_processes_stream_one_file_each_and_merge(sim_url: str) -> None:
    """Two client processes: one record file each, figures merged, every record once."""
    run = runner(sim_url, keep="stream").with_options(processes=2)
    result = run.run(ClosedLoop(8), Prompts(output_tokens=4), Limits(requests=600))
    assert result.streamed is not None and len(result.streamed.files) == 2
    back = records_back(result)
    assert [r.index for r in back] == list(range(600))
    assert_agrees(result.summary, stats.summarize(back))


def test_records_not_kept_is_a_clear_error_for_figures_that_need_them(sim_url: str) -> None:
    """Burst analysis of a streamed run names why it cannot run instead of finding no requests."""
    from pytest_gpuinfer.load.bursts import analyze
    from pytest_gpuinfer.load.shapes import spike

    result = runner(sim_url, keep="stream").run(
        ClosedLoop(2), Prompts(output_tokens=4), Limits(requests=50)
    )
    shape = spike(10, 5, before_s=1, spike_s=1, after_s=1)
    with pytest.raises(RecordsNotKept, match=r"streamed them.*keep='all'"):
        analyze(result, shape)


FIXTURE_TEST = """
from pytest_gpuinfer.load.result import RecordsNotKept
from pytest_gpuinfer.load.retention import Retention
from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.load.workloads import Prompts

def test_long_run(load_runner):
    load_runner.runner = load_runner.runner.with_options(retention=Retention(keep="stream"))
    result = load_runner.run(ClosedLoop(4), Prompts(output_tokens=4), Limits(requests=400))
    assert result.streamed is not None
"""


def test_fixture_per_run_json_names_the_record_file_instead_of_holding_records(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """The per-run JSON of a streamed run stays small: no records, the record file beside it,
    the time series; the records read back from that file."""
    pytester.makepyfile(FIXTURE_TEST)
    result = pytester.runpytest(
        "--engine=sim", f"--gpuinfer-report={tmp_path}", "--slo=ttft_p95<5s"
    )
    result.assert_outcomes(passed=1)
    (document_path,) = (tmp_path / "loads").glob("*.json")
    document = json.loads(document_path.read_text())
    assert "records" not in document and document["summary"]["completed"] == 400
    (records_file,) = document["streamed"]["records_files"]
    assert Path(records_file).parent == tmp_path / "loads" and Path(records_file).exists()
    assert document["summary"]["ttft"]["estimated"] == "t-digest"
    assert sum(row["scheduled"] for row in document["streamed"]["timeline"]) == 400
    assert document_path.stat().st_size < 200_000
    from pytest_gpuinfer.metrics.record_files import count_records

    assert count_records([Path(records_file)]) == 400
    assert math.isfinite(document["verdicts"][0]["measured"])
