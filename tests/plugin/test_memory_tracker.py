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
from pytest_gpuinfer.memory.leak import judge_batches, judge_growth, run_batches
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
    verdict = judge_batches(tracker, phases, max_growth_mb=60)
    assert verdict.passed is should_pass, verdict.message()
    assert len(verdict.phases) == 5
    if leak:
        assert "total delta" in verdict.message() and "per batch" in verdict.message()
        assert verdict.slope_mb_per_unit == pytest.approx(30, rel=0.4)
        assert all(p.peak_bytes >= p.after_bytes for p in phases)
    else:
        # a steady hog still peaks at its 30 MB allocation inside each batch
        assert max(p.peak_bytes - p.before_bytes for p in phases) >= 0


def test_trend_fails_slow_creep_under_the_total_limit() -> None:
    source = ScriptedSource([100.0])
    tracker = MemoryTracker(source, interval_s=0.01)
    phases = [
        PhaseStats(f"b{i}", i, i + 1, (100 + 8 * i) * MB, (108 + 8 * i) * MB, (110 + 8 * i) * MB)
        for i in range(6)
    ]
    verdict = judge_batches(tracker, phases, max_growth_mb=500, max_slope_mb_per_batch=5)
    assert not verdict.passed
    assert verdict.reasons and "per batch" in verdict.reasons[0]
    flat = [PhaseStats(f"b{i}", i, i + 1, 100 * MB, 100 * MB, 120 * MB) for i in range(6)]
    assert judge_batches(tracker, flat, max_growth_mb=500, max_slope_mb_per_batch=5).passed


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
    verdict = judge_batches(tracker, phases, max_growth_mb=500)
    assert verdict.passed is should_pass, verdict.message()
    assert all(p.peak_bytes - p.before_bytes >= 400 * MB for p in phases)
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
