"""Running a planned share of a load run in one client process (this one or a spawned worker).

A :class:`Plan` is what one process runs: its slots (closed loop) or arrivals (open loop), its
caps, and the requests (specs cycled by index, or conversations). Open-loop arrivals are
dispatched at their absolute scheduled offsets; on Linux a ``timerfd`` wakes the loop with
microsecond precision (asyncio's own timers round up to whole milliseconds), and latencies are
measured from the scheduled time, so the engine's own lateness shows up as client queue time
instead of vanishing. Worker processes are spawned, open their connections, report ready, and
all start at one shared time; their records come back over a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import multiprocessing
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from pytest_gpuinfer.clock import DeadlineTimers, LoopKind, new_event_loop
from pytest_gpuinfer.load.client import Endpoint, InferenceClient, RequestSpec, Timeouts, UsageMode
from pytest_gpuinfer.load.progress import Counters, ProgressReporter, count_finished, share_counts
from pytest_gpuinfer.load.retention import KeptRecords, RecordSink, SinkPlan
from pytest_gpuinfer.load.selfcheck import ProbeFigures, cpu_wait, probe
from pytest_gpuinfer.load.workloads.base import History, Session
from pytest_gpuinfer.metrics.records import RequestRecord

_WORKER_START_MARGIN_S = 0.25
_KEEP_ALL = SinkPlan(
    stream=False,
    switch_at=math.inf,
    first_offset_s=0.0,
    warmup_s=0.0,
    slos=(),
    window_s=1.0,
    records_file=None,
)


@dataclass(frozen=True)
class ClientSettings:
    """Everything needed to build the client inside a worker process (picklable)."""

    base_url: str
    model: str
    api_key: str | None
    endpoint: Endpoint
    timeouts: Timeouts
    usage_mode: UsageMode
    loop: LoopKind

    def __repr__(self) -> str:
        return f"ClientSettings({self.base_url!r}, model={self.model!r})"

    def with_usage(self, usage_mode: UsageMode) -> ClientSettings:
        """The same settings with another usage mode."""
        return replace(self, usage_mode=usage_mode)

    def client(
        self,
        *,
        max_connections: int | None = None,
        tokenizer: Callable[[str], int] | None = None,
    ) -> InferenceClient:
        """An InferenceClient with these settings (no ``max_connections``: the client's own
        pool size; no ``tokenizer``: the server's usage counts)."""
        return InferenceClient(
            self.base_url,
            self.model,
            api_key=self.api_key,
            endpoint=self.endpoint,
            timeouts=self.timeouts,
            max_connections=max_connections,
            usage_mode=self.usage_mode,
            tokenizer=tokenizer,
        )


@dataclass(frozen=True)
class Talks:
    """The conversations one process runs, and how their turns are sent."""

    sessions: list[Session]
    first_index: list[int]
    """Record index of each session's first turn (turns follow on)."""
    think_s: float
    history: History
    stream: bool
    extra_body: dict[str, Any] | None


@dataclass(frozen=True)
class Plan:
    """What one client process runs: its share of the schedule and the request contents."""

    worker: int
    closed_concurrency: int | None
    slot_offsets_s: list[float]
    arrivals: list[tuple[int, float]]
    """(request index, or position in ``talks.sessions``; offset from the start) per arrival."""
    request_cap: int | None
    time_cap_s: float
    concurrency_cap: int | None
    specs: list[RequestSpec]
    index_offset: int
    index_stride: int
    talks: Talks | None = None
    """Conversations (then ``specs`` is empty)."""
    sink: SinkPlan | None = None
    """What the process keeps of its records (None: every record, in memory)."""


def new_record(index: int, scheduled: float, worker: int, spec: RequestSpec) -> RequestRecord:
    """A record for ``spec`` due at ``scheduled``, carrying what the workload asked."""
    return RequestRecord(
        index,
        scheduled,
        worker=worker,
        asked_input_tokens=spec.input_tokens,
        asked_output_tokens=spec.max_tokens,
        session=spec.session,
        turn=spec.turn,
        inputs=spec.inputs,
    )


async def start_soon() -> float:
    """Start time for a single-process run: right away."""
    return time.perf_counter() + 0.002


async def run_plan(
    settings: ClientSettings,
    plan: Plan,
    wait_for_start: Callable[[], Awaitable[float]],
    counters: Counters,
    tokenizer: Callable[[str], int] | None,
) -> tuple[KeptRecords, ProbeFigures]:
    """Open the connections, learn the start time, then run one process's share of the run."""
    loop = asyncio.get_running_loop()
    pool_size = plan.closed_concurrency or plan.concurrency_cap
    client = settings.client(max_connections=pool_size, tokenizer=tokenizer)
    figures = ProbeFigures(worker=plan.worker, event_loop=type(loop).__module__.split(".")[0])
    sink = RecordSink(plan.sink or _KEEP_ALL)
    sink.prepare()  # imports and warms up what streaming needs, before anything is timed
    stop = asyncio.Event()
    prober = loop.create_task(probe(client, figures, stop))
    sleeper = DeadlineTimers(loop)
    figures.precise_timer = sleeper.precise
    run = _Run(client, plan, sleeper, sink, counters, figures)
    kept: KeptRecords | None = None
    for spec in plan.specs:  # serialise every body now, not while requests are due
        spec.body(settings.endpoint, settings.model, settings.usage_mode)
    try:
        if pool_size:
            await client.open_connections(pool_size)
        start_at = await wait_for_start()
        sink.start(start_at)
        await sleeper.sleep_until(start_at)
        cpu_start = time.process_time()
        wait_start = cpu_wait()
        wall_start = time.perf_counter()
        run.start = start_at
        if plan.talks is not None:
            await (run.closed_talks() if plan.closed_concurrency else run.open_talks())
        elif plan.closed_concurrency is not None:
            await run.closed()
        else:
            await run.open()
        figures.cpu_s = time.process_time() - cpu_start
        wait_end = cpu_wait()
        if wait_start is not None and wait_end is not None:
            figures.cpu_wait_s = wait_end[0] - wait_start[0]
            figures.wakeups = wait_end[1] - wait_start[1]
        figures.wall_s = time.perf_counter() - wall_start
        kept = sink.finish()
    finally:
        if kept is None:
            sink.abandon()
        stop.set()
        await prober
        sleeper.close()
        await client.aclose()
    return kept, figures


@dataclass
class _Run:
    """One process's run in progress: the client, its plan, and where results go."""

    client: InferenceClient
    plan: Plan
    sleeper: DeadlineTimers
    sink: RecordSink
    counters: Counters
    figures: ProbeFigures
    start: float = 0.0
    gate: asyncio.Semaphore | None = field(default=None)

    async def closed(self) -> None:
        """Closed loop: each slot starts at its ramp offset, then sends when its last one ends."""
        plan, client, sleeper = self.plan, self.client, self.sleeper
        sink, counters = self.sink, self.counters
        assert plan.closed_concurrency is not None
        numbers = itertools.count()
        cap = math.inf if plan.request_cap is None else plan.request_cap
        deadline = self.start + plan.time_cap_s
        worker = plan.worker
        slips = self.figures.dispatch_slip_s
        specs = plan.specs
        n_specs = len(specs)

        async def slot(offset: float) -> None:
            scheduled = self.start + offset
            await sleeper.sleep_until(scheduled)
            while True:
                number = next(numbers)
                if number >= cap or scheduled >= deadline:
                    return
                index = plan.index_offset + number * plan.index_stride
                spec = specs[index % n_specs]
                record = new_record(index, scheduled, worker, spec)
                sink.opened(record)
                await client.send(spec, record)
                if record.sent is not None:
                    slips.append(record.sent - scheduled)
                count_finished(record, counters)
                sink.closed(record)
                scheduled = record.end if record.end is not None else time.perf_counter()

        await asyncio.gather(*(slot(offset) for offset in plan.slot_offsets_s))

    async def open(self) -> None:
        """Open loop: start each request at its scheduled time, whatever is still in flight."""
        plan, client, sleeper = self.plan, self.client, self.sleeper
        sink, counters = self.sink, self.counters
        loop = asyncio.get_running_loop()
        worker = plan.worker
        slips = self.figures.dispatch_slip_s
        gate = asyncio.Semaphore(plan.concurrency_cap) if plan.concurrency_cap else None
        pending: set[asyncio.Task[None]] = set()
        specs = plan.specs
        n_specs = len(specs)
        start = self.start

        async def one(spec: RequestSpec, record: RequestRecord) -> None:
            if gate is not None:
                async with gate:
                    await client.send(spec, record)
            else:
                await client.send(spec, record)
            count_finished(record, counters)
            sink.closed(record)

        for index, offset in plan.arrivals:
            due = start + offset
            await sleeper.sleep_until(due)
            slips.append(max(0.0, time.perf_counter() - due))
            spec = specs[index % n_specs]
            record = new_record(index, due, worker, spec)
            sink.opened(record)
            task = loop.create_task(one(spec, record))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

    async def closed_talks(self) -> None:
        """Closed loop of conversations: each slot runs one session after another."""
        plan = self.plan
        assert plan.talks is not None
        queue = iter(range(len(plan.talks.sessions)))
        deadline = self.start + plan.time_cap_s

        async def slot(offset: float) -> None:
            scheduled = self.start + offset
            await self.sleeper.sleep_until(scheduled)
            for position in queue:  # shared: each slot takes the next session
                if scheduled >= deadline:
                    return
                scheduled = await self.session(position, scheduled, deadline)

        await asyncio.gather(*(slot(offset) for offset in plan.slot_offsets_s))

    async def open_talks(self) -> None:
        """Open loop of conversations: each arrival starts a session of its own."""
        plan = self.plan
        loop = asyncio.get_running_loop()
        if plan.concurrency_cap:
            self.gate = asyncio.Semaphore(plan.concurrency_cap)
        deadline = self.start + plan.time_cap_s
        pending: set[asyncio.Task[float]] = set()
        for position, offset in plan.arrivals:
            due = self.start + offset
            await self.sleeper.sleep_until(due)
            task = loop.create_task(self.session(position, due, deadline))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

    async def session(self, position: int, scheduled: float, deadline: float) -> float:
        """Send one conversation's turns in order; return when its last turn ended."""
        talks = self.plan.talks
        assert talks is not None
        session = talks.sessions[position]
        first = talks.first_index[position]
        messages: list[dict[str, Any]] = []
        if session.system is not None:
            messages.append({"role": "system", "content": session.system})
        keep = talks.history == "response"
        slips = self.figures.dispatch_slip_s
        ended = scheduled
        for turn_number, turn in enumerate(session.turns):
            if scheduled >= deadline:
                break
            if turn_number:
                await self.sleeper.sleep_until(scheduled)
            messages.append({"role": "user", "content": turn.message})
            spec = RequestSpec(
                list(messages),
                turn.output_tokens,
                stream=talks.stream,
                extra_body=talks.extra_body,
                input_tokens=turn.input_tokens,
                session=session.index,
                turn=turn_number,
                keep_text=keep,
            )
            record = new_record(first + turn_number, scheduled, self.plan.worker, spec)
            self.sink.opened(record)
            if self.gate is not None:
                async with self.gate:
                    await self.client.send(spec, record)
            else:
                await self.client.send(spec, record)
            if record.sent is not None:
                slips.append(record.sent - scheduled)
            count_finished(record, self.counters)
            ended = record.end if record.end is not None else time.perf_counter()
            self.sink.closed(record)
            if not record.ok:
                break  # the conversation cannot go on without this turn's reply
            reply = (record.response_text or "") if keep else (turn.reply or "")
            record.response_text = None
            messages.append({"role": "assistant", "content": reply})
            scheduled = ended + talks.think_s
        return ended


def run_coroutine(kind: LoopKind, coroutine: Awaitable[Any]) -> Any:
    """Run a coroutine to completion on a new loop (in a thread if this one already has a loop)."""

    async def main() -> Any:
        if threading.current_thread() is not threading.main_thread():
            return await coroutine
        with _signals_cancel(asyncio.current_task()) as received:
            try:
                return await coroutine
            except asyncio.CancelledError:
                if not received:
                    raise
        signum, handler = received[0]
        handler(signum, None)  # the handler the run had: it raises (KeyboardInterrupt)
        raise KeyboardInterrupt(f"received signal {signum}")

    def run() -> Any:
        # asyncio.Runner cancels and drains every task before it closes the loop, so an
        # interrupt leaves no task pending and ``finally`` blocks that await run on a live loop.
        with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
            return runner.run(main())

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


@contextlib.contextmanager
def _signals_cancel(task: asyncio.Task[Any] | None) -> Iterator[list[tuple[int, Any]]]:
    """While the load runs, SIGINT/SIGTERM handlers that raise cancel the run's task instead.

    A handler that raises KeyboardInterrupt (Ctrl-C; the plugin's SIGTERM) would raise it inside
    whatever callback the loop is running: uvloop takes it for a transport's fatal error and the
    run could hang. The loop's own signal handling cancels the task cleanly; the original handler
    is called (and raises) once everything has unwound. Yields the (signal, handler) received.
    """
    loop = asyncio.get_running_loop()
    received: list[tuple[int, Any]] = []
    previous: dict[int, Any] = {
        int(signum): handler
        for signum in (signal.SIGINT, signal.SIGTERM)
        if callable(handler := signal.getsignal(signum))
    }

    def on_signal(signum: int) -> None:
        received.append((signum, previous[signum]))
        if task is not None:
            task.cancel()

    for signum in previous:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)


