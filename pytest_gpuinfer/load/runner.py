"""The load engine: drive a schedule of requests through the client and judge its own health.

``LoadRunner.run`` sends requests by a closed-loop or open-loop schedule (see
:mod:`pytest_gpuinfer.load.schedule`), collects one :class:`RequestRecord` per request and
summarises them with :func:`pytest_gpuinfer.metrics.stats.summarize`.

Open-loop arrivals are dispatched at their absolute scheduled offsets; on Linux a ``timerfd``
wakes the loop with microsecond precision (asyncio's own timers round up to whole milliseconds),
and latencies are measured from the scheduled time, so the engine's own lateness shows up as
client queue time instead of vanishing.

SELF-CHECK. A load generator that saturates its core reports its own delay as the server's. Every
run therefore measures, per client process: CPU time over wall time, event-loop lag (a probe task
that wakes every 10 ms and measures how late it ran), dispatch slip (how late each request was
started relative to its due time), unread bytes waiting in the kernel on busy connections, and
(Linux) how long the client waited for a CPU while other processes ran: on a busy machine the
client's timestamps are late even when its own CPU use is low.
When any crosses its limit (:class:`SelfCheckLimits`) the result is marked ``client_bound`` with
the figures and reasons, so the numbers are not mistaken for the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from pytest_gpuinfer.clock import DeadlineTimers, LoopKind, new_event_loop
from pytest_gpuinfer.load.client import Endpoint, InferenceClient, RequestSpec, Timeouts, UsageMode
from pytest_gpuinfer.load.gauges import DEFAULT_INTERVAL_S, GaugeRecorder, GaugeSeries
from pytest_gpuinfer.load.prompts import PromptSet, length_line, lengths_dict
from pytest_gpuinfer.load.schedule import ArrivalKind, ClosedLoop, OpenLoop, Schedule, open_loop
from pytest_gpuinfer.metrics import slo, stats, units
from pytest_gpuinfer.metrics.records import RequestRecord

ProgressCallback = Callable[["Progress"], None]

_PROBE_INTERVAL_S = 0.010
_BACKLOG_SAMPLE = 8
_WORKER_START_MARGIN_S = 0.25


@dataclass(frozen=True, slots=True)
class SelfCheckLimits:
    """Thresholds past which a run is marked client-bound."""

    cpu_fraction: float = 0.85
    """Client process CPU seconds per wall second (1.0 is a full core)."""
    loop_lag_p99_s: float = 0.005
    """99th percentile of how late the event loop ran a due probe."""
    dispatch_slip_p99_s: float = 0.005
    """99th percentile of how late requests were started relative to their due time."""
    read_backlog_fraction: float = 0.5
    """Share of probe samples that found response bytes waiting unread in the kernel."""
    cpu_wait_fraction: float = 0.05
    """Time the client was ready to run but waited for a CPU, per wall second (Linux)."""
    cpu_wait_per_wakeup_s: float = 0.0001
    """...and the mean wait per wake-up must pass this too: a virtual CPU waking from idle costs
    some tens of microseconds per wake-up even on an idle machine, which is not contention."""
    min_window_s: float = 1.0
    """CPU shares (use, wait) are judged only over runs at least this long: over a fraction of
    a second, start-up work and the clock's granularity make them meaningless (a 0.2 s run
    once read 413% of a core)."""


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress snapshot of a running load run."""

    done: int
    failed: int
    elapsed_s: float
    planned: int | None


@dataclass(slots=True)
class ProbeFigures:
    """Raw self-check measurements of one client process."""

    worker: int
    cpu_s: float = 0.0
    wall_s: float = 0.0
    loop_lag_s: list[float] = field(default_factory=list)
    dispatch_slip_s: list[float] = field(default_factory=list)
    backlog_samples: int = 0
    backlog_nonzero: int = 0
    backlog_max_bytes: int = 0
    cpu_wait_s: float | None = None
    """Run-queue wait from /proc/self/schedstat: ready to run, but another process had the CPU."""
    wakeups: int = 0
    """Times the client was scheduled onto a CPU during the run (schedstat)."""
    precise_timer: bool = False
    event_loop: str = ""


