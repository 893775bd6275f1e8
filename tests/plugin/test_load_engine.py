"""Tests of the load engine against the simulator: schedules, records, merging, self-check."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuinfer.load import cli as load_cli
from pytest_gpuinfer.load.prompts import synthetic_prompt
from pytest_gpuinfer.load.runner import (
    Limits,
    LoadResult,
    LoadRunner,
    ProbeFigures,
    Progress,
    RunnerOptions,
    SelfCheck,
    SelfCheckLimits,
)
from pytest_gpuinfer.load.schedule import ClosedLoop, Constant, Poisson, spike
from pytest_gpuinfer.load.workloads import Prompts, Synthetic
from pytest_gpuinfer.sim import SimConfig, run_in_thread

FAST = SimConfig(ttft_s=0.01, itl_s=0.002, output_tokens=8)


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """A fast simulator running in a thread for the whole module."""
    with run_in_thread(FAST) as url:
        yield url


def server_records(url: str) -> dict[str, dict[str, Any]]:
    """The simulator's own records, by request id."""
    with urllib.request.urlopen(url + "/sim/requests") as response:
        rows = json.load(response)
    return {row["request_id"]: row for row in rows}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one time."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    depth = best = 0
    for _, step in events:
        depth += step
        best = max(best, depth)
    return best


def test_closed_loop_keeps_concurrency_and_fills_records(sim_url: str) -> None:
    """Concurrency 4, 40 requests: all complete, never more than 4 in flight at the server."""
    result = LoadRunner(sim_url, "sim-model").run(
        ClosedLoop(4), Prompts(output_tokens=8), Limits(requests=40)
    )
    assert len(result.records) == 40
    assert [r.index for r in result.records] == list(range(40))
    assert all(r.ok for r in result.records), [r.error_message for r in result.records]
    assert len({r.request_id for r in result.records}) == 40
    truth = server_records(sim_url)
    rows = [truth[r.request_id] for r in result.records if r.request_id]
    assert len(rows) == 40
    assert max_overlap([(row["received"], row["end"]) for row in rows]) <= 4
    assert all(r.completion_tokens == 8 and r.chunk_tokens == [1] * 8 for r in result.records)
    assert result.ttft.count == 40 and result.ttft.p50 >= 0.01
    assert result.itl.count == 40 * 7
    assert result.summary.completed == 40
    assert result.config["schedule"] == {"kind": "closed", "concurrency": 4, "ramp_s": 0.0}


def test_closed_loop_next_request_is_scheduled_when_a_slot_frees(sim_url: str) -> None:
    """In a closed loop a request's scheduled time is its slot's previous request's end."""
    result = LoadRunner(sim_url, "sim-model").run(
        ClosedLoop(1), Prompts(output_tokens=2), Limits(requests=5)
    )
    records = result.records
    for previous, current in itertools.pairwise(records):
        assert current.scheduled == previous.end


def test_closed_loop_ramp_staggers_the_slots(sim_url: str) -> None:
    """ramp_s=0.02 with 4 slots: the first requests (each ~25 ms long) start 5 ms apart."""
    result = LoadRunner(sim_url, "sim-model").run(
        ClosedLoop(4, ramp_s=0.02), Prompts(output_tokens=8), Limits(requests=4)
    )
    scheduled = sorted(r.scheduled for r in result.records)
    expected = [0, 0.005, 0.01, 0.015]
    assert [s - scheduled[0] for s in scheduled] == pytest.approx(expected, abs=1e-6)
    assert result.queue.max < 0.005


def test_open_loop_sends_on_schedule(sim_url: str) -> None:
    """Constant 50 req/s: scheduled times 20 ms apart and each sent within a few ms of it."""
    result = LoadRunner(sim_url, "sim-model").run(
        Constant(50), Prompts(output_tokens=2), Limits(requests=25)
    )
    scheduled = [r.scheduled for r in result.records]
    assert [s - scheduled[0] for s in scheduled] == pytest.approx(
        [i * 0.02 for i in range(25)], abs=1e-6
    )
    assert result.queue.count == 25 and result.queue.p50 < 0.005
    assert result.self_check.dispatch_slip.count == 25


