"""Batch engines behind one interface: vLLM's offline ``LLM`` and a Ray Data pipeline.

Each engine runs in a worker process of its own (:mod:`pytest_gpuinfer.batch.worker`, its own
session, its log in a file), started once and given any number of jobs::

    spec = EngineSpec(mode="ray", model=model_dir)            # or mode="offline"
    with BatchEngine(spec, log_dir=tmp_path) as engine:
        result = engine.run(BatchJob(rows, max_tokens=16, batch_size=32, time_limit_s=120))
        assert result.check.ok, result.check.describe()
    print(engine.leftovers.describe())                       # nothing left behind, or what was

Every start and every job has a hard time limit enforced here, whatever the worker does: a worker
past its limit is killed with its whole tree, and the error says what it was waiting for (the
worker's own diagnosis, else Ray's log lines about resource requests it cannot fulfil). Closing
kills whatever the run's processes left and removes the ``/dev/shm`` files they created.

Modes: ``offline`` (one ``vllm.LLM``), ``ray`` (``map_batches`` over actors that own a
``vllm.LLM``; a local ``ray.init(num_cpus=2)`` unless ``ray_address`` names a cluster) and
``ray-llm`` (``ray.data.llm``'s processor).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from pytest_gpuinfer.batch.cleanup import ProcessWatch, wait_gone
from pytest_gpuinfer.batch.results import (
    BatchError,
    BatchResult,
    BatchTimeout,
    InputRow,
    Leftovers,
    OutputRow,
    check_rows,
)
from pytest_gpuinfer.batch.wire import DEADLINE, EVENT_FD_ENV, REJECTED
from pytest_gpuinfer.load.prompts import LocalTokenizer, build_prompts
from pytest_gpuinfer.memory.tracker import (
    MemoryReading,
    MemorySource,
    MemoryTracker,
    NVMLMemory,
    ProcessTreeRSS,
    SourceGone,
)

MODES = ("offline", "ray", "ray-llm")
INTERRUPT_GRACE_S = 6.0
"""How long an interrupted worker gets to shut its engine and Ray down before it is killed."""
ENGINE_NAMES = {"offline": "vllm-offline", "ray": "ray-data", "ray-llm": "ray-data-llm"}
RESOURCE_LOG_LINES = re.compile(
    r".*(No available node types can fulfill resource request|"
    r"cannot be scheduled right now|Resource request[s]? .* cannot be|"
    r"Insufficient resources|doesn't have enough).*"
)
"""Ray's log lines that say a request waits for resources nobody has."""
ACTOR_ENV_KEYS = ("HF_HUB_OFFLINE", "OMP_NUM_THREADS")
"""Besides every ``VLLM_*`` variable: environment the Ray replicas get from the driver (never
``CUDA_VISIBLE_DEVICES``: Ray assigns each replica its GPUs)."""


class BatchRejected(BatchError):
    """The engine refused a row (e.g. a prompt over the context length): a clean rejection."""


class EngineDied(BatchError):
    """The worker process exited during a job (a crash, an out-of-memory kill)."""


@dataclass(frozen=True)
class EngineSpec:
    """Which engine, on which model, with which resources."""

    mode: str = "ray"
    model: str = ""
    max_model_len: int = 1024
    kv_cache_gib: int = 1
    """``VLLM_CPU_KVCACHE_SPACE`` for the CPU build (ignored on GPUs)."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``vllm.LLM`` arguments."""
    ray_address: str | None = None
    """An existing cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None: local."""
    ray_num_cpus: float = 2.0
    """CPUs of the local Ray instance."""
    gpu_uuids: tuple[str, ...] = ()
    """GPUs to run on (by UUID): memory is read through NVML and the engine asks for a GPU."""
    start_timeout_s: float = 240.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown batch engine mode {self.mode!r}; choose one of {MODES}")

    @property
    def name(self) -> str:
        """``vllm-offline``, ``ray-data`` or ``ray-data-llm``."""
        return ENGINE_NAMES[self.mode]

    @property
    def uses_ray(self) -> bool:
        """True for the Ray Data modes."""
        return self.mode != "offline"


