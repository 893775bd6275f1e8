"""The load engine's entry point: ``LoadRunner.run(schedule, workload, limits)``.

* The **schedule** says when requests are due (:mod:`pytest_gpuinfer.load.schedule`): a closed
  loop with its ramp, a constant, Poisson or gamma open loop, stages and burst shapes, or a
  trace's recorded times.
* The **workload** says what each request is (:mod:`pytest_gpuinfer.load.workloads`):
  exact-length synthetic prompts, dataset rows with their own lengths, conversations, a trace's
  lengths and prefixes, shared prefixes, embeddings. It yields request specs; the client never
  knows where they came from.
* The **limits** (:class:`Limits`) say when the run ends (requests, seconds), what is left out
  (warm-up) and what goodput is judged by (SLOs).

How the engine itself behaves (timeouts, streaming, client processes, event loop, the preflight
request, engine gauges, the self-check's limits, progress) is fixed per runner by
:class:`RunnerOptions`; :meth:`LoadRunner.with_options` makes a runner that differs in some.

``run`` collects one :class:`~pytest_gpuinfer.metrics.records.RequestRecord` per request and
returns a :class:`~pytest_gpuinfer.load.result.LoadResult`: the summary
(:func:`pytest_gpuinfer.metrics.stats.summarize`), asked vs achieved lengths, per-turn figures,
the engine's prefix-cache hits, and the self-check (:mod:`pytest_gpuinfer.load.selfcheck`) that
says whether the client itself was the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_gpuinfer.clock import LoopKind
from pytest_gpuinfer.load.client import Endpoint, InferenceClient, Timeouts, UsageMode
from pytest_gpuinfer.load.gauges import DEFAULT_INTERVAL_S, GaugeRecorder
from pytest_gpuinfer.load.progress import (
    Counters,
    Progress,
    ProgressCallback,
    ProgressReporter,
)
from pytest_gpuinfer.load.prompts import TokenCounter, token_counter_for
from pytest_gpuinfer.load.result import LoadResult
from pytest_gpuinfer.load.retention import Keeping, KeptRecords, Retention
from pytest_gpuinfer.load.schedule import ClosedLoop, OpenSchedule, Schedule
from pytest_gpuinfer.load.selfcheck import ProbeFigures, SelfCheck, SelfCheckLimits
from pytest_gpuinfer.load.workers import (
    ClientSettings,
    Split,
    Talks,
    run_coroutine,
    run_plan,
    run_processes,
    start_soon,
)
from pytest_gpuinfer.load.workloads.base import PreparedWorkload, Workload, WorkloadContext
from pytest_gpuinfer.metrics import slo, stats
from pytest_gpuinfer.metrics.records import RequestRecord

__all__ = [
    "Limits",
    "LoadResult",
    "LoadRunner",
    "ProbeFigures",
    "Progress",
    "ProgressCallback",
    "Retention",
    "RunnerOptions",
    "SelfCheck",
    "SelfCheckLimits",
]

_NO_COUNTER: Any = object()


@dataclass(frozen=True)
class Limits:
    """When a run ends, what it leaves out, and the SLOs goodput counts against."""

    requests: int | None = None
    """Requests to send at most (a conversation's turns count one each)."""
    duration_s: float | None = None
    """Seconds after which no request starts."""
    warmup_s: float = 0.0
    """Requests scheduled in the first seconds are recorded but left out of the summary."""
    slos: tuple[slo.SLO | str, ...] = ()
    """SLO objects or texts (``"ttft_p95<500ms"``) that goodput is judged by."""

    def __post_init__(self) -> None:
        if self.requests is not None and self.requests < 0:
            raise ValueError(f"requests must be >= 0, not {self.requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, not {self.duration_s}")
        if not self.warmup_s >= 0:
            raise ValueError(f"warmup_s must be >= 0, not {self.warmup_s}")
        if isinstance(self.slos, str):
            object.__setattr__(self, "slos", (self.slos,))

    def parsed_slos(self) -> list[slo.SLO]:
        """The SLOs as objects (texts parsed)."""
        out: list[slo.SLO] = []
        for item in self.slos:
            out.extend(slo.parse_slos(item) if isinstance(item, str) else [item])
        return out


@dataclass(frozen=True)
class RunnerOptions:
    """How the load engine sends and watches, the same for every run of a runner."""

    stream: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    processes: int = 1
    """Client processes the run is split across (arrivals round-robin, concurrency evenly)."""
    loop: LoopKind = "auto"
    usage_mode: UsageMode = "continuous"
    """How token usage is asked for in streams (weakened for servers that reject it)."""
    preflight: bool = True
    """Send one unrecorded request first: checks the server answers, settles the usage mode."""
    gauge_interval_s: float | None = DEFAULT_INTERVAL_S
    """How often the target's /metrics is sampled during a run (None: never)."""
    self_check: SelfCheckLimits = field(default_factory=SelfCheckLimits)
    progress: ProgressCallback | bool | None = None
    """A callback taking :class:`Progress`, or True for a line on stderr."""
    progress_interval_s: float = 5.0
    retention: Retention = field(default_factory=Retention)
    """What a run keeps of its requests: every record in memory up to a limit, then streamed
    figures and a record file (:mod:`pytest_gpuinfer.load.retention`)."""

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, not {self.processes}")


class LoadRunner:
    """Runs load against an OpenAI-compatible server and returns timed records and verdicts."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        endpoint: Endpoint = "chat",
        options: RunnerOptions | None = None,
        tokenizer: Callable[[str], int] | None = None,
        counter: TokenCounter | None = None,
        model_dir: str | Path | None = None,
    ) -> None:
        """``tokenizer`` counts a chunk's text when the server reports no usage; ``counter``
        counts prompt tokens for workloads (default: the server's ``/tokenize`` when it has one,
        else the ``tokenizer.json`` in ``model_dir``)."""
        InferenceClient(base_url, model, endpoint=endpoint)  # validate the URL and endpoint now
        self.options = options or RunnerOptions()
        self._settings = ClientSettings(
            base_url=base_url,
            model=model,
            api_key=api_key,
            endpoint=endpoint,
            timeouts=self.options.timeouts,
            usage_mode=self.options.usage_mode,
            loop=self.options.loop,
        )
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self._counter: Any = counter if counter is not None else _NO_COUNTER

    def __repr__(self) -> str:
        return f"LoadRunner({self._settings.base_url!r}, model={self._settings.model!r})"

    @property
    def base_url(self) -> str:
        """The server's base URL."""
        return self._settings.base_url

    @property
    def model(self) -> str:
        """The model name put in requests."""
        return self._settings.model

    @property
    def usage_mode(self) -> UsageMode:
        """How token usage is asked for (may weaken after the preflight request)."""
        return self._settings.usage_mode

    def with_options(self, **changes: Any) -> LoadRunner:
        """A runner for the same server whose options differ by ``changes``."""
        runner = LoadRunner.__new__(LoadRunner)
        runner.options = replace(self.options, **changes)
        runner._settings = replace(
            self._settings,
            timeouts=runner.options.timeouts,
            usage_mode=runner.options.usage_mode,
            loop=runner.options.loop,
        )
        runner.tokenizer = self.tokenizer
        runner.model_dir = self.model_dir
        runner._counter = self._counter
        return runner

    def token_counter(self) -> TokenCounter | None:
        """Counts tokens as the target does: the given counter, else the server's /tokenize."""
        if self._counter is _NO_COUNTER:
            key = self._settings.api_key
            self._counter = token_counter_for(
                self._settings.base_url,
                self._settings.model,
                model_dir=self.model_dir,
                headers={"Authorization": f"Bearer {key}"} if key else None,
            )
        counter: TokenCounter | None = self._counter
        return counter

    def run(
        self, schedule: Schedule, workload: Workload, limits: Limits | None = None
    ) -> LoadResult:
        """Run ``workload`` on ``schedule`` within ``limits`` and wait for it."""
        result: LoadResult = run_coroutine(
            self._settings.loop, self.arun(schedule, workload, limits)
        )
        return result

    async def arun(
        self, schedule: Schedule, workload: Workload, limits: Limits | None = None
    ) -> LoadResult:
        """Run ``workload`` on ``schedule`` within ``limits``, on the running event loop.

        The run ends at ``limits.requests`` or ``limits.duration_s``, at the end of a schedule
        that has one, or, for a workload with a natural end (a dataset, a trace, a set of
        conversations) and no other bound, when each of its requests was sent once.
        """
        limits = limits or Limits()
        options = self.options
        if not isinstance(schedule, (ClosedLoop, OpenSchedule)):
            raise ValueError(f"not a schedule: {schedule!r}")
        time_cap = math.inf if limits.duration_s is None else limits.duration_s
        if isinstance(schedule, OpenSchedule):
            time_cap = min(time_cap, schedule.duration_s)
        arrivals: list[float] | None = None
        if isinstance(schedule, OpenSchedule) and (
            limits.requests is not None or math.isfinite(time_cap)
        ):
            arrivals = schedule.arrival_times(max_requests=limits.requests, max_duration_s=time_cap)
        context = WorkloadContext(
            counter=await asyncio.to_thread(self.token_counter),
            endpoint=self._settings.endpoint,
            stream=options.stream,
            count=len(arrivals) if arrivals is not None else limits.requests,
            first_item=0 if isinstance(schedule, ClosedLoop) else schedule.first_item,
        )
        prepared = await asyncio.to_thread(workload.prepare, context)
        settings = self._settings
        if prepared.endpoint is not None and prepared.endpoint != settings.endpoint:
            settings = replace(settings, endpoint=prepared.endpoint)
        split = _split(schedule, limits, prepared, arrivals, time_cap, options)
        plans = split.plans()
        if options.processes > 1 and self.tokenizer is not None:
            raise ValueError("a tokenizer callable cannot be sent to worker processes")
        planned = (
            prepared.size if split.talks is not None else len(split.arrivals) or split.requests
        )
        keeping = Keeping.plan(
            options.retention,
            processes=options.processes,
            planned=planned,
            first_offset_s=_first_offset(plans),
            warmup_s=limits.warmup_s,
            slos=tuple(limits.parsed_slos()),
        )
        plans = [replace(plan, sink=sink) for plan, sink in zip(plans, keeping.sinks, strict=True)]
        if options.preflight:
            try:
                await self._preflight(settings, prepared)
            except BaseException:
                keeping.discard()
                raise
            settings = replace(settings, usage_mode=self._settings.usage_mode)
        reporter = ProgressReporter(options.progress, options.progress_interval_s, planned)
        recorder = None
        if options.gauge_interval_s is not None:  # sampled on a thread, off the client's loop
            recorder = GaugeRecorder(
                settings.base_url, settings.model, interval_s=options.gauge_interval_s
            )
            await asyncio.to_thread(recorder.start)
        try:
            if options.processes == 1:
                kept, figures = await self._run_single(settings, plans[0], reporter)
            else:
                kept, figures = await asyncio.to_thread(run_processes, settings, plans, reporter)
        except BaseException:
            keeping.discard()
            raise
        finally:
            if recorder is not None:
                await asyncio.to_thread(recorder.stop)
        records, streamed = keeping.gather(kept)
        if streamed is None:
            records.sort(key=lambda r: r.index)
            summary = stats.summarize(records, warmup_s=limits.warmup_s, slos=limits.parsed_slos())
        else:
            summary = streamed.fold.summary()
        config = {
            "base_url": settings.base_url,
            "model": settings.model,
            "endpoint": settings.endpoint,
            "schedule": schedule.describe(),
            "concurrency_cap": split.concurrency_cap,
            "ramp_s": schedule.ramp_s if isinstance(schedule, ClosedLoop) else 0.0,
            "requests": limits.requests,
            "duration_s": limits.duration_s,
            "max_tokens": prepared.info.get("output_tokens"),
            "stream": options.stream,
            "warmup_s": limits.warmup_s,
            "processes": options.processes,
            "usage_mode": settings.usage_mode,
            "timeouts": asdict(settings.timeouts),
            "workload": prepared.info,
            "retention": options.retention.keep,
        }
        gauges = None
        if recorder is not None:
            timeline = streamed.fold.timeline if streamed is not None else None
            gauges = recorder.series(records, timeline)
        return LoadResult(
            records,
            summary,
            SelfCheck.from_figures(figures, options.self_check),
            config,
            gauges,
            workload_text=prepared.text,
            streamed=streamed,
        )

    async def _preflight(self, settings: ClientSettings, prepared: PreparedWorkload) -> None:
        """One unrecorded request that checks the server answers and settles the usage mode."""
        client = settings.client()
        spec = prepared.check_spec(self.options.stream)
        try:
            await client.send(spec, RequestRecord(index=-1, scheduled=time.perf_counter()))
        finally:
            await client.aclose()
        if client.usage_mode != self._settings.usage_mode:
            self._settings = self._settings.with_usage(client.usage_mode)

    async def _run_single(
        self, settings: ClientSettings, plan: Any, reporter: ProgressReporter
    ) -> tuple[list[KeptRecords], list[ProbeFigures]]:
        """Run the whole plan in this process."""
        counters = Counters()
        task = asyncio.get_running_loop().create_task(
            reporter.watch_local(counters, time.perf_counter())
        )
        try:
            kept, figures = await run_plan(settings, plan, start_soon, counters, self.tokenizer)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return [kept], [figures]


def _first_offset(plans: list[Any]) -> float:
    """Offset from the start of the run's first scheduled request (the warm-up counts from it)."""
    offsets = [o for plan in plans for o in plan.slot_offsets_s]
    offsets += [plan.arrivals[0][1] for plan in plans if plan.arrivals]
    return min(offsets, default=0.0)


def _split(
    schedule: Schedule,
    limits: Limits,
    prepared: PreparedWorkload,
    arrivals: list[float] | None,
    time_cap: float,
    options: RunnerOptions,
) -> Split:
    """How the run is bounded and cut: arrivals (open loop) or a request cap (closed loop),
    conversations started per arrival or per slot, and a natural end for a finite workload."""
    talks: Talks | None = None
    requests = limits.requests
    if prepared.sessions:
        talks = _talks(prepared, options.stream)
        requests = None  # the sessions were cut to the request cap
        if isinstance(schedule, OpenSchedule):
            arrivals = schedule.arrival_times(
                max_requests=len(prepared.sessions), max_duration_s=time_cap
            )
    elif arrivals is None and (
        isinstance(schedule, OpenSchedule) or (requests is None and math.isinf(time_cap))
    ):
        if not prepared.finite:
            raise ValueError(
                "the run has no end: give Limits(requests=...) or Limits(duration_s=...) "
                "(or a schedule or workload with an end)"
            )
        if isinstance(schedule, OpenSchedule):
            arrivals = schedule.arrival_times(max_requests=prepared.size, max_duration_s=time_cap)
        else:
            requests = prepared.size
    if not prepared.specs and talks is None:
        raise ValueError("the workload built no request")
    closed = schedule if isinstance(schedule, ClosedLoop) else None
    return Split(
        processes=options.processes,
        concurrency=closed.concurrency if closed is not None else None,
        ramp_offsets=closed.slot_offsets if closed is not None else None,
        arrivals=arrivals or [],
        requests=requests,
        time_cap_s=time_cap,
        concurrency_cap=None if isinstance(schedule, ClosedLoop) else schedule.max_concurrency,
        specs=prepared.specs,
        talks=talks,
    )


def _talks(prepared: PreparedWorkload, stream: bool) -> Talks:
    """The conversations of a prepared workload, with each session's first record index."""
    starts = list(itertools.accumulate((len(s.turns) for s in prepared.sessions), initial=0))
    return Talks(
        sessions=prepared.sessions,
        first_index=starts[:-1],
        think_s=prepared.think_s,
        history=prepared.history,
        stream=stream,
        extra_body=prepared.extra_body,
    )