@dataclass(frozen=True)
class SelfCheck:
    """Whether the load engine itself was the bottleneck, with the figures that say so."""

    client_bound: bool
    reasons: tuple[str, ...]
    workers: int
    cpu_fraction: float
    """Highest CPU fraction of any client process."""
    cpu_s: float
    wall_s: float
    loop_lag: stats.Distribution
    dispatch_slip: stats.Distribution
    read_backlog_fraction: float
    read_backlog_max_bytes: int
    cpu_wait_s: float | None
    """Total time the client processes waited for a CPU (None where it cannot be read)."""
    precise_timer: bool
    event_loop: str
    limits: SelfCheckLimits

    @classmethod
    def from_figures(cls, figures: Sequence[ProbeFigures], limits: SelfCheckLimits) -> SelfCheck:
        """Judge the figures of every client process against ``limits``."""
        reasons: list[str] = []
        cpu_fraction = 0.0
        for fig in figures:
            fraction = fig.cpu_s / fig.wall_s if fig.wall_s > 0 else 0.0
            cpu_fraction = max(cpu_fraction, fraction)
            if fraction >= limits.cpu_fraction and fig.wall_s >= limits.min_window_s:
                reasons.append(
                    f"worker {fig.worker} used {fraction:.0%} of a CPU core "
                    f"(limit {limits.cpu_fraction:.0%})"
                )
        lag = stats.distribution([v for fig in figures for v in fig.loop_lag_s])
        slip = stats.distribution([v for fig in figures for v in fig.dispatch_slip_s])
        if lag.count and lag.p99 >= limits.loop_lag_p99_s:
            reasons.append(
                f"event-loop lag p99 {lag.p99 * 1e3:.2f} ms "
                f"(limit {limits.loop_lag_p99_s * 1e3:.2f} ms)"
            )
        if slip.count and slip.p99 >= limits.dispatch_slip_p99_s:
            reasons.append(
                f"requests started late: dispatch slip p99 {slip.p99 * 1e3:.2f} ms "
                f"(limit {limits.dispatch_slip_p99_s * 1e3:.2f} ms)"
            )
        samples = sum(fig.backlog_samples for fig in figures)
        nonzero = sum(fig.backlog_nonzero for fig in figures)
        backlog_fraction = nonzero / samples if samples else 0.0
        waits = [fig.cpu_wait_s for fig in figures if fig.cpu_wait_s is not None]
        cpu_wait = sum(waits) if waits else None
        for fig in figures:
            if fig.cpu_wait_s is None or fig.wall_s < limits.min_window_s:
                continue
            waited = fig.cpu_wait_s / fig.wall_s
            per_wakeup = fig.cpu_wait_s / max(1, fig.wakeups)
            if waited >= limits.cpu_wait_fraction and per_wakeup >= limits.cpu_wait_per_wakeup_s:
                reasons.append(
                    f"machine busy: worker {fig.worker} waited {fig.cpu_wait_s * 1e3:.0f} ms "
                    f"for a CPU ({waited:.0%} of the run, {per_wakeup * 1e6:.0f} us per wake-up; "
                    f"limits {limits.cpu_wait_fraction:.0%} and "
                    f"{limits.cpu_wait_per_wakeup_s * 1e6:.0f} us)"
                )
        if samples >= 10 and backlog_fraction >= limits.read_backlog_fraction:
            reasons.append(
                f"reads falling behind: unread response bytes in {backlog_fraction:.0%} "
                f"of samples (limit {limits.read_backlog_fraction:.0%})"
            )
        return cls(
            client_bound=bool(reasons),
            reasons=tuple(reasons),
            workers=len(figures),
            cpu_fraction=cpu_fraction,
            cpu_s=sum(fig.cpu_s for fig in figures),
            wall_s=max((fig.wall_s for fig in figures), default=0.0),
            loop_lag=lag,
            dispatch_slip=slip,
            read_backlog_fraction=backlog_fraction,
            read_backlog_max_bytes=max((fig.backlog_max_bytes for fig in figures), default=0),
            cpu_wait_s=cpu_wait,
            precise_timer=all(fig.precise_timer for fig in figures),
            event_loop=figures[0].event_loop if figures else "",
            limits=limits,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the self-check."""
        return {
            "client_bound": self.client_bound,
            "reasons": list(self.reasons),
            "workers": self.workers,
            "cpu_fraction": self.cpu_fraction,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "loop_lag": self.loop_lag.to_dict(),
            "dispatch_slip": self.dispatch_slip.to_dict(),
            "read_backlog_fraction": self.read_backlog_fraction,
            "read_backlog_max_bytes": self.read_backlog_max_bytes,
            "cpu_wait_s": self.cpu_wait_s,
            "precise_timer": self.precise_timer,
            "event_loop": self.event_loop,
            "limits": asdict(self.limits),
        }

    def text(self) -> str:
        """Human-readable self-check lines."""
        verdict = (
            "CLIENT-BOUND: these figures include the load engine's own delay"
            if (self.client_bound)
            else "ok: the load engine kept up"
        )
        lines = [
            f"self-check: {verdict}",
            f"  client cpu {self.cpu_fraction:.0%} of a core ({self.workers} process(es), "
            f"{self.event_loop}), loop lag p50/p99/max "
            f"{units.ms(self.loop_lag.p50)}/{units.ms(self.loop_lag.p99)}/"
            f"{units.ms(self.loop_lag.max)} ms, "
            f"dispatch slip p50/p99/max {units.ms(self.dispatch_slip.p50)}/"
            f"{units.ms(self.dispatch_slip.p99)}/{units.ms(self.dispatch_slip.max)} ms, "
            f"unread-bytes samples {self.read_backlog_fraction:.0%}"
            + (
                f", waited for a CPU {self.cpu_wait_s * 1e3:.0f} ms"
                if self.cpu_wait_s is not None
                else ""
            ),
        ]
        lines.extend(f"  - {reason}" for reason in self.reasons)
        return "\n".join(lines)


@dataclass
class LoadResult:
    """The records of a load run, their summary and the engine's self-check."""

    records: list[RequestRecord]
    summary: stats.Summary
    self_check: SelfCheck
    config: dict[str, Any]
    gauges: GaugeSeries | None = None
    """Engine gauges sampled during the run (or the client's in-flight count; see ``source``)."""
    verdicts: list[slo.SLOVerdict] | None = None
    """The run's verdicts once :meth:`judge` has been called."""

    def judge(self, slos: Sequence[slo.SLO], *, allow_errors: bool = False) -> list[slo.SLOVerdict]:
        """Judge the run by its SLOs and (unless allowed) its failed requests; keep the verdicts."""
        self.verdicts = slo.judge_run(slos, self.summary, allow_errors=allow_errors)
        return self.verdicts

    @property
    def client_bound(self) -> bool:
        """True when the load engine itself limited the run (see ``self_check``)."""
        return self.self_check.client_bound

    @property
    def ttft(self) -> stats.Distribution:
        """Time to first token, from each request's scheduled time."""
        return self.summary.ttft

    @property
    def itl(self) -> stats.Distribution:
        """Inter-token latency normalised per token."""
        return self.summary.itl_token

    @property
    def itl_chunk(self) -> stats.Distribution:
        """Gaps between chunks, one sample per gap."""
        return self.summary.itl_chunk

    @property
    def tpot(self) -> stats.Distribution:
        """Time per output token after the first."""
        return self.summary.tpot

    @property
    def e2e(self) -> stats.Distribution:
        """End-to-end latency from the scheduled time to the last byte."""
        return self.summary.e2e

    @property
    def queue(self) -> stats.Distribution:
        """Client-side queueing: scheduled time to send."""
        return self.summary.queue

    def summary_text(self) -> str:
        """The summary table, achieved prompt/output lengths, then the self-check."""
        lengths = length_line(self.records, self.config.get("max_tokens"))
        return f"{self.summary.table()}\n{lengths}\n{self.self_check.text()}"

    def to_dict(self, *, include_records: bool = True) -> dict[str, Any]:
        """Plain-JSON form: config, summary, self-check and (optionally) every record."""
        out: dict[str, Any] = {
            "config": self.config,
            "summary": self.summary.to_dict(),
            "self_check": self.self_check.to_dict(),
            "lengths": lengths_dict(self.records),
        }
        if self.gauges is not None:
            out["gauges"] = self.gauges.to_dict()
        if self.verdicts is not None:
            out["verdicts"] = [slo.verdict_dict(v) for v in self.verdicts]
        if include_records:
            out["records"] = [record.to_dict() for record in self.records]
        return out

    def to_json(self, *, include_records: bool = True, indent: int | None = None) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(include_records=include_records), indent=indent)