@dataclass(frozen=True)
class BatchJob:
    """Rows to push through the engine and how."""

    rows: Sequence[InputRow]
    max_tokens: int
    batch_size: int = 32
    replicas: int = 1
    """Engine replicas (Ray actors); the offline engine runs one."""
    time_limit_s: float = 300.0
    ignore_eos: bool = True
    """Generate exactly ``max_tokens`` per row (so the row check can count them)."""
    num_cpus: float = 1.0
    """CPUs each replica asks Ray for."""
    num_gpus: float = 0.0
    """GPUs each replica asks Ray for (0 on CPU; more than any node has never schedules)."""

    def wire(self) -> dict[str, Any]:
        """The job as the worker reads it."""
        return {
            "rows": [{"id": r.id, "prompt": r.prompt} for r in self.rows],
            "max_tokens": self.max_tokens,
            "batch_size": self.batch_size,
            "replicas": self.replicas,
            "time_limit_s": self.time_limit_s,
            "ignore_eos": self.ignore_eos,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
        }

    def params(self) -> dict[str, Any]:
        """What was asked, for results."""
        lengths = sorted({r.prompt_tokens for r in self.rows})
        return {
            "rows": len(self.rows),
            "prompt_tokens": lengths[0] if len(lengths) == 1 else lengths,
            "max_tokens": self.max_tokens,
            "batch_size": self.batch_size,
            "replicas": self.replicas,
            "time_limit_s": self.time_limit_s,
            "num_gpus": self.num_gpus,
        }


def _default_sigint() -> None:
    """In the worker, before exec: SIGINT raises KeyboardInterrupt again."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_rows(
    model_dir: str | Path, count: int, prompt_tokens: int, *, seed: int = 0, first_id: int = 0
) -> list[InputRow]:
    """``count`` varied prompts of exactly ``prompt_tokens`` of the model's own tokenizer."""
    prompts = build_prompts(
        LocalTokenizer(model_dir), prompt_tokens, count=count, seed=seed, endpoint="completions"
    )
    sent = prompts.sent_tokens if prompts.sent_tokens is not None else prompt_tokens
    return [InputRow(first_id + i, text, sent) for i, text in enumerate(prompts)]


class ProcessTreesRSS:
    """Resident memory of several process trees together (the worker, a local cluster)."""

    kind = "rss"

    def __init__(self, pids: Sequence[int]) -> None:
        self.sources = [ProcessTreeRSS(pid) for pid in pids]

    def read(self) -> MemoryReading:
        """Sum of every tree still alive (gone only when all are)."""
        parts: dict[str, int] = {}
        alive = 0
        for source in self.sources:
            try:
                parts.update(source.read().parts)
                alive += 1
            except SourceGone:
                continue
        if not alive:
            raise SourceGone("every tracked process tree has exited")
        return MemoryReading(sum(parts.values()), parts)

    def describe(self) -> str:
        """Names the root processes."""
        roots = ", ".join(str(s.pid) for s in self.sources)
        return f"RSS of the batch worker and everything under it (psutil; roots {roots})"


