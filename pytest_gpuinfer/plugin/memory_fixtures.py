"""The ``vram_tracker`` fixture and the ``leak`` marker's verdict.

``vram_tracker`` starts memory trackers: on the target (``vram_tracker.start(inference_server)``),
on any process (``vram_tracker.start(pid)``), or on a source of your own. With GPUs in use the
source is NVML by UUID (the process tree's device memory for a process we know, the whole GPU
for an attached endpoint); without a GPU it is the RSS of the process tree.

``@pytest.mark.leak(max_growth_mb=..., settle_s=..., release_timeout_s=...)`` fails a test
whose tracked memory, after settling, grew by more than the limit. A test that uses
``inference_server`` is tracked automatically; otherwise the test starts a tracker through
``vram_tracker``. Memory released late (VRAM freed by the driver after a process exits) is
waited for, up to ``release_timeout_s``, before the verdict. A test that judges its memory
itself (``vram_tracker.judged(tracker, check)``, with limits that know its work) is judged by
that check alone.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer.plugin import report_plugin
from pytest_gpuinfer.plugin.state import RUN_STATE

if TYPE_CHECKING:
    from pytest_gpuinfer.hardware.gpu import GPUInfo
    from pytest_gpuinfer.memory.boundary import BoundaryResult
    from pytest_gpuinfer.memory.leak import LeakCheck
    from pytest_gpuinfer.memory.tracker import MemorySource, MemoryTracker
    from pytest_gpuinfer.metrics.verdicts import Verdict
    from pytest_gpuinfer.targets import InferenceServer

if TYPE_CHECKING:
    from pytest_gpuinfer.metrics.verdicts import Verdict

DEFAULT_INTERVAL_S = 0.2
DEFAULT_SETTLE_S = 1.0


def source_for(target: InferenceServer | int, gpus: tuple[GPUInfo, ...]) -> MemorySource:
    """The memory source for a server or pid: NVML on ``gpus`` when there are any, else RSS."""
    from pytest_gpuinfer.memory.tracker import NVMLMemory, ProcessTreeRSS, process_tree_pids
    from pytest_gpuinfer.targets import InferenceServer

    if isinstance(target, InferenceServer):
        uuids = target.gpu_uuids or tuple(g.uuid for g in gpus)
        pid = target.process.pid if target.process is not None else None
        if uuids:
            return NVMLMemory(uuids, pids=process_tree_pids(pid) if pid is not None else None)
        if pid is None:
            raise pytest.UsageError(
                f"cannot track the memory of {target.describe()}: it is an attached endpoint "
                "(no process here to read) and no GPU is in use (no NVML to read)"
            )
        return ProcessTreeRSS(pid)
    if gpus:
        return NVMLMemory(tuple(g.uuid for g in gpus), pids=process_tree_pids(target))
    return ProcessTreeRSS(target)


@dataclass
class VramTracker:
    """What the ``vram_tracker`` fixture returns: starts and remembers memory trackers."""

    gpus: tuple[GPUInfo, ...]
    interval_s: float = DEFAULT_INTERVAL_S
    trackers: list[MemoryTracker] = field(default_factory=list)
    checks: dict[int, LeakCheck] = field(default_factory=dict)
    """Leak checks a test judged on its trackers (by tracker id), for the run's report."""

    def start(
        self,
        target: InferenceServer | int | MemorySource,
        *,
        interval_s: float | None = None,
        settle_s: float = DEFAULT_SETTLE_S,
        settle_timeout_s: float = 15.0,
    ) -> MemoryTracker:
        """Start sampling ``target`` and take a settled baseline (bounded by settle_timeout_s)."""
        from pytest_gpuinfer.memory.tracker import MemoryTracker
        from pytest_gpuinfer.targets import InferenceServer

        source = (
            source_for(target, self.gpus) if isinstance(target, InferenceServer | int) else target
        )
        tracker = MemoryTracker(source, interval_s=interval_s or self.interval_s).start()
        self.trackers.append(tracker)
        tracker.take_baseline(settle_s, timeout_s=settle_timeout_s)
        return tracker

    def judged(self, tracker: MemoryTracker, check: LeakCheck) -> None:
        """Keep the leak check a test made on ``tracker``: it goes into the report with it."""
        self.checks[id(tracker)] = check

    @property
    def tracker(self) -> MemoryTracker | None:
        """The most recently started tracker, or None."""
        return self.trackers[-1] if self.trackers else None

    def stop_all(self) -> None:
        """Stop every tracker this fixture started."""
        for tracker in self.trackers:
            tracker.stop()


@pytest.fixture
def vram_tracker(request: pytest.FixtureRequest) -> Iterator[VramTracker]:
    """Memory trackers for this test (NVML by UUID on GPUs, process-tree RSS without); each
    tracker's timeline (with its leak verdict) goes into the run's report."""
    from pytest_gpuinfer.report.payloads import memory_payload

    state = request.config.stash[RUN_STATE]
    watch = VramTracker(gpus=state.gpus_in_use)
    yield watch
    watch.stop_all()
    marker_checks = request.node.stash.get(LEAK_VERDICTS, {})
    for tracker in watch.trackers:
        verdict = watch.checks.get(id(tracker)) or marker_checks.get(id(tracker))
        report_plugin.record(request.node, "memory", memory_payload(tracker, verdict))