def test_concurrency_cap_shows_up_as_queue_time(sim_url: str) -> None:
    """100 req/s into 2 slots of ~30 ms: requests wait, and that wait is reported and counted."""
    result = LoadRunner(sim_url, "sim-model").run(
        Constant(100, max_concurrency=2), Prompts(output_tokens=8), Limits(requests=30)
    )
    assert all(r.ok for r in result.records)
    assert result.queue.max > 0.05
    assert result.config["concurrency_cap"] == 2
    for record in result.records:
        assert record.sent is not None and record.first_token is not None
        assert record.first_token - record.scheduled >= (record.sent - record.scheduled) + 0.009
    truth = server_records(sim_url)
    rows = [truth[r.request_id] for r in result.records if r.request_id]
    assert max_overlap([(row["received"], row["end"]) for row in rows]) <= 2


def test_two_processes_split_and_merge(sim_url: str) -> None:
    """processes=2 runs half the arrivals in each worker; records merge with worker ids."""
    runner = LoadRunner(sim_url, "sim-model", options=RunnerOptions(processes=2))
    result = runner.run(Constant(100), Prompts(output_tokens=2), Limits(requests=20))
    assert [r.index for r in result.records] == list(range(20))
    assert {r.worker for r in result.records} == {0, 1}
    assert all(r.worker == r.index % 2 for r in result.records)
    assert all(r.ok for r in result.records)
    scheduled = [r.scheduled for r in result.records]
    assert [s - scheduled[0] for s in scheduled] == pytest.approx(
        [i * 0.01 for i in range(20)], abs=1e-6
    )
    assert result.self_check.workers == 2