class BatchEngine:
    """A batch engine in a worker process: start once, run jobs, close (and sweep)."""

    def __init__(
        self,
        spec: EngineSpec,
        *,
        log_dir: str | Path,
        memory_roots: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / f"batch-{spec.mode}-{os.getpid()}-{id(self):x}.log"
        self.memory_roots = list(memory_roots)
        """Other process trees whose memory counts as the workers' (a local cluster's nodes)."""
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.start_s: float | None = None
        self.leftovers: Leftovers | None = None
        self.memory: MemoryTracker | None = None
        self._events_fd: int | None = None
        self._buffer = b""
        self._watch: ProcessWatch | None = None
        self._ray_dir: str | None = None
        self._pending_start: float | None = None
        self.closed_cleanly = False
        self._busy = False
        """The worker is loading its engine or running a job: it reads no close request."""

    # -- lifecycle -----------------------------------------------------------------------------

    def _worker_spec(self) -> dict[str, Any]:
        """What the worker needs to build the engine."""
        kwargs = dict(self.spec.engine_kwargs)
        return {
            "mode": self.spec.mode,
            "model": self.spec.model,
            "max_model_len": self.spec.max_model_len,
            "engine_kwargs": kwargs,
            "ray_address": self.spec.ray_address,
            "ray_num_cpus": self.spec.ray_num_cpus,
            "ray_num_gpus": len(self.spec.gpu_uuids),
            "ray_temp_dir": self._ray_dir,
            "actor_env": {
                key: value
                for key, value in self._env().items()
                if key.startswith("VLLM_") or key in ACTOR_ENV_KEYS
            },
        }

    def _env(self) -> dict[str, str]:
        """The worker's environment: offline model, CPU KV cache, GPUs by UUID."""
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.spec.kv_cache_gib))
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
        if self.spec.gpu_uuids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.spec.gpu_uuids)
        env.update(self.extra_env)
        return env

    def start(self) -> BatchEngine:
        """Start the worker and wait (bounded) until its engine is loaded."""
        if self.process is not None:
            raise RuntimeError("BatchEngine already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.spec.uses_ray and not self.spec.ray_address:
            # Short: Ray's socket paths under it must fit in 107 bytes.
            self._ray_dir = tempfile.mkdtemp(prefix="gir", dir="/tmp")
        read_fd, write_fd = os.pipe()
        env = self._env()
        env[EVENT_FD_ENV] = str(write_fd)
        began = time.monotonic()
        self._watch = ProcessWatch([], marker=self._ray_dir)  # lists /dev/shm before the start
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest_gpuinfer.batch.worker",
                    json.dumps(self._worker_spec()),
                ],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,
                # A shell that starts pytest in the background leaves SIGINT ignored; the worker
                # needs it to interrupt a job when the run is interrupted (see close()).
                preexec_fn=_default_sigint,
            )
        os.close(write_fd)
        self._events_fd = read_fd
        self._watch.add_root(self.process.pid)
        self._watch.start()
        self.memory = MemoryTracker(self._memory_source(), interval_s=0.5).start()
        self._busy = True
        try:
            ready = self._next_event(began + self.spec.start_timeout_s, "the engine to start")
        except BaseException:
            self.close()
            raise
        self._busy = False
        if ready.get("event") != "ready":
            message = ready.get("message", ready)
            self.close()
            raise BatchError(f"{self.spec.name} did not start: {message}\n{self.log_tail()}")
        self.start_s = time.monotonic() - began
        self._pending_start = self.start_s
        return self

    def _memory_source(self) -> MemorySource:
        """NVML by UUID on GPUs (the worker tree's processes), else the trees' RSS."""
        assert self.process is not None
        if self.spec.gpu_uuids:
            watch = self._watch

            def pids() -> set[int]:
                return {pid for pid, _ in (watch.seen if watch else {})}

            return NVMLMemory(self.spec.gpu_uuids, pids=pids)
        return ProcessTreesRSS([self.process.pid, *self.memory_roots])

    def close(self, *, graceful: bool = True) -> Leftovers:
        """Ask the worker to close, kill what is left, remove its shm files; report leftovers.

        ``graceful=False`` skips asking (a worker stuck in a job cannot read the request).
        """
        if self.leftovers is not None:
            return self.leftovers
        proc = self.process
        if proc is not None and proc.poll() is None and graceful and not self._busy:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write(b'{"cmd": "close"}\n')
                proc.stdin.flush()
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30.0)
            self.closed_cleanly = proc.poll() == 0
        elif proc is not None and proc.poll() is None and self._busy:
            # Interrupted mid-job or mid-start (Ctrl-C, a failed test): the worker would read a
            # close request only once its job ends. SIGINT interrupts the job; with its stdin
            # closed the worker then shuts its engine (and Ray) down and exits.
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=INTERRUPT_GRACE_S)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(timeout=5.0)
        if proc is not None:
            wait_gone(proc.pid, 2.0)
        if self.memory is not None:
            self.memory.stop()
        self.leftovers = self._watch.sweep() if self._watch is not None else Leftovers()
        if self._events_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._events_fd)
            self._events_fd = None
        if self._ray_dir:
            shutil.rmtree(self._ray_dir, ignore_errors=True)
        return self.leftovers

    def __enter__(self) -> BatchEngine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- events --------------------------------------------------------------------------------

    def _next_event(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        """The worker's next event; a timeout or a dead worker raises with the log tail."""
        assert self.process is not None and self._events_fd is not None
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BatchTimeout(
                    f"{self.spec.name}: no answer within the time limit while waiting for "
                    f"{waiting_for}. {self._resource_hint()}\n{self.log_tail()}",
                    waiting_for=self._resource_hint() or None,
                )
            ready, _, _ = select.select([self._events_fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._events_fd, 65536)
                if not chunk:
                    code = self.process.wait(timeout=10.0)
                    raise EngineDied(
                        f"{self.spec.name}: the worker exited (code {code}) while waiting for "
                        f"{waiting_for}\n{self.log_tail()}"
                    )
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        return event

    def _resource_hint(self) -> str:
        """Ray's own log lines about requests it cannot fulfil (worker log and session logs)."""
        files = [self.log_path]
        if self._ray_dir:
            files += sorted(Path(self._ray_dir).glob("session_*/logs/*.log"))
            files += sorted(Path(self._ray_dir).glob("session_*/logs/*.out"))
            files += sorted(Path(self._ray_dir).glob("session_*/logs/*.err"))
        lines: list[str] = []
        for path in files:
            with contextlib.suppress(OSError):
                for match in RESOURCE_LOG_LINES.finditer(path.read_text(errors="replace")):
                    text = match.group(0).strip()
                    if text not in lines:
                        lines.append(text)
        return ("Ray says: " + " | ".join(lines[-3:])) if lines else ""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the worker's log."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no worker log)"
        return f"--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])

    # -- jobs ----------------------------------------------------------------------------------

    def run(self, job: BatchJob) -> BatchResult:
        """Run ``job`` under its hard time limit; rows checked, figures measured."""
        proc = self.process
        if proc is None or proc.poll() is not None or self.leftovers is not None:
            raise BatchError(f"{self.spec.name} is not running\n{self.log_tail()}")
        assert proc.stdin is not None and self.memory is not None
        began = time.monotonic()
        wire = job.wire()
        if self.spec.gpu_uuids and self.spec.uses_ray and not job.num_gpus:
            wire["num_gpus"] = 1.0  # on GPUs each replica asks Ray for one
        proc.stdin.write((json.dumps({"cmd": "run", "job": wire}) + "\n").encode())
        proc.stdin.flush()
        self._busy = True
        try:
            # The worker reports its own deadline first; this is the backstop if it cannot.
            event = self._next_event(began + job.time_limit_s + 15.0, "the job's rows")
            self._busy = False
        except BatchTimeout as exc:
            self.close(graceful=False)
            raise BatchTimeout(
                f"{self.spec.name}: job of {len(job.rows)} rows passed its "
                f"{job.time_limit_s:.0f} s limit (worker killed). {exc}",
                waiting_for=exc.waiting_for,
            ) from None
        except EngineDied:
            self.close()
            raise
        wall = time.monotonic() - began
        if event.get("event") == "error":
            self._raise_job_error(event, job)
        rows = [OutputRow(**row) for row in event["rows"]]
        window = [s for s in self.memory.samples if s.t >= began]
        peak = max((s.total_bytes for s in window), default=None)
        before = [s for s in self.memory.samples if s.t < began]
        start_s, self._pending_start = self._pending_start, None
        init = event.get("engine_init_s")
        result = BatchResult(
            engine=self.spec.name,
            params={**job.params(), "ray_address": self.spec.ray_address},
            rows=rows,
            check=check_rows(job.rows, rows, max_tokens=job.max_tokens if job.ignore_eos else None),
            wall_s=max((r.done_s for r in rows), default=wall),
            engine_s=event.get("engine_s"),
            engine_start_s=start_s,
            first_result_s=min((r.done_s for r in rows), default=None),
            stages=dict(event.get("stages") or {}),
            peak_memory_bytes=peak,
            baseline_memory_bytes=before[-1].total_bytes if before else None,
            memory_source=self.memory.source.describe(),
            preemptions=event.get("preemptions"),
        )
        if init:
            result.notes.append(
                f"the replicas loaded their engines inside the job: {init:.1f} s in all "
                "(counted in the wall time, as in any Ray Data job)"
            )
        if self.spec.ray_address:
            result.notes.append(
                "on an existing cluster: memory is this machine's worker tree only "
                "(the replicas' memory lives on the cluster's nodes)"
            )
        return result

    def _raise_job_error(self, event: dict[str, Any], job: BatchJob) -> None:
        """Turn a worker's error event into the matching exception."""
        kind = event.get("kind")
        message = str(event.get("message"))
        if kind == REJECTED:
            raise BatchRejected(f"{self.spec.name} rejected a row: {message}")
        if kind == DEADLINE:
            waiting = event.get("waiting_for") or self._resource_hint() or None
            if self.spec.uses_ray:
                self.close()  # a stuck pipeline may hold actors: start afresh
            raise BatchTimeout(
                f"{self.spec.name}: {message}"
                + (f"; {waiting}" if waiting else "; no resource request was pending"),
                waiting_for=waiting,
            )
        raise BatchError(
            f"{self.spec.name}: job of {len(job.rows)} rows failed: {message}\n"
            f"{event.get('traceback', '')}\n{self.log_tail()}"
        )

    @property
    def observed_processes(self) -> dict[tuple[int, float], str]:
        """Every process seen under the worker while it ran: (pid, start time) -> name."""
        return dict(self._watch.seen) if self._watch is not None else {}

    @property
    def alive(self) -> bool:
        """True while the worker runs."""
        return self.process is not None and self.process.poll() is None and self.leftovers is None

    def pids(self) -> set[int]:
        """The worker's process tree now."""
        if self.process is None:
            return set()
        try:
            root = psutil.Process(self.process.pid)
            return {root.pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.Error:
            return set()
