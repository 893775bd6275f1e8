"""Sample a target's memory in a background thread: VRAM through NVML, else process-tree RSS.

On a GPU the source is NVML, GPUs named by UUID (NVML ignores ``CUDA_VISIBLE_DEVICES``), read
per GPU and per process. Without a GPU it is the resident set size of a process and all its
descendants (psutil), so leak tracking works on vLLM-CPU too: its API server, EngineCore and
worker are three processes.

    tracker = MemoryTracker(ProcessTreeRSS(server.process.pid), interval_s=0.2).start()
    with tracker.phase("batch 1"):
        run_batch()
    tracker.stop()
    print(tracker.summary(), tracker.format_timeline())
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Protocol

import numpy as np
import psutil  # type: ignore[import-untyped,unused-ignore]

from pytest_gpuinfer.clock import PeriodicThread
from pytest_gpuinfer.hardware.gpu import load_nvml

MB = 1_000_000
"""Memory figures are reported in decimal megabytes (MB), as the marker's ``max_growth_mb``."""


@dataclass(frozen=True)
class MemoryReading:
    """What one source read at one moment: the tracked total and its parts."""

    total_bytes: int
    parts: dict[str, int] = field(default_factory=dict)
    """Per GPU (``gpu:<uuid>``) and per process (``pid:<pid>``) bytes behind the total."""


@dataclass(frozen=True)
class MemorySample:
    """One reading stamped with ``time.monotonic()`` seconds."""

    t: float
    total_bytes: int
    parts: dict[str, int] = field(default_factory=dict)


class MemorySource(Protocol):
    """Anything that can read a memory total now (NVML, process-tree RSS, a test double)."""

    kind: str
    """'vram' or 'rss': which memory the total counts."""

    def read(self) -> MemoryReading:
        """The memory in use right now."""
        ...

    def describe(self) -> str:
        """One line naming what is measured, for messages."""
        ...


class SourceGone(RuntimeError):
    """The tracked process (tree) no longer exists."""


class ProcessTreeRSS:
    """Resident memory of one process and all its descendants (psutil)."""

    kind = "rss"

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._root = psutil.Process(pid)
        except psutil.NoSuchProcess as exc:
            raise SourceGone(f"process {pid} does not exist") from exc

    def read(self) -> MemoryReading:
        """Sum of RSS over the root process and its live descendants."""
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess as exc:
            raise SourceGone(f"process {self.pid} has exited") from exc
        parts: dict[str, int] = {}
        for proc in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                parts[f"pid:{proc.pid}"] = int(proc.memory_info().rss)
        if f"pid:{self.pid}" not in parts:
            raise SourceGone(f"process {self.pid} has exited")
        return MemoryReading(sum(parts.values()), parts)

    def describe(self) -> str:
        """Names the root process."""
        return f"RSS of process {self.pid} and its children (psutil)"