@dataclass(frozen=True)
class _Plan:
    """What one client process runs: its share of the schedule and the request contents."""

    worker: int
    closed_concurrency: int | None
    slot_offsets_s: list[float]
    arrivals: list[tuple[int, float]]
    request_cap: int | None
    time_cap_s: float
    concurrency_cap: int | None
    prompts: list[str]
    max_tokens: int
    stream: bool
    extra_body: dict[str, Any] | None
    index_offset: int
    index_stride: int


@dataclass(frozen=True)
class _ClientSettings:
    """Everything needed to build the client inside a worker process (picklable)."""

    base_url: str
    model: str
    api_key: str | None
    endpoint: Endpoint
    timeouts: Timeouts
    usage_mode: UsageMode
    loop: LoopKind

    def __repr__(self) -> str:
        return f"_ClientSettings({self.base_url!r}, model={self.model!r})"


class _Counters:
    """Done/failed counts of one process, readable by a progress reporter."""

    __slots__ = ("done", "failed")

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0


async def _start_soon() -> float:
    """Start time for a single-process run: right away."""
    return time.perf_counter() + 0.002


async def _run_plan(
    settings: _ClientSettings,
    plan: _Plan,
    wait_for_start: Callable[[], Awaitable[float]],
    counters: _Counters,
    tokenizer: Callable[[str], int] | None,
) -> tuple[list[RequestRecord], ProbeFigures]:
    """Open the connections, learn the start time, then run one process's share of the run."""
    loop = asyncio.get_running_loop()
    pool_size = plan.closed_concurrency or plan.concurrency_cap
    client = InferenceClient(
        settings.base_url,
        settings.model,
        api_key=settings.api_key,
        endpoint=settings.endpoint,
        timeouts=settings.timeouts,
        max_connections=pool_size,
        usage_mode=settings.usage_mode,
        tokenizer=tokenizer,
    )
    specs = [
        RequestSpec(p, plan.max_tokens, stream=plan.stream, extra_body=plan.extra_body)
        for p in plan.prompts
    ]
    figures = ProbeFigures(worker=plan.worker, event_loop=type(loop).__module__.split(".")[0])
    records: list[RequestRecord] = []
    stop = asyncio.Event()
    probe = loop.create_task(_probe(client, figures, stop))
    sleeper = DeadlineTimers(loop)
    figures.precise_timer = sleeper.precise
    try:
        if pool_size:
            await client.open_connections(pool_size)
        start_at = await wait_for_start()
        await sleeper.sleep_until(start_at)
        cpu_start = time.process_time()
        wait_start = _cpu_wait()
        wall_start = time.perf_counter()
        if plan.closed_concurrency is not None:
            await _run_closed(client, specs, plan, start_at, sleeper, records, counters, figures)
        else:
            await _run_open(client, specs, plan, start_at, sleeper, records, counters, figures)
        figures.cpu_s = time.process_time() - cpu_start
        wait_end = _cpu_wait()
        if wait_start is not None and wait_end is not None:
            figures.cpu_wait_s = wait_end[0] - wait_start[0]
            figures.wakeups = wait_end[1] - wait_start[1]
        figures.wall_s = time.perf_counter() - wall_start
    finally:
        stop.set()
        await probe
        sleeper.close()
        await client.aclose()
    return records, figures


