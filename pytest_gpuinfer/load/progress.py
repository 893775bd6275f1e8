"""Progress of a running load run: counts per client process, reported every interval."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_gpuinfer.metrics.records import RequestRecord

ProgressCallback = Callable[["Progress"], None]


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress snapshot of a running load run."""

    done: int
    failed: int
    elapsed_s: float
    planned: int | None


class Counters:
    """Done/failed counts of one process, readable by a progress reporter."""

    __slots__ = ("done", "failed")

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0


def count_finished(record: RequestRecord, counters: Counters) -> None:
    """Add a finished request to the progress counters."""
    counters.done += 1
    if not record.ok:
        counters.failed += 1


class ProgressReporter:
    """Calls the progress callback (or prints a line) every interval while a run goes on."""

    def __init__(
        self, progress: ProgressCallback | bool | None, interval_s: float, planned: int | None
    ) -> None:
        self.interval_s = interval_s
        self.planned = planned
        self.callback: ProgressCallback | None
        if progress is True:
            self.callback = print_progress
        elif callable(progress):
            self.callback = progress
        else:
            self.callback = None

    def emit(self, done: int, failed: int, start_at: float) -> None:
        """Report one snapshot."""
        if self.callback is not None:
            elapsed = max(0.0, time.perf_counter() - start_at)
            self.callback(Progress(done, failed, elapsed, self.planned))

    async def watch_local(self, counters: Counters, start_at: float) -> None:
        """Report this process's counters every interval."""
        if self.callback is None:
            return
        while True:
            await asyncio.sleep(self.interval_s)
            self.emit(counters.done, counters.failed, start_at)

    def watch_shared(
        self, shared: Any, workers: int, start_at: float, stop: threading.Event
    ) -> None:
        """Report the sum of the workers' shared counters every interval (runs in a thread)."""
        if self.callback is None:
            return
        while not stop.wait(self.interval_s):
            done = sum(shared[2 * w] for w in range(workers))
            failed = sum(shared[2 * w + 1] for w in range(workers))
            self.emit(done, failed, start_at)


def print_progress(progress: Progress) -> None:
    """Default progress output: one line on stderr."""
    planned = f"/{progress.planned}" if progress.planned is not None else ""
    print(
        f"gpuinfer-load: {progress.done}{planned} done, {progress.failed} failed, "
        f"{progress.elapsed_s:.1f} s",
        file=sys.stderr,
        flush=True,
    )


async def share_counts(counters: Counters, shared: Any, worker: int) -> None:
    """Copy a worker process's progress counts into shared memory twice a second."""
    while True:
        shared[2 * worker] = counters.done
        shared[2 * worker + 1] = counters.failed
        await asyncio.sleep(0.5)