class NVMLMemory:
    """Device memory through NVML on GPUs named by UUID, total per GPU and per process.

    ``pids`` limits the total to those processes' device memory (a launched server's process
    tree); without it the total is every byte in use on the GPUs, which also counts other tenants.
    NVML reports process ids of the host's PID namespace: when this run is in a container, none
    of them is a process here, none matches the target's tree, and a per-process total would
    read zero however much the target used. When NVML lists processes, none is the target's and
    none exists here, the source switches to the whole-GPU total for good and says so in
    :meth:`describe`. NVML stays initialised from the first read until :meth:`close`.
    """

    kind = "vram"

    def __init__(
        self,
        uuids: Sequence[str],
        *,
        pids: Callable[[], set[int]] | None = None,
        nvml: ModuleType | None = None,
        pid_exists: Callable[[int], bool] = psutil.pid_exists,
    ) -> None:
        """``pid_exists``: is a process id one of this PID namespace (replaced in tests)."""
        if not uuids:
            raise ValueError("NVMLMemory needs at least one GPU UUID")
        self.uuids = tuple(uuids)
        self._pids = pids
        self._nvml = nvml
        self._module: ModuleType | None = None
        self._handles: dict[str, object] = {}
        self._pid_exists = pid_exists
        self.foreign_pids = False
        """True once NVML's process ids were seen to belong to another PID namespace."""

    def _open(self) -> ModuleType:
        """Initialise NVML once and look up the GPU handles by UUID."""
        if self._module is None:
            module = self._nvml if self._nvml is not None else load_nvml()
            if module is None:
                raise RuntimeError("nvidia-ml-py (pynvml) is not installed")
            module.nvmlInit()
            self._module = module
            self._handles = {u: module.nvmlDeviceGetHandleByUUID(u) for u in self.uuids}
        return self._module

    def read(self) -> MemoryReading:
        """Used bytes per GPU and per compute process; total as described on the class."""
        module = self._open()
        parts: dict[str, int] = {}
        per_process: dict[int, int] = {}
        for uuid, handle in self._handles.items():
            parts[f"gpu:{uuid}"] = int(module.nvmlDeviceGetMemoryInfo(handle).used)
            for proc in module.nvmlDeviceGetComputeRunningProcesses(handle):
                used = getattr(proc, "usedGpuMemory", None)
                pid = int(proc.pid)
                per_process[pid] = per_process.get(pid, 0) + (int(used) if used else 0)
        for pid, used in per_process.items():
            parts[f"pid:{pid}"] = used
        if self._pids is not None and not self.foreign_pids:
            wanted = self._pids()
            if wanted and self._in_another_namespace(per_process, wanted):
                self.foreign_pids = True
            else:
                total = sum(used for pid, used in per_process.items() if pid in wanted)
                return MemoryReading(total, parts)
        total = sum(v for k, v in parts.items() if k.startswith("gpu:"))
        return MemoryReading(total, parts)

    def _in_another_namespace(self, per_process: dict[int, int], wanted: set[int]) -> bool:
        """NVML lists processes, none is the target's and none is a process of this namespace."""
        if not per_process or wanted & per_process.keys():
            return False
        return not any(self._pid_exists(pid) for pid in per_process)

    def close(self) -> None:
        """Shut NVML down if this source initialised it."""
        if self._module is not None:
            with contextlib.suppress(Exception):
                self._module.nvmlShutdown()
            self._module = None

    def describe(self) -> str:
        """Names the GPUs and whether the total is per process tree."""
        if self.foreign_pids:
            scope = (
                "whole GPU: NVML's process ids belong to another PID namespace (a container), "
                "so other processes on these GPUs count too"
            )
        else:
            scope = "processes of the target" if self._pids else "whole GPU"
        return f"VRAM ({scope}) on {', '.join(self.uuids)} (NVML)"


