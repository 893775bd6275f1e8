"""Precise timers and event loops shared by the load engine and the simulator; periodic threads.

Both are instruments: the load client must send each request at its scheduled instant and the
simulator must send each chunk at its scheduled instant, so both wait on absolute
``time.perf_counter()`` deadlines. asyncio's own timers round up to whole milliseconds; on Linux
one ``timerfd`` per event loop, armed for the earliest of a heap of deadlines, wakes the loop
within microseconds instead (:class:`DeadlineTimers`). Elsewhere the loop's timers are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Literal

LoopKind = Literal["auto", "uvloop", "asyncio"]
"""Event loop to run on: ``auto`` takes uvloop when it is installed."""

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29


def new_event_loop(kind: LoopKind = "auto") -> asyncio.AbstractEventLoop:
    """A fresh event loop of ``kind``; ``uvloop`` raises ImportError when it is not installed."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def reduce_timer_slack() -> None:
    """Ask Linux to wake this thread within 1 µs of its timers instead of the default 50 µs."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


class _Timespec(ctypes.Structure):
    """C ``struct timespec``."""

    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    """C ``struct itimerspec`` for ``timerfd_settime``."""

    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _perf_counter_is_monotonic() -> bool:
    """Whether ``perf_counter`` reads CLOCK_MONOTONIC, the clock a timerfd can be armed on."""
    return "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation


def _wake(waiter: asyncio.Future[None]) -> None:
    """Resolve a sleeper's future unless it was cancelled meanwhile."""
    if not waiter.done():
        waiter.set_result(None)


class DeadlineTimers:
    """Callbacks and sleeps at ``perf_counter()`` deadlines, on one event loop.

    On Linux one timerfd, armed for the earliest deadline of a heap, wakes the loop to the
    microsecond; elsewhere (or with ``use_timerfd=False``) the loop's own millisecond timers are
    used, and :attr:`precise` is False. When the timerfd fires, every callback due within
    ``early_s`` of now runs in that one wake-up (so deadlines a few microseconds apart share a
    write instead of each arming the timer). Use from the loop's thread only.
    """

    __slots__ = (
        "_armed_for",
        "_dispatching",
        "_early_s",
        "_fd",
        "_heap",
        "_loop",
        "_sequence",
        "_settime",
        "_spec",
        "_spec_ref",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, early_s: float = 0.0, use_timerfd: bool = True
    ) -> None:
        """Watch a new timerfd on ``loop`` where the platform has one, else use loop timers."""
        self._loop = loop
        self._early_s = early_s
        self._fd = -1
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._armed_for = math.inf
        self._dispatching = False
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        if use_timerfd and sys.platform.startswith("linux") and _perf_counter_is_monotonic():
            self._open_timerfd()

    def _open_timerfd(self) -> None:
        """Create the timerfd and watch it; on any failure stay on the loop's timers."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return
            self._settime = libc.timerfd_settime
        except (OSError, AttributeError):
            return
        try:
            self._loop.add_reader(fd, self._on_expired)
        except (OSError, NotImplementedError):
            os.close(fd)
            return
        self._fd = fd

    @property
    def precise(self) -> bool:
        """True when a timerfd wakes the loop (else the loop's millisecond timers)."""
        return self._fd >= 0

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` once ``perf_counter()`` reaches ``when``."""
        if self._fd < 0:
            self._loop.call_later(max(0.0, when - time.perf_counter()), callback)
            return
        heapq.heappush(self._heap, (when, next(self._sequence), callback))
        if when < self._armed_for and not self._dispatching:
            self._arm(when)

    async def sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (a ``perf_counter()`` value), at once when it has passed."""
        delay = deadline - time.perf_counter()
        if delay <= 0:
            return
        if self._fd < 0:
            await asyncio.sleep(delay)
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self.call_at(deadline, lambda: _wake(waiter))
        await waiter

    def _arm(self, when: float) -> None:
        """Set the timerfd to expire at absolute CLOCK_MONOTONIC time ``when``."""
        self._armed_for = when
        seconds = int(when)
        value = self._spec.it_value
        value.tv_sec = seconds
        value.tv_nsec = max(1, int((when - seconds) * 1e9))
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            # The kernel refused: wake by the loop's timer instead, late rather than never.
            self._loop.call_later(max(0.0, when - time.perf_counter()), self._run_due)

    def _on_expired(self) -> None:
        """The timerfd became readable: consume the expiry and run what is due."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        self._run_due()

    def _run_due(self) -> None:
        """Run every callback that is due, then re-arm for the next deadline."""
        if self._fd < 0:
            return
        heap = self._heap
        self._armed_for = math.inf
        self._dispatching = True
        try:
            limit = time.perf_counter() + self._early_s
            while heap and heap[0][0] <= limit:
                heapq.heappop(heap)[2]()
        finally:
            self._dispatching = False
            if heap:
                self._arm(heap[0][0])

    def close(self) -> None:
        """Stop watching and release the timerfd (once); pending callbacks are dropped."""
        self._heap.clear()
        if self._fd < 0:
            return
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1


class PeriodicThread:
    """Calls ``tick`` every ``interval_s`` on a daemon thread until stopped.

    The first call happens at once; ``tick`` returning False ends the thread (e.g. the process
    being watched is gone). Used by the background samplers (engine gauges, memory).
    """

    def __init__(self, tick: Callable[[], object], interval_s: float, *, name: str) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self._tick = tick
        self.interval_s = interval_s
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread; starting twice is a mistake worth naming."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name} already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop and join the thread; False when it was not running."""
        thread = self._thread
        if thread is None:
            return False
        self._stop.set()
        thread.join(timeout=timeout_s)
        self._thread = None
        return True

    def _run(self) -> None:
        """Thread body: tick, then wait one interval, until stopped or ``tick`` says False."""
        while self._tick() is not False:
            if self._stop.wait(self.interval_s):
                return