@dataclass(frozen=True)
class LeakLimits:
    """The ``leak`` marker's arguments, defaults filled in."""

    max_growth_mb: float | None
    settle_s: float
    release_timeout_s: float

    @classmethod
    def from_marker(cls, marker: pytest.Mark) -> LeakLimits:
        """Read and check the marker's keyword arguments."""
        unknown = set(marker.kwargs) - {"max_growth_mb", "settle_s", "release_timeout_s"}
        if marker.args or unknown:
            raise pytest.UsageError(
                "leak marker takes keywords max_growth_mb, settle_s, release_timeout_s; got "
                f"args {marker.args!r} and {sorted(unknown)}"
            )
        settle = float(marker.kwargs.get("settle_s") or DEFAULT_SETTLE_S)
        growth = marker.kwargs.get("max_growth_mb")
        release = marker.kwargs.get("release_timeout_s")
        limits = cls(
            max_growth_mb=float(growth) if growth is not None else None,
            settle_s=settle,
            release_timeout_s=float(release) if release is not None else max(10.0, 5 * settle),
        )
        if (limits.max_growth_mb is not None and limits.max_growth_mb < 0) or settle < 0:
            raise pytest.UsageError(f"leak marker limits must be >= 0: {marker.kwargs!r}")
        return limits

    def growth_limit_mb(self, source: MemorySource) -> float:
        """The limit for this source: the marker's, else the GPU or CPU default."""
        from pytest_gpuinfer.memory.leak import DEFAULT_CPU_MAX_GROWTH_MB, DEFAULT_GPU_MAX_GROWTH_MB

        if self.max_growth_mb is not None:
            return self.max_growth_mb
        return DEFAULT_GPU_MAX_GROWTH_MB if source.kind == "vram" else DEFAULT_CPU_MAX_GROWTH_MB

    def growth_limit_source(self) -> str:
        """Where :meth:`growth_limit_mb` comes from."""
        if self.max_growth_mb is not None:
            return "@pytest.mark.leak(max_growth_mb=...)"
        return "the leak marker's default for this memory (memory/leak.py: the one-off allowance)"


LEAK_WATCH = pytest.StashKey[tuple[VramTracker, LeakLimits]]()
LEAK_VERDICTS = pytest.StashKey[dict[int, "LeakCheck"]]()
"""The leak marker's checks, by tracker id."""


@pytest.fixture(autouse=True)
def _gpuinfer_leak_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """For ``leak``-marked tests: pull in vram_tracker and track the server if the test uses one."""
    marker = request.node.get_closest_marker("leak")
    if marker is None:
        yield
        return
    limits = LeakLimits.from_marker(marker)
    watch: VramTracker = request.getfixturevalue("vram_tracker")
    if "inference_server" in request.fixturenames:
        server: InferenceServer = request.getfixturevalue("inference_server")
        watch.start(server, settle_s=limits.settle_s)
    request.node.stash[LEAK_WATCH] = (watch, limits)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After a passing ``leak``-marked test: judge each tracker's growth; fail with the timeline."""
    result = yield
    entry = item.stash.get(LEAK_WATCH, None)
    if entry is None:
        return result
    from pytest_gpuinfer.memory.leak import judge_growth

    watch, limits = entry
    if not watch.trackers:
        pytest.fail(
            "the leak marker has nothing to track: use the inference_server fixture or start a "
            "tracker with vram_tracker.start(pid)",
            pytrace=False,
        )
    if watch.checks:
        # the test judged its memory itself (vram_tracker.judged), against limits that know its
        # work; the marker's flat limit would be a second, stricter verdict on the same memory
        return result
    verdicts: dict[int, LeakCheck] = {}
    for tracker in watch.trackers:
        baseline = tracker.baseline_bytes
        if baseline is None:
            baseline = tracker.before_bytes
        verdict = judge_growth(
            tracker,
            baseline_bytes=baseline,
            max_growth_mb=limits.growth_limit_mb(tracker.source),
            settle_s=limits.settle_s,
            release_timeout_s=limits.release_timeout_s,
            limit_source=limits.growth_limit_source(),
        )
        verdicts[id(tracker)] = verdict
        item.user_properties.append(("memory_growth_mb", round(verdict.growth_bytes / 1e6, 1)))
    item.stash[LEAK_VERDICTS] = verdicts
    failed = [v for v in verdicts.values() if not v.passed]
    if failed:
        pytest.fail("\n\n".join(v.message() for v in failed), pytrace=False)
    return result


MEMORY_REPORTS = pytest.StashKey[list[tuple[str, str]]]()


@pytest.fixture
def memory_report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Add a block of text (a boundary table, a per-batch table) to the run's memory summary;
    ``memory_report(text, result, verdicts)`` with a BoundaryResult also puts its table and the
    verdicts judged on it (its failure class) in the report."""

    def add(
        text: str, result: BoundaryResult | None = None, verdicts: Sequence[Verdict] = ()
    ) -> None:
        from pytest_gpuinfer.report.payloads import boundary_payload, note_payload

        reports = request.config.stash.setdefault(MEMORY_REPORTS, [])
        reports.append((request.node.nodeid, text))
        request.node.user_properties.append(("gpuinfer_memory", text))
        if result is not None:
            report_plugin.record(request.node, "boundary", boundary_payload(result, verdicts))
        else:
            report_plugin.record(request.node, "note", note_payload("memory", text))

    return add


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the memory tables tests recorded (boundary searches, batch leak checks)."""
    reports = config.stash.get(MEMORY_REPORTS, [])
    if not reports:
        return
    terminalreporter.section("gpuinfer memory")
    for nodeid, text in reports:
        terminalreporter.write_line(f"{nodeid}:")
        for line in text.splitlines():
            terminalreporter.write_line(f"  {line}")
