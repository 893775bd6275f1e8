"""The ``leak`` marker and ``vram_tracker`` fixture through pytester: a leaking hog fails, a steady
one passes; startup-failure reasons are read from engine logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_gpuinfer.targets.startup_failure import explain_startup_failure, startup_failure_reason

LEAK_TESTS = """
import pytest
from pytest_gpuinfer.memory.hog import MemoryHog


@pytest.fixture
def hog(request):
    # a fixture, like a server: it lives until after the leak verdict
    with MemoryHog(mb=30, leak=request.param) as process:
        yield process


@pytest.mark.leak(max_growth_mb=50, settle_s=0.3, release_timeout_s=2)
@pytest.mark.parametrize("hog", [True, False], ids=["leaking", "steady"], indirect=True)
def test_hog(hog, vram_tracker):
    vram_tracker.start(hog.pid, interval_s=0.05, settle_s=0.3)
    for _ in range(4):
        hog.batch()


@pytest.mark.leak(max_growth_mb=50)
def test_nothing_to_track():
    pass


@pytest.mark.leak(max_growth_mb=50, settle_s=0.3, release_timeout_s=2)
@pytest.mark.parametrize(
    "per_batch_mb", [50, 5], ids=["judged-itself-passing", "judged-itself-failing"]
)
def test_judged_by_the_test(per_batch_mb, vram_tracker):
    # 4 x 30 MB kept: over the marker's 50 MB, but the test's own limits (50 MB per batch
    # passes, 5 MB per batch fails) are what count for a tracker the test judged itself
    from pytest_gpuinfer.memory.leak import GrowthLimits, judge_batches, run_batches

    with MemoryHog(mb=30, leak=True) as process:
        tracker = vram_tracker.start(process.pid, interval_s=0.05, settle_s=0.3)
        phases = run_batches(tracker, lambda _i: process.batch(), batches=4, settle_s=0.2)
        limits = GrowthLimits(per_unit_mb=per_batch_mb, allowance_mb=200, unit="batch")
        check = judge_batches(tracker, phases, work_per_batch=1, limits=limits)
        vram_tracker.judged(tracker, check)
        assert check.passed, check.message()


def test_tracker_without_marker(vram_tracker):
    with MemoryHog(mb=10, leak=True) as process:
        tracker = vram_tracker.start(process.pid, interval_s=0.05, settle_s=0.2)
        process.batch()
        assert tracker.sample_once().total_bytes > tracker.baseline_bytes + 5_000_000
"""


def test_leak_marker_fails_a_leaking_process_and_passes_a_steady_one(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(LEAK_TESTS)
    result = pytester.runpytest("-p", "no:randomly", "-v")
    result.assert_outcomes(passed=3, failed=3)
    text = result.stdout.str()
    assert "test_judged_by_the_test[judged-itself-passing] PASSED" in text
    assert "test_judged_by_the_test[judged-itself-failing] FAILED" in text
    assert "test_hog[leaking] FAILED" in text
    assert "test_hog[steady] PASSED" in text
    assert "test_tracker_without_marker PASSED" in text
    assert "memory leak check FAILED" in text and "timeline:" in text
    assert "FAIL  memory growth: memory grew +" in text and "(limit 50 MB)" in text
    assert "the leak marker has nothing to track" in text


def test_leak_marker_rejects_positional_arguments(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.leak(100)
        def test_bad(vram_tracker):
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_bad: leak marker takes keywords max_growth_mb*"])


VLLM_KV_TOO_BIG = """\
(EngineCore pid=9496) INFO 12-02 05:59:05 [utils.py:347] Using LBHNC KV cache layout.
(Worker pid=9888) ERROR 12-02 05:59:43 [multiproc_executor.py:953] Traceback (most recent \
call last):
(Worker pid=9888) ERROR 12-02 05:59:43 [multiproc_executor.py:953] ValueError: Available memory \
on node 0 (18.8/23.4 GiB) on kv cache allocation is less than requested memory for kv (1000.0 \
GiB). Decrease --kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory used by \
other processes.
(EngineCore pid=9496) ERROR 12-02 05:59:44 [core.py:1510] Exception: WorkerProc initialization \
failed due to an exception in a background process. See stack trace for root cause.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_startup_failure_reason_finds_the_root_cause_in_a_vllm_log() -> None:
    reason = startup_failure_reason(VLLM_KV_TOO_BIG)
    assert reason is not None and reason.startswith("ValueError: Available memory on node 0")
    assert explain_startup_failure(VLLM_KV_TOO_BIG).startswith(
        "engine failed to start: ValueError: Available memory"
    )
    assert startup_failure_reason("all fine\nINFO started") is None
    assert explain_startup_failure("") == "engine failed to start: no error line in the log"


def test_startup_failure_reason_prefers_a_memory_error() -> None:
    log = (
        "RuntimeError: something generic happened\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    )
    assert startup_failure_reason(log) == (
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )


MEMORY_SUITE = Path(__file__).parents[1] / "memory" / "test_leak_batches.py"


@pytest.mark.parametrize(
    ("leak_kb", "outcome"), [(200, "failed"), (0, "passed")], ids=["leaking", "steady"]
)
def test_leak_suite_fails_a_server_keeping_0_2_mb_per_request(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, leak_kb: int, outcome: str
) -> None:
    """The memory suite's batch test at its CI size (8 x 32 requests) against a simulator that
    keeps 200 KB per request: growth per request fails, naming the measured rate; a steady
    simulator passes."""
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_inner_leak=MEMORY_SUITE.read_text())
    result = pytester.runpytest(
        "--engine=sim",
        f"--engine-arg=--leak-kb-per-request={leak_kb}",
        "-k",
        "grow_with_requests",
    )
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(
            [
                "*memory leak check FAILED:",
                "*FAIL  memory per request: memory grew +* KB per request in every stretch of 3 "
                "batches (the least stretch median of 6; 8 batches of 32 requests, growth by "
                "batch *), limit 50 KB/request",
            ]
        )
        rate = float(result.stdout.str().split("memory grew +")[1].split(" KB")[0])
        assert 150 <= rate <= 300, rate