def _worker_main(connection: Connection, settings: ClientSettings, plan: Plan, shared: Any) -> None:
    """Entry point of a client worker process: run the plan and send back the records."""
    counters = Counters()

    async def wait_for_start() -> float:
        connection.send(("ready", None))
        start_at: float = await asyncio.get_running_loop().run_in_executor(None, connection.recv)
        return start_at

    async def main() -> tuple[KeptRecords, ProbeFigures]:
        reporter = asyncio.get_running_loop().create_task(
            share_counts(counters, shared, plan.worker)
        )
        try:
            return await run_plan(settings, plan, wait_for_start, counters, None)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    try:
        kept, figures = run_coroutine(settings.loop, main())
        shared[2 * plan.worker] = counters.done
        shared[2 * plan.worker + 1] = counters.failed
        dicts = None if kept.records is None else [r.to_dict() for r in kept.records]
        kept.records = None
        connection.send(("done", (dicts, kept, figures)))
    except BaseException as exc:
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()


def run_processes(
    settings: ClientSettings, plans: list[Plan], reporter: ProgressReporter
) -> tuple[list[KeptRecords], list[ProbeFigures]]:
    """Run each plan in its own spawned process, start them together, collect what each kept."""
    context = multiprocessing.get_context("spawn")
    shared = context.Array("q", 2 * len(plans), lock=False)
    pipes: list[Connection] = []
    workers = []
    for plan in plans:
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_worker_main,
            args=(child_end, settings, plan, shared),
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
        kept: list[KeptRecords] = []
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
                dicts, worker_kept, worker_figures = detail
                if dicts is not None:
                    worker_kept.records = [RequestRecord.from_dict(d) for d in dicts]
                kept.append(worker_kept)
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
    return kept, figures