def test_progress_callback_and_line(sim_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A progress callback gets snapshots; progress=True prints a line on stderr."""
    seen: list[Progress] = []
    runner = LoadRunner(sim_url, "sim-model")
    watched = runner.with_options(progress=seen.append, progress_interval_s=0.05)
    watched.run(Poisson(40), Prompts(output_tokens=2), Limits(requests=12))
    assert seen and seen[-1].planned == 12
    assert all(b.done >= a.done for a, b in itertools.pairwise(seen))
    printed = runner.with_options(progress=True, progress_interval_s=0.05)
    printed.run(Poisson(40), Prompts(output_tokens=2), Limits(requests=8))
    assert "gpuinfer-load:" in capsys.readouterr().err


def test_result_json_round_trip_and_text(sim_url: str) -> None:
    """to_json carries config, summary, self-check, lengths, gauges and records (and verdicts
    once judged); the text has both parts."""
    result = LoadRunner(sim_url, "sim-model").run(
        ClosedLoop(2), Prompts(output_tokens=2), Limits(requests=6)
    )
    data = json.loads(result.to_json())
    assert set(data) == {"config", "summary", "self_check", "lengths", "gauges", "records"}
    result.judge([])
    assert json.loads(result.to_json())["verdicts"][0]["passed"] is True
    assert len(data["records"]) == 6 and data["summary"]["requests"] == 6
    assert data["self_check"]["client_bound"] is result.client_bound
    text = result.summary_text()
    assert "ttft" in text and "self-check:" in text


def test_warmup_is_left_out_of_the_summary(sim_url: str) -> None:
    """Requests scheduled in the warm-up are recorded but not summarised."""
    result = LoadRunner(sim_url, "sim-model").run(
        Constant(100), Prompts(output_tokens=2), Limits(requests=30, warmup_s=0.1)
    )
    assert len(result.records) == 30
    assert result.summary.requests == 20 and result.summary.warmup_excluded == 10


def test_prompt_list_is_used_round_robin(sim_url: str) -> None:
    """A list of prompts is cycled over the requests."""
    result = LoadRunner(sim_url, "sim-model").run(
        ClosedLoop(1), Prompts(("one", "one two three"), 2), Limits(requests=4)
    )
    prompts = [r.prompt_tokens or 0 for r in result.records]
    assert prompts[0] == prompts[2] and prompts[1] == prompts[3]
    assert prompts[1] - prompts[0] == 2


def test_run_works_inside_a_running_event_loop(sim_url: str) -> None:
    """The sync run() may be called from async code (it uses its own thread then)."""

    async def main() -> LoadResult:
        return LoadRunner(sim_url, "sim-model").run(
            ClosedLoop(2), Prompts(output_tokens=2), Limits(requests=4)
        )

    assert len(asyncio.run(main()).records) == 4


def test_arun_on_the_callers_loop(sim_url: str) -> None:
    """arun() runs on the caller's event loop."""
    runner = LoadRunner(sim_url, "sim-model")
    result = asyncio.run(runner.arun(ClosedLoop(2), Prompts(output_tokens=2), Limits(requests=4)))
    assert all(r.ok for r in result.records)


def test_burst_shape_runs_scaled(sim_url: str) -> None:
    """A spike schedule shrunk by scale runs every arrival."""
    schedule = spike(20, 5, before_s=2, spike_s=1, after_s=2, arrival="constant", scale=0.1)
    result = LoadRunner(sim_url, "sim-model").run(schedule, Prompts(output_tokens=2))
    assert len(result.records) == len(schedule.arrival_times()) == 18
    assert all(r.ok for r in result.records)


def test_blocked_event_loop_marks_the_run_client_bound(sim_url: str) -> None:
    """A callback that blocks the loop makes lag the engine must report, not hide."""

    def hog(_: Progress) -> None:
        time.sleep(0.03)

    runner = LoadRunner(
        sim_url, "sim-model", options=RunnerOptions(progress=hog, progress_interval_s=0.02)
    )
    result = runner.run(Poisson(50), Prompts(output_tokens=2), Limits(requests=25))
    check = result.self_check
    assert result.client_bound
    assert check.loop_lag.max >= 0.02
    assert any("event-loop lag" in reason for reason in check.reasons)
    assert "CLIENT-BOUND" in result.summary_text()


def test_self_check_judges_each_figure() -> None:
    """Each limit on its own makes a run client-bound; figures under every limit do not."""
    limits = SelfCheckLimits()
    calm = ProbeFigures(worker=0, cpu_s=0.2, wall_s=1.0, loop_lag_s=[0.0001] * 100)
    calm.dispatch_slip_s = [0.0002] * 100
    calm.backlog_samples, calm.backlog_nonzero = 100, 3
    assert not SelfCheck.from_figures([calm], limits).client_bound

    busy = ProbeFigures(worker=1, cpu_s=0.95, wall_s=1.0)
    assert "CPU core" in SelfCheck.from_figures([calm, busy], limits).reasons[0]
    laggy = ProbeFigures(worker=0, cpu_s=0.1, wall_s=1.0, loop_lag_s=[0.01] * 10)
    assert "lag" in SelfCheck.from_figures([laggy], limits).reasons[0]
    late = ProbeFigures(worker=0, cpu_s=0.1, wall_s=1.0, dispatch_slip_s=[0.02] * 10)
    assert "started late" in SelfCheck.from_figures([late], limits).reasons[0]
    crowded = ProbeFigures(worker=0, cpu_s=0.1, wall_s=1.0, cpu_wait_s=0.2, wakeups=200)
    assert "machine busy" in SelfCheck.from_figures([crowded], limits).reasons[0]
    waking = ProbeFigures(worker=0, cpu_s=0.1, wall_s=1.0, cpu_wait_s=0.2, wakeups=10_000)
    assert not SelfCheck.from_figures([waking], limits).client_bound  # 20 us per wake-up
    behind = ProbeFigures(worker=0, cpu_s=0.1, wall_s=1.0)
    behind.backlog_samples, behind.backlog_nonzero = 20, 15
    assert "reads falling behind" in SelfCheck.from_figures([behind], limits).reasons[0]


def test_light_run_reports_its_figures(sim_url: str) -> None:
    """Every self-check figure is measured on an ordinary run."""
    result = LoadRunner(sim_url, "sim-model").run(
        Poisson(40), Prompts(output_tokens=2), Limits(requests=10)
    )
    check = result.self_check
    assert 0.0 < check.cpu_fraction < 1.5
    assert check.loop_lag.count >= 5
    assert check.dispatch_slip.count == 10
    assert check.wall_s >= 0.2


@pytest.mark.parametrize(
    "make",
    [
        lambda run: run(ClosedLoop(2), Prompts()),  # no end
        lambda run: run(Poisson(10), Synthetic()),  # no end
        lambda run: run(ClosedLoop(2), Prompts(()), Limits(requests=1)),  # nothing to send
        lambda run: run("closed", Prompts(), Limits(requests=1)),  # not a schedule
        lambda run: Poisson(-1),
        lambda run: Limits(requests=-1),
        lambda run: Limits(duration_s=0),
        lambda run: RunnerOptions(processes=0),
        lambda run: LoadRunner(
            "http://127.0.0.1:9", "m", options=RunnerOptions(processes=2, preflight=False)
        ).run(ClosedLoop(1), Prompts(), Limits(requests=2)),
    ],
)
def test_bad_arguments_are_rejected(make: Any) -> None:
    """Unbounded, contradictory or impossible runs raise before sending anything."""
    runner = LoadRunner("http://127.0.0.1:9", "m", options=RunnerOptions(preflight=False))
    with pytest.raises(ValueError):
        make(runner.run)


def test_cli_exit_status_follows_the_slos(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gpuinfer-load: 0 when SLOs hold, 1 when one fails, JSON written with the verdicts."""
    base = ["--endpoint", sim_url, "--model", "sim-model", "--requests", "8", "--quiet"]
    base += ["--concurrency", "2", "--max-tokens", "4", "--prompt-tokens", "5"]
    assert load_cli.main([*base, "--slo", "ttft_p50<5s"]) == 0
    out = tmp_path / "run.json"
    assert load_cli.main([*base, "--slo", "ttft_p50<1us", "--json", str(out)]) == 1
    data = json.loads(out.read_text())
    assert data["verdicts"][0]["passed"] is False and len(data["records"]) == 8
    text = capsys.readouterr().out
    assert "PASS  ttft_p50" in text and "FAIL  ttft_p50" in text and "self-check:" in text


def test_cli_an_slo_it_cannot_judge_exits_3_not_0(
    sim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A p99 SLO over 8 requests cannot be judged: it says NOT JUDGED and exits 3, never 0."""
    base = ["--endpoint", sim_url, "--model", "sim-model", "--requests", "8", "--quiet"]
    base += ["--concurrency", "2", "--max-tokens", "4", "--prompt-tokens", "5"]
    assert load_cli.main([*base, "--slo", "ttft_p99<5s"]) == load_cli.EXIT_NOT_JUDGED == 3
    assert "NOT JUDGED (too few samples)  ttft_p99" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--concurrency", "2"],
        ["--concurrency", "2", "--requests", "1", "--slo", "nonsense<1"],
        ["--concurrency", "2", "--rate", "3", "--requests", "1"],
        ["--concurrency", "2", "--max-concurrency", "1", "--requests", "1"],
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str]) -> None:
    """Missing caps, bad SLOs and contradictory options give exit status 2."""
    base = ["--endpoint", "http://127.0.0.1:9", "--model", "m"]
    try:
        status = load_cli.main([*base, *argv])
    except SystemExit as exited:  # argparse's own usage errors
        status = int(exited.code or 0)
    assert status == 2