def _cpu_wait() -> tuple[float, int] | None:
    """Seconds this thread has waited for a CPU while ready to run, and its number of turns on
    a CPU, from Linux schedstat (None elsewhere)."""
    for path in ("/proc/thread-self/schedstat", "/proc/self/schedstat"):
        try:
            with open(path, encoding="ascii") as stats_file:
                fields = stats_file.read().split()
            return int(fields[1]) / 1e9, int(fields[2])
        except (OSError, IndexError, ValueError):
            continue
    return None


def _count(record: RequestRecord, counters: _Counters) -> None:
    """Add a finished request to the progress counters."""
    counters.done += 1
    if not record.ok:
        counters.failed += 1


async def _run_closed(
    client: InferenceClient,
    specs: list[RequestSpec],
    plan: _Plan,
    start: float,
    sleeper: DeadlineTimers,
    records: list[RequestRecord],
    counters: _Counters,
    figures: ProbeFigures,
) -> None:
    """Closed loop: each slot starts at its ramp offset, then sends when its last one ends."""
    assert plan.closed_concurrency is not None
    numbers = itertools.count()
    cap = math.inf if plan.request_cap is None else plan.request_cap
    deadline = start + plan.time_cap_s
    worker = plan.worker
    slips = figures.dispatch_slip_s

    async def slot(offset: float) -> None:
        scheduled = start + offset
        await sleeper.sleep_until(scheduled)
        while True:
            number = next(numbers)
            if number >= cap or scheduled >= deadline:
                return
            index = plan.index_offset + number * plan.index_stride
            record = RequestRecord(index=index, scheduled=scheduled, worker=worker)
            records.append(record)
            await client.send(specs[index % len(specs)], record)
            if record.sent is not None:
                slips.append(record.sent - scheduled)
            _count(record, counters)
            scheduled = record.end if record.end is not None else time.perf_counter()

    await asyncio.gather(*(slot(offset) for offset in plan.slot_offsets_s))