def process_tree_pids(pid: int) -> Callable[[], set[int]]:
    """A callable giving ``pid`` and its live descendants, for :class:`NVMLMemory`."""

    def pids() -> set[int]:
        try:
            root = psutil.Process(pid)
            return {pid, *(child.pid for child in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    return pids


@dataclass(frozen=True)
class PhaseStats:
    """Memory around one labelled stretch of work (a batch): before, after, peak."""

    label: str
    start: float
    end: float
    before_bytes: int
    after_bytes: int
    peak_bytes: int

    @property
    def delta_bytes(self) -> int:
        """After minus before."""
        return self.after_bytes - self.before_bytes

    def line(self) -> str:
        """One table row in MB."""
        return (
            f"{self.label:>12}  before {self.before_bytes / MB:9.1f}  after "
            f"{self.after_bytes / MB:9.1f}  peak {self.peak_bytes / MB:9.1f}  "
            f"delta {self.delta_bytes / MB:+8.1f} MB"
        )


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Slope of the least-squares line through (xs, ys); 0.0 with fewer than two distinct xs."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return 0.0
    slope, _intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope)


class MemoryTracker:
    """Samples a :class:`MemorySource` every ``interval_s`` on a daemon thread."""

    def __init__(
        self,
        source: MemorySource,
        *,
        interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        max_samples: int = 100_000,
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self._clock = clock
        self._max_samples = max_samples
        self._samples: list[MemorySample] = []
        self._phases: list[PhaseStats] = []
        self._lock = threading.Lock()
        self._thread = PeriodicThread(self._tick, interval_s, name="gpuinfer-memory")
        self.errors = 0
        self.last_error: str | None = None
        self.gone: str | None = None
        """Set when the tracked process exited (sampling stops)."""
        self.baseline_bytes: int | None = None
        """The settled level a leak check compares against (see :meth:`take_baseline`)."""
        self.baseline_at: float | None = None

    # -- sampling ------------------------------------------------------------------------------

    def sample_once(self) -> MemorySample | None:
        """Take one sample now; None when the read failed (counted in ``errors``)."""
        try:
            reading = self.source.read()
        except SourceGone as exc:
            self.gone = str(exc)
            return None
        except Exception as exc:  # NVML and psutil raise their own types
            with self._lock:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        sample = MemorySample(self._clock(), reading.total_bytes, reading.parts)
        with self._lock:
            if len(self._samples) < self._max_samples:
                self._samples.append(sample)
        return sample

    def _tick(self) -> bool:
        """One sample on the thread; False (stop) once the tracked process is gone."""
        self.sample_once()
        return self.gone is None

    def start(self) -> MemoryTracker:
        """Start sampling (the first sample is taken before this returns)."""
        if self._thread.running:
            raise RuntimeError("MemoryTracker already started")
        self.sample_once()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and take one last sample; close the source if it can be closed."""
        if self._thread.stop():
            self.sample_once()
        close = getattr(self.source, "close", None)
        if callable(close):
            close()

    @property
    def running(self) -> bool:
        """True while the sampling thread runs."""
        return self._thread.running

    def __enter__(self) -> MemoryTracker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- reading the timeline ------------------------------------------------------------------

    @property
    def samples(self) -> list[MemorySample]:
        """A copy of the samples so far, oldest first."""
        with self._lock:
            return list(self._samples)

    def _window(self, start: float, end: float) -> list[MemorySample]:
        """Samples with ``start <= t <= end``."""
        return [s for s in self.samples if start <= s.t <= end]

    def level(self, window_s: float | None = None, *, at: float | None = None) -> int:
        """Median total over ``window_s`` up to ``at`` (now); last samples if the process exited."""
        end = self._clock() if at is None else at
        span = self.interval_s * 2 if window_s is None else max(window_s, self.interval_s)
        values = [s.total_bytes for s in self._window(end - span, end)]
        samples = self.samples
        if not values and self.gone is not None and samples:
            last = samples[-1].t  # the process exited: judge on its last samples
            values = [s.total_bytes for s in samples if s.t >= last - span]
        if not values:
            fresh = self.sample_once()
            if fresh is None:
                raise RuntimeError(f"no memory sample: {self.gone or self.last_error}")
            return fresh.total_bytes
        return int(statistics.median(values))

    @property
    def before_bytes(self) -> int:
        """The first sample's total."""
        return self._first().total_bytes

    @property
    def after_bytes(self) -> int:
        """The latest sample's total."""
        samples = self.samples
        if not samples:
            raise RuntimeError("no memory samples taken")
        return samples[-1].total_bytes

    @property
    def peak_bytes(self) -> int:
        """The highest total seen."""
        samples = self.samples
        if not samples:
            raise RuntimeError("no memory samples taken")
        return max(s.total_bytes for s in samples)

    def _first(self) -> MemorySample:
        """The first sample (raises when there is none)."""
        samples = self.samples
        if not samples:
            raise RuntimeError("no memory samples taken")
        return samples[0]

    def slope_mb_per_s(self, start: float = float("-inf"), end: float = float("inf")) -> float:
        """Least-squares slope of the total over time, MB per second."""
        window = self._window(start, end)
        return least_squares_slope([s.t for s in window], [s.total_bytes / MB for s in window])

    def wait_settled(self, settle_s: float, *, timeout_s: float, tolerance_mb: float = 4.0) -> bool:
        """Wait until the total holds within ``tolerance_mb`` for ``settle_s``; False: timed out."""
        deadline = self._clock() + timeout_s
        while True:
            now = self._clock()
            window = self._window(now - settle_s, now)
            covered = window and window[-1].t - window[0].t >= settle_s * 0.8
            if covered:
                values = [s.total_bytes for s in window]
                if (max(values) - min(values)) / MB <= tolerance_mb:
                    return True
            if now >= deadline or self.gone is not None:
                return False
            if not self.running:
                self.sample_once()
            time.sleep(min(self.interval_s, max(0.01, deadline - now)))

    def take_baseline(self, settle_s: float, *, timeout_s: float) -> int:
        """Wait (bounded) for the total to settle, then remember its level as the baseline."""
        self.wait_settled(settle_s, timeout_s=timeout_s)
        self.baseline_bytes = self.level(max(settle_s / 2, self.interval_s * 2))
        self.baseline_at = self._clock()
        return self.baseline_bytes

    def wait_below(self, limit_bytes: int, *, window_s: float, timeout_s: float) -> bool:
        """Wait (bounded) until the level over ``window_s`` is at most ``limit_bytes``."""
        deadline = self._clock() + timeout_s
        while True:
            if self.level(window_s) <= limit_bytes:
                return True
            if self._clock() >= deadline or self.gone is not None:
                return False
            if not self.running:
                self.sample_once()
            time.sleep(self.interval_s)

    # -- phases --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def phase(self, label: str, *, settle_s: float = 0.0) -> Iterator[None]:
        """Record before/after/peak around a stretch of work; ``settle_s`` waits after it."""
        if not self.running:
            raise RuntimeError("start the tracker before recording a phase")
        before = self.level(self.interval_s * 2)
        start = self._clock()
        yield
        if settle_s > 0:
            time.sleep(settle_s)
        self.sample_once()
        end = self._clock()
        window = self._window(start, end)
        peak = max([before, *(s.total_bytes for s in window)])
        after = self.level(max(settle_s / 2, self.interval_s * 2), at=end)
        stats = PhaseStats(label, start, end, before, after, peak)
        with self._lock:
            self._phases.append(stats)

    @property
    def phases(self) -> list[PhaseStats]:
        """Every recorded phase, in order."""
        with self._lock:
            return list(self._phases)

    # -- text ----------------------------------------------------------------------------------

    def summary(self) -> str:
        """One line: source, before, after, peak, slope, sample count."""
        samples = self.samples
        if not samples:
            return f"{self.source.describe()}: no samples ({self.gone or self.last_error})"
        return (
            f"{self.source.describe()}: before {samples[0].total_bytes / MB:.1f} MB, "
            f"after {samples[-1].total_bytes / MB:.1f} MB, "
            f"peak {max(s.total_bytes for s in samples) / MB:.1f} MB, "
            f"slope {self.slope_mb_per_s():+.2f} MB/s over {len(samples)} samples "
            f"({samples[-1].t - samples[0].t:.1f} s)"
        )

    def format_timeline(self, rows: int = 24) -> str:
        """The timeline as at most ``rows`` lines (evenly spaced samples): seconds and MB."""
        samples = self.samples
        if not samples:
            return "(no samples)"
        step = max(1, len(samples) // rows)
        chosen = samples[::step]
        if chosen[-1] is not samples[-1]:
            chosen.append(samples[-1])
        t0 = samples[0].t
        low = min(s.total_bytes for s in samples)
        high = max(s.total_bytes for s in samples)
        span = max(high - low, 1)
        lines = []
        for s in chosen:
            bar = "#" * (1 + int(30 * (s.total_bytes - low) / span))
            lines.append(f"{s.t - t0:7.1f} s {s.total_bytes / MB:10.1f} MB {bar}")
        return "\n".join(lines)