def test_synthetic_prompt_has_the_asked_word_count() -> None:
    """--prompt-tokens N makes a prompt of N words."""
    assert len(synthetic_prompt(37).split()) == 37


def test_cli_fails_when_requests_fail_and_names_the_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every request answered 500: exit 1 naming http=N, unless --allow-errors; and a short run
    against a failing server is not called client-bound for its CPU share."""
    base = ["--model", "sim-model", "--requests", "6", "--quiet", "--concurrency", "2"]
    base += ["--max-tokens", "4", "--prompt", "hello"]
    with run_in_thread(SimConfig(ttft_s=0.001, itl_s=0.001, error_rate=1.0)) as url:
        out = tmp_path / "failed.json"
        assert load_cli.main(["--endpoint", url, *base, "--json", str(out)]) == 1
        text = capsys.readouterr().out
        assert "FAIL  error_rate<=0 (default: no failed request): 6 of 6 requests failed" in text
        assert "used" not in text.split("self-check:")[1].split("FAIL")[0]
        data = json.loads(out.read_text())
        assert [v["passed"] for v in data["verdicts"]] == [False]
        assert load_cli.main(["--endpoint", url, *base, "--allow-errors"]) == 0
        assert load_cli.main(["--endpoint", url, *base, "--slo", "error_rate<=100%"]) == 0
    with run_in_thread(FAST) as url:
        assert load_cli.main(["--endpoint", url, *base]) == 0
        passed = "PASS  error_rate<=0 (default: no failed request): no failed requests (n=6)"
        assert passed in capsys.readouterr().out