async def _run_open(
    client: InferenceClient,
    specs: list[RequestSpec],
    plan: _Plan,
    start: float,
    sleeper: DeadlineTimers,
    records: list[RequestRecord],
    counters: _Counters,
    figures: ProbeFigures,
) -> None:
    """Open loop: start each request at its scheduled time, whatever is still in flight."""
    loop = asyncio.get_running_loop()
    worker = plan.worker
    slips = figures.dispatch_slip_s
    gate = asyncio.Semaphore(plan.concurrency_cap) if plan.concurrency_cap else None
    pending: set[asyncio.Task[None]] = set()

    async def one(spec: RequestSpec, record: RequestRecord) -> None:
        if gate is not None:
            async with gate:
                await client.send(spec, record)
        else:
            await client.send(spec, record)
        _count(record, counters)

    for index, offset in plan.arrivals:
        due = start + offset
        await sleeper.sleep_until(due)
        slips.append(max(0.0, time.perf_counter() - due))
        record = RequestRecord(index=index, scheduled=due, worker=worker)
        records.append(record)
        task = loop.create_task(one(specs[index % len(specs)], record))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


async def _probe(client: InferenceClient, figures: ProbeFigures, stop: asyncio.Event) -> None:
    """Measure event-loop lag and unread socket bytes every few milliseconds until ``stop``."""
    lags = figures.loop_lag_s
    while not stop.is_set():
        due = time.perf_counter() + _PROBE_INTERVAL_S
        await asyncio.sleep(_PROBE_INTERVAL_S)
        lags.append(max(0.0, time.perf_counter() - due))
        pending = client.unread_bytes(_BACKLOG_SAMPLE)
        if pending:
            figures.backlog_samples += 1
            largest = max(pending)
            if largest > 0:
                figures.backlog_nonzero += 1
                figures.backlog_max_bytes = max(figures.backlog_max_bytes, largest)


def _run_coroutine(kind: LoopKind, coroutine: Awaitable[Any]) -> Any:
    """Run a coroutine to completion on a new loop (in a thread if this one already has a loop)."""

    async def main() -> Any:
        return await coroutine

    def run() -> Any:
        loop = new_event_loop(kind)
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    outcome: dict[str, Any] = {}

    def in_thread() -> None:
        try:
            outcome["value"] = run()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=in_thread, name="gpuinfer-load")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _worker_main(
    connection: Connection, settings: _ClientSettings, plan: _Plan, shared: Any
) -> None:
    """Entry point of a client worker process: run the plan and send back the records."""
    counters = _Counters()

    async def wait_for_start() -> float:
        connection.send(("ready", None))
        start_at: float = await asyncio.get_running_loop().run_in_executor(None, connection.recv)
        return start_at

    async def main() -> tuple[list[RequestRecord], ProbeFigures]:
        reporter = asyncio.get_running_loop().create_task(_share_counts(counters, shared, plan))
        try:
            return await _run_plan(settings, plan, wait_for_start, counters, None)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    try:
        records, figures = _run_coroutine(settings.loop, main())
        shared[2 * plan.worker] = counters.done
        shared[2 * plan.worker + 1] = counters.failed
        connection.send(("done", ([r.to_dict() for r in records], figures)))
    except BaseException as exc:
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()


async def _share_counts(counters: _Counters, shared: Any, plan: _Plan) -> None:
    """Copy this worker's progress counts into shared memory twice a second."""
    while True:
        shared[2 * plan.worker] = counters.done
        shared[2 * plan.worker + 1] = counters.failed
        await asyncio.sleep(0.5)


