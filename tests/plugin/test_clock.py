"""Tests of the shared deadline timers and event-loop factory (pytest_gpuinfer.clock)."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from pytest_gpuinfer.clock import DeadlineTimers, new_event_loop


def run_with_timers(use_timerfd: bool, early_s: float = 0.0) -> list[tuple[str, float, float]]:
    """Schedule callbacks and sleeps out of order; return (name, deadline, ran at) as they ran."""
    ran: list[tuple[str, float, float]] = []

    async def scenario() -> None:
        timers = DeadlineTimers(
            asyncio.get_running_loop(), early_s=early_s, use_timerfd=use_timerfd
        )
        assert timers.precise is (use_timerfd and sys.platform.startswith("linux"))
        done = asyncio.Event()
        start = time.perf_counter()

        def note(name: str, deadline: float) -> None:
            """Record that ``name`` ran, and finish after the last one."""
            ran.append((name, deadline, time.perf_counter()))
            if len(ran) == 4:
                done.set()

        for name, offset in (("c", 0.030), ("a", 0.010), ("b", 0.020)):
            deadline = start + offset
            timers.call_at(deadline, lambda name=name, deadline=deadline: note(name, deadline))
        sleep_deadline = start + 0.015
        await timers.sleep_until(sleep_deadline)
        note("sleep", sleep_deadline)
        await asyncio.wait_for(done.wait(), timeout=5)
        await timers.sleep_until(start)  # a deadline in the past returns at once
        timers.close()
        timers.close()  # closing twice is harmless

    loop = new_event_loop("asyncio")
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    return ran


@pytest.mark.parametrize("use_timerfd", [True, False], ids=["timerfd", "loop-timers"])
def test_deadlines_run_in_order_and_never_early(use_timerfd: bool) -> None:
    """Callbacks and sleeps wake in deadline order, none before its deadline."""
    ran = run_with_timers(use_timerfd)
    assert [name for name, _, _ in ran] == ["a", "sleep", "b", "c"]
    tolerance = 0.0 if use_timerfd else 0.001  # the loop's timers are millisecond-grained
    for name, deadline, at in ran:
        assert at >= deadline - tolerance, (name, at - deadline)


def test_early_window_batches_close_deadlines() -> None:
    """With ``early_s``, callbacks due within it of the wake-up run in the same wake-up."""
    if not sys.platform.startswith("linux"):
        pytest.skip("no timerfd on this platform")
    ran = run_with_timers(use_timerfd=True, early_s=0.050)
    # a's wake-up runs b and c too (due within 50 ms); the sleeper resumes after that dispatch
    assert [name for name, _, _ in ran] == ["a", "b", "c", "sleep"]


def test_closed_timers_drop_pending_callbacks() -> None:
    """A callback still pending at close() never runs (the simulator's shutdown relies on it)."""
    ran: list[str] = []

    async def scenario() -> None:
        timers = DeadlineTimers(asyncio.get_running_loop())
        timers.call_at(time.perf_counter() + 0.01, lambda: ran.append("late"))
        timers.close()
        await asyncio.sleep(0.03)

    loop = new_event_loop("asyncio")
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    if sys.platform.startswith("linux"):
        assert ran == []


def test_event_loop_kinds() -> None:
    """``asyncio`` gives asyncio's loop; ``auto`` gives uvloop when it is installed."""
    plain = new_event_loop("asyncio")
    try:
        assert type(plain).__module__.startswith("asyncio")
    finally:
        plain.close()
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
    auto = new_event_loop("auto")
    try:
        assert isinstance(auto, uvloop.Loop)
    finally:
        auto.close()


def test_periodic_thread_ticks_until_stopped_or_told_to_end() -> None:
    """The first tick is at once; False from the tick ends the thread; stop joins it."""
    import threading

    from pytest_gpuinfer.clock import PeriodicThread

    ticks: list[int] = []
    ended = threading.Event()

    def tick() -> bool:
        ticks.append(len(ticks))
        if len(ticks) == 3:
            ended.set()
            return False
        return True

    worker = PeriodicThread(tick, 0.001, name="test-periodic")
    worker.start()
    assert ended.wait(5.0)
    with pytest.raises(RuntimeError, match="already started"):
        worker.start()
    assert worker.stop() is True and worker.running is False
    assert ticks == [0, 1, 2], "ticking went on after the tick returned False"
    assert worker.stop() is False
    with pytest.raises(ValueError):
        PeriodicThread(tick, 0.0, name="bad")