def _share(total: int, parts: int, part: int) -> int:
    """Part ``part`` of ``total`` split as evenly as possible into ``parts``."""
    return total // parts + (1 if part < total % parts else 0)


@dataclass(frozen=True)
class Split:
    """How a run is cut into per-process plans (the parts every plan shares)."""

    processes: int
    concurrency: int | None
    """Closed loop: slots in all; None for an open loop."""
    ramp_offsets: Callable[[int, int, int], list[float]] | None
    arrivals: list[float]
    requests: int | None
    time_cap_s: float
    concurrency_cap: int | None
    specs: list[RequestSpec]
    talks: Talks | None

    def plans(self) -> list[Plan]:
        """One plan per process: arrivals (or sessions) round-robin, concurrency evenly."""
        processes = self.processes
        if self.concurrency is not None and self.concurrency < processes:
            raise ValueError(
                f"concurrency {self.concurrency} cannot be split across {processes} processes"
            )
        out = []
        for worker in range(processes):
            closed: int | None = None
            offsets: list[float] = []
            if self.concurrency is not None:
                closed = _share(self.concurrency, processes, worker)
                assert self.ramp_offsets is not None
                offsets = self.ramp_offsets(worker, processes, closed)
            cap = None
            if self.concurrency_cap is not None:
                cap = max(1, _share(self.concurrency_cap, processes, worker))
            mine = range(worker, len(self.arrivals), processes)
            talks = None
            arrivals = [(index, self.arrivals[index]) for index in mine]
            if self.talks is not None:
                chosen = (
                    list(mine)
                    if self.concurrency is None
                    else list(range(worker, len(self.talks.sessions), processes))
                )
                talks = replace(
                    self.talks,
                    sessions=[self.talks.sessions[i] for i in chosen],
                    first_index=[self.talks.first_index[i] for i in chosen],
                )
                arrivals = [(position, offset) for position, (_, offset) in enumerate(arrivals)]
            out.append(
                Plan(
                    worker=worker,
                    closed_concurrency=closed,
                    slot_offsets_s=offsets,
                    arrivals=arrivals,
                    request_cap=None
                    if self.requests is None
                    else _share(self.requests, processes, worker),
                    time_cap_s=self.time_cap_s,
                    concurrency_cap=cap,
                    specs=self.specs,
                    index_offset=worker,
                    index_stride=processes,
                    talks=talks,
                )
            )
        return out