class LoadRunner:
    """Runs load against an OpenAI-compatible server and returns timed records and verdicts."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        endpoint: Endpoint = "chat",
        timeouts: Timeouts | None = None,
        usage_mode: UsageMode = "continuous",
        tokenizer: Callable[[str], int] | None = None,
        loop: LoopKind = "auto",
        limits: SelfCheckLimits | None = None,
        preflight: bool = True,
        gauge_interval_s: float | None = DEFAULT_INTERVAL_S,
    ) -> None:
        InferenceClient(base_url, model, endpoint=endpoint)  # validate the URL and endpoint now
        self._settings = _ClientSettings(
            base_url=base_url,
            model=model,
            api_key=api_key,
            endpoint=endpoint,
            timeouts=timeouts or Timeouts(),
            usage_mode=usage_mode,
            loop=loop,
        )
        self.tokenizer = tokenizer
        self.limits = limits or SelfCheckLimits()
        self.preflight = preflight
        self.gauge_interval_s = gauge_interval_s
        """How often the target's /metrics is sampled during a run (None: never)."""

    def __repr__(self) -> str:
        return f"LoadRunner({self._settings.base_url!r}, model={self._settings.model!r})"

    @property
    def usage_mode(self) -> UsageMode:
        """How token usage is asked for (may weaken after the preflight request)."""
        return self._settings.usage_mode

    def run(
        self,
        *,
        concurrency: int | None = None,
        rate: float | None = None,
        schedule: Schedule | None = None,
        requests: int | None = None,
        duration_s: float | None = None,
        prompt: str | Sequence[str] = "Tell me a story about a lighthouse keeper.",
        max_tokens: int = 64,
        stream: bool = True,
        warmup_s: float = 0.0,
        processes: int = 1,
        extra_body: dict[str, Any] | None = None,
        arrival: ArrivalKind = "poisson",
        burstiness: float = 1.0,
        seed: int = 0,
        slos: Sequence[Any] = (),
        progress: ProgressCallback | bool | None = None,
        progress_interval_s: float = 5.0,
        ramp_s: float = 0.0,
    ) -> LoadResult:
        """Run load and wait for it (see :meth:`arun` for the arguments)."""
        result: LoadResult = _run_coroutine(
            self._settings.loop,
            self.arun(
                concurrency=concurrency,
                rate=rate,
                schedule=schedule,
                requests=requests,
                duration_s=duration_s,
                prompt=prompt,
                max_tokens=max_tokens,
                stream=stream,
                warmup_s=warmup_s,
                processes=processes,
                extra_body=extra_body,
                arrival=arrival,
                burstiness=burstiness,
                seed=seed,
                slos=slos,
                progress=progress,
                progress_interval_s=progress_interval_s,
                ramp_s=ramp_s,
            ),
        )
        return result

    async def arun(
        self,
        *,
        concurrency: int | None = None,
        rate: float | None = None,
        schedule: Schedule | None = None,
        requests: int | None = None,
        duration_s: float | None = None,
        prompt: str | Sequence[str] = "Tell me a story about a lighthouse keeper.",
        max_tokens: int = 64,
        stream: bool = True,
        warmup_s: float = 0.0,
        processes: int = 1,
        extra_body: dict[str, Any] | None = None,
        arrival: ArrivalKind = "poisson",
        burstiness: float = 1.0,
        seed: int = 0,
        slos: Sequence[Any] = (),
        progress: ProgressCallback | bool | None = None,
        progress_interval_s: float = 5.0,
        ramp_s: float = 0.0,
    ) -> LoadResult:
        """Run load on the running event loop.

        Pick the load with ``concurrency`` (closed loop), ``rate`` (open loop with ``arrival``,
        ``burstiness`` and ``seed``; with ``concurrency`` too, at most that many in flight), or an
        explicit ``schedule``. ``requests`` and ``duration_s`` cap the run (at least one is needed
        unless the schedule has an end). ``prompt`` may be a list, used round-robin. Requests
        scheduled in the first ``warmup_s`` are left out of the summary. ``processes`` > 1 splits
        the schedule across that many client processes. ``slos`` (``SLO`` objects or texts) feed
        goodput. ``progress`` is a callback or True for a line on stderr every
        ``progress_interval_s``. ``ramp_s`` (closed loop) starts the slots evenly over that many
        seconds instead of all at once, so identical requests do not stay in lockstep.
        """
        resolved = _resolve_schedule(concurrency, rate, schedule, arrival, burstiness, seed)
        concurrency_cap = concurrency if isinstance(resolved, OpenLoop) else None
        if processes < 1:
            raise ValueError(f"processes must be >= 1, not {processes}")
        if ramp_s < 0:
            raise ValueError(f"ramp_s must be >= 0, not {ramp_s}")
        if requests is not None and requests < 0:
            raise ValueError(f"requests must be >= 0, not {requests}")
        time_cap = math.inf if duration_s is None else duration_s
        if isinstance(resolved, OpenLoop):
            time_cap = min(time_cap, resolved.duration_s)
        if requests is None and math.isinf(time_cap):
            raise ValueError("give requests= or duration_s= (or a schedule with an end)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt list is empty")
        slo_list = _as_slos(slos)
        if self.preflight:
            await self._preflight(prompts[0], stream, extra_body)
        arrivals: list[float] = []
        if isinstance(resolved, OpenLoop):
            arrivals = resolved.arrival_times(max_requests=requests, max_duration_s=time_cap)
        plans = _split_plans(
            resolved,
            arrivals,
            processes,
            requests=requests,
            time_cap=time_cap,
            concurrency_cap=concurrency_cap,
            prompts=prompts,
            max_tokens=max_tokens,
            stream=stream,
            extra_body=extra_body,
            ramp_s=ramp_s,
        )
        planned = len(arrivals) if isinstance(resolved, OpenLoop) else requests
        reporter = _ProgressReporter(progress, progress_interval_s, planned)
        recorder = None
        if self.gauge_interval_s is not None:  # sampled on a thread, off the client's loop
            recorder = GaugeRecorder(
                self._settings.base_url, self._settings.model, interval_s=self.gauge_interval_s
            )
            await asyncio.to_thread(recorder.start)
        try:
            if processes == 1:
                records, figures = await self._run_single(plans[0], reporter)
            else:
                records, figures = await asyncio.to_thread(self._run_processes, plans, reporter)
        finally:
            if recorder is not None:
                await asyncio.to_thread(recorder.stop)
        records.sort(key=lambda r: r.index)
        summary = stats.summarize(records, warmup_s=warmup_s, slos=slo_list)
        self_check = SelfCheck.from_figures(figures, self.limits)
        config = {
            "base_url": self._settings.base_url,
            "model": self._settings.model,
            "endpoint": self._settings.endpoint,
            "schedule": _describe(resolved),
            "concurrency_cap": concurrency_cap,
            "ramp_s": ramp_s,
            "requests": requests,
            "duration_s": duration_s,
            "max_tokens": max_tokens,
            "stream": stream,
            "warmup_s": warmup_s,
            "processes": processes,
            "usage_mode": self._settings.usage_mode,
            "timeouts": asdict(self._settings.timeouts),
            "workload": prompt.to_dict() if isinstance(prompt, PromptSet) else None,
        }
        gauges = recorder.series(records) if recorder is not None else None
        return LoadResult(records, summary, self_check, config, gauges)

    async def _preflight(
        self, prompt: str, stream: bool, extra_body: dict[str, Any] | None
    ) -> None:
        """One unrecorded request that checks the server answers and settles the usage mode."""
        client = InferenceClient(
            self._settings.base_url,
            self._settings.model,
            api_key=self._settings.api_key,
            endpoint=self._settings.endpoint,
            timeouts=self._settings.timeouts,
            usage_mode=self._settings.usage_mode,
        )
        try:
            await client.request(prompt, max_tokens=2, stream=stream, extra_body=extra_body)
        finally:
            await client.aclose()
        if client.usage_mode != self._settings.usage_mode:
            self._settings = _replace_usage(self._settings, client.usage_mode)

    async def _run_single(
        self, plan: _Plan, reporter: _ProgressReporter
    ) -> tuple[list[RequestRecord], list[ProbeFigures]]:
        """Run the whole plan in this process."""
        counters = _Counters()
        task = asyncio.get_running_loop().create_task(
            reporter.watch_local(counters, time.perf_counter())
        )
        try:
            records, figures = await _run_plan(
                self._settings, plan, _start_soon, counters, self.tokenizer
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return records, [figures]

    def _run_processes(
        self, plans: list[_Plan], reporter: _ProgressReporter
    ) -> tuple[list[RequestRecord], list[ProbeFigures]]:
        """Run each plan in its own spawned process, start them together, merge their records."""
        if self.tokenizer is not None:
            raise ValueError("a tokenizer callable cannot be sent to worker processes")
        context = multiprocessing.get_context("spawn")
        shared = context.Array("q", 2 * len(plans), lock=False)
        pipes: list[Connection] = []
        workers = []
        for plan in plans:
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(child_end, self._settings, plan, shared),
                name=f"gpuinfer-load-{plan.worker}",
                daemon=True,
            )
            process.start()
            child_end.close()
            pipes.append(parent_end)
            workers.append(process)
        try:
            for pipe in pipes:
                kind, detail = pipe.recv()
                if kind != "ready":
                    raise RuntimeError(f"load worker failed to start: {detail}")
            start_at = time.perf_counter() + _WORKER_START_MARGIN_S
            for pipe in pipes:
                pipe.send(start_at)
            records: list[RequestRecord] = []
            figures: list[ProbeFigures] = []
            watcher = threading.Event()
            thread = threading.Thread(
                target=reporter.watch_shared, args=(shared, len(plans), start_at, watcher)
            )
            thread.start()
            try:
                for pipe in pipes:
                    kind, detail = pipe.recv()
                    if kind != "done":
                        raise RuntimeError(f"load worker failed: {detail}")
                    dicts, worker_figures = detail
                    records.extend(RequestRecord.from_dict(d) for d in dicts)
                    figures.append(worker_figures)
            finally:
                watcher.set()
                thread.join()
        finally:
            for process in workers:
                process.join(timeout=5)
                if process.is_alive():
                    process.terminate()
            for pipe in pipes:
                pipe.close()
        return records, figures


def _replace_usage(settings: _ClientSettings, usage_mode: UsageMode) -> _ClientSettings:
    """The same client settings with another usage mode."""
    return _ClientSettings(
        settings.base_url,
        settings.model,
        settings.api_key,
        settings.endpoint,
        settings.timeouts,
        usage_mode,
        settings.loop,
    )


def _as_slos(slos: Sequence[Any]) -> list[slo.SLO]:
    """SLO objects from SLO objects or SLO texts."""
    out: list[slo.SLO] = []
    for item in slos:
        out.extend(slo.parse_slos(item) if isinstance(item, str) else [item])
    return out


def _resolve_schedule(
    concurrency: int | None,
    rate: float | None,
    schedule: Schedule | None,
    arrival: ArrivalKind,
    burstiness: float,
    seed: int,
) -> Schedule:
    """The schedule meant by the run arguments."""
    if schedule is not None:
        if rate is not None:
            raise ValueError("give rate= or schedule=, not both")
        if isinstance(schedule, ClosedLoop) and concurrency is not None:
            raise ValueError("a closed-loop schedule already sets the concurrency")
        return schedule
    if rate is not None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, not {rate}")
        return open_loop(rate, arrival, burstiness=burstiness, seed=seed)
    if concurrency is not None:
        return ClosedLoop(concurrency)
    raise ValueError("give concurrency=, rate= or schedule=")


def _describe(schedule: Schedule) -> dict[str, Any]:
    """Plain-JSON description of a schedule."""
    if isinstance(schedule, ClosedLoop):
        return {"kind": "closed", "concurrency": schedule.concurrency}
    return {
        "kind": "open",
        "arrival": schedule.arrival,
        "burstiness": schedule.burstiness,
        "seed": schedule.seed,
        "stages": [asdict(stage) for stage in schedule.stages],
    }


def _share(total: int, parts: int, part: int) -> int:
    """Part ``part`` of ``total`` split as evenly as possible into ``parts``."""
    return total // parts + (1 if part < total % parts else 0)


def _split_plans(
    schedule: Schedule,
    arrivals: list[float],
    processes: int,
    *,
    requests: int | None,
    time_cap: float,
    concurrency_cap: int | None,
    prompts: list[str],
    max_tokens: int,
    stream: bool,
    extra_body: dict[str, Any] | None,
    ramp_s: float,
) -> list[_Plan]:
    """Split a run into one plan per process: arrivals round-robin, concurrency evenly."""
    if isinstance(schedule, ClosedLoop) and schedule.concurrency < processes:
        raise ValueError(
            f"concurrency {schedule.concurrency} cannot be split across {processes} processes"
        )
    plans = []
    for worker in range(processes):
        closed = offsets = None
        if isinstance(schedule, ClosedLoop):
            total = schedule.concurrency
            closed = _share(total, processes, worker)
            offsets = [(worker + processes * j) * ramp_s / total for j in range(closed)]
        cap = None
        if concurrency_cap is not None:
            cap = max(1, _share(concurrency_cap, processes, worker))
        plans.append(
            _Plan(
                worker=worker,
                closed_concurrency=closed,
                slot_offsets_s=offsets or [],
                arrivals=[
                    (index, arrivals[index]) for index in range(worker, len(arrivals), processes)
                ],
                request_cap=None if requests is None else _share(requests, processes, worker),
                time_cap_s=time_cap,
                concurrency_cap=cap,
                prompts=prompts,
                max_tokens=max_tokens,
                stream=stream,
                extra_body=extra_body,
                index_offset=worker,
                index_stride=processes,
            )
        )
    return plans


class _ProgressReporter:
    """Calls the progress callback (or prints a line) every interval while a run goes on."""

    def __init__(
        self, progress: ProgressCallback | bool | None, interval_s: float, planned: int | None
    ) -> None:
        self.interval_s = interval_s
        self.planned = planned
        self.callback: ProgressCallback | None
        if progress is True:
            self.callback = _print_progress
        elif callable(progress):
            self.callback = progress
        else:
            self.callback = None

    def emit(self, done: int, failed: int, start_at: float) -> None:
        """Report one snapshot."""
        if self.callback is not None:
            elapsed = max(0.0, time.perf_counter() - start_at)
            self.callback(Progress(done, failed, elapsed, self.planned))

    async def watch_local(self, counters: _Counters, start_at: float) -> None:
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


def _print_progress(progress: Progress) -> None:
    """Default progress output: one line on stderr."""
    planned = f"/{progress.planned}" if progress.planned is not None else ""
    print(
        f"gpuinfer-load: {progress.done}{planned} done, {progress.failed} failed, "
        f"{progress.elapsed_s:.1f} s",
        file=sys.stderr,
        flush=True,
    )
