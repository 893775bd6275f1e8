"""The simulated inference server: routes, scheduling (slots, KV budget, FIFO queue), metrics
and injected failures, on the running event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pytest_gpuinfer.clock import DeadlineTimers
from pytest_gpuinfer.sim.config import (
    CRASH_EXIT_CODE,
    DUE_SLACK_S,
    ENGINE_NAME,
    INFERENCE_PATHS,
    OWNED_BY,
    SimConfig,
)
from pytest_gpuinfer.sim.connection import HttpConnection
from pytest_gpuinfer.sim.generation import (
    Generation,
    GenerationParams,
    RequestRecord,
    ResponseChannel,
)
from pytest_gpuinfer.sim.http_framing import (
    CONTINUOUS_USAGE,
    BadRequest,
    IncomingRequest,
    error_body,
    response_head,
)

_decode_json = json.JSONDecoder().decode


class SimServer:
    """The simulated inference server on the running event loop (see the package docstring)."""

    def __init__(self, config: SimConfig | None = None, *, exit_process_on_crash: bool = False):
        """Prepare a server; ``exit_process_on_crash`` makes ``crash_after`` kill the process."""
        self.config = config or SimConfig()
        self.started = time.perf_counter()
        self.exit_process_on_crash = exit_process_on_crash
        self.model_json = json.dumps(self.config.model).encode()
        self.token_texts = [b" tok%d" % index for index in range(self.config.output_tokens)]
        self.connections: set[HttpConnection] = set()
        self.timers: DeadlineTimers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Server | None = None
        self._closed_event: asyncio.Event | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._records: list[RequestRecord] = []
        self._random = random.Random(self.config.seed)
        self._ids = itertools.count(1)
        self._waiting: deque[Generation] = deque()
        self._waiting_count = 0
        self._running_count = 0
        self._kv_reserved = 0
        self._admitted = 0
        self._preemptions = 0
        self._admitting = False
        self._served = 0
        self._leaked: list[bytes] = []
        self._crashed = False
        self.closed = False
        self._status_counts: dict[int, int] = {}
        self._finish_counts: dict[bytes, int] = {}
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._request_seconds_total = 0.0
        self._requests_finished = 0
        self._routes: dict[tuple[bytes, bytes], Callable[[HttpConnection, IncomingRequest], None]]
        self._routes = {
            (b"GET", b"/health"): self._health,
            (b"GET", b"/v1/models"): self._models,
            (b"GET", b"/version"): self._version,
            (b"GET", b"/metrics"): self._metrics,
            (b"GET", b"/sim/requests"): self._sim_requests,
            (b"POST", b"/sim/reset"): self._sim_reset,
            (b"POST", b"/v1/completions"): self._completions,
            (b"POST", b"/v1/chat/completions"): self._chat_completions,
        }
        self._paths = {path for _, path in self._routes}
        self._tails_cache: dict[tuple[bool, int, bytes, int, int, int], tuple[bytes, ...]] = {}

    # lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; read it back from ``.port``)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closed_event = asyncio.Event()
        self.timers = DeadlineTimers(loop, early_s=DUE_SLACK_S)
        self._listener = await loop.create_server(
            lambda: HttpConnection(self), host, port, backlog=4096, reuse_address=True
        )
        self._host = host
        self._port = self._listener.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the server."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def records(self) -> list[dict[str, Any]]:
        """Server-side records of inference requests so far, as ``GET /sim/requests`` gives them."""
        return [record.to_dict() for record in self._records]

    async def close(self) -> None:
        """Stop listening and drop every connection; requests in flight are cut off."""
        self._shut_down(graceful_connection=None)
        if self._listener is not None:
            await self._listener.wait_closed()
        await asyncio.sleep(0)  # let the transports report connection_lost

    async def wait_closed(self) -> None:
        """Return once the server has been closed (by :meth:`close` or a simulated crash)."""
        assert self._closed_event is not None, "start() the server first"
        await self._closed_event.wait()

    def _shut_down(self, graceful_connection: ResponseChannel | None) -> None:
        """Close the listener and connections; ``graceful_connection`` may finish sending."""
        self.closed = True
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            if connection is graceful_connection:
                connection.close()
            else:
                connection.abort()
        self._waiting.clear()
        self._waiting_count = 0
        if self._loop is not None:
            self.timers.close()
        if self._closed_event is not None:
            self._closed_event.set()

    # rendering

    def event_tails(
        self,
        chat: bool,
        output_tokens: int,
        finish_reason: bytes,
        first: int,
        last: int,
        usage_prompt: int = -1,
    ) -> tuple[bytes, ...]:
        """What follows each event's per-request prefix for chunks ``first`` to ``last - 1``.

        ``usage_prompt`` >= 0 adds cumulative usage (continuous_usage_stats) for that prompt
        length. Cached: a response's events differ from another's only in their prefix (id,
        created) and, with usage, in the prompt length, so ``prefix + prefix.join(tails)``
        renders them without per-token work.
        """
        key = (chat, output_tokens, finish_reason, first, last, usage_prompt)
        tails = self._tails_cache.get(key)
        if tails is None:
            if len(self._tails_cache) > 10_000:
                self._tails_cache.clear()
            tails = self._render_tails(
                chat, output_tokens, finish_reason, first, last, usage_prompt
            )
            self._tails_cache[key] = tails
        return tails

    def _render_tails(
        self,
        chat: bool,
        output_tokens: int,
        finish_reason: bytes,
        first: int,
        last: int,
        usage_prompt: int,
    ) -> tuple[bytes, ...]:
        """Build the event tails of :meth:`event_tails` (role, tokens, usage, corrupt line)."""
        config = self.config
        per_chunk = config.tokens_per_chunk
        count = -(-output_tokens // per_chunk)
        corrupt_after = count // 2 if config.malformed_stream else -1
        opening = b'[{"index":0,"delta":{"content":"' if chat else b'[{"index":0,"text":"'
        closing = b'"},' if chat else b'",'
        tails: list[bytes] = []

        def end(completion: int) -> bytes:
            """Close the event, with cumulative usage after ``completion`` tokens when asked."""
            if usage_prompt < 0:
                return b"}\n\n"
            return CONTINUOUS_USAGE % (usage_prompt, usage_prompt + completion, completion)

        if first == 0 and chat:
            tails.append(
                b'[{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]' + end(0)
            )
        for index in range(first, last):
            text = b"".join(
                self.token_texts[index * per_chunk : min(output_tokens, (index + 1) * per_chunk)]
            )
            reason = b'"%s"' % finish_reason if index == count - 1 else b"null"
            tails.append(
                opening
                + text
                + closing
                + b'"logprobs":null,"finish_reason":%s,"stop_reason":null}]' % reason
                + end(min(output_tokens, (index + 1) * per_chunk))
            )
            if index == corrupt_after:
                tails.append(opening + b' tok", "finish_re\n\n')  # truncated JSON
        return tuple(tails)

    # dispatch

    def dispatch(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """Route one request to its handler; unknown paths get FastAPI-style 404/405."""
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            handler(connection, request)
            return
        status, detail = (
            (405, "Method Not Allowed")
            if request.path in self._paths
            else (
                404,
                "Not Found",
            )
        )
        body = json.dumps({"detail": detail}).encode()
        connection.send_response(
            status, b"application/json", body, request.keep_alive, request.request_id
        )

    def _send_json(self, connection: HttpConnection, request: IncomingRequest, data: Any) -> None:
        """Answer 200 with ``data`` as JSON."""
        connection.send_response(
            200, b"application/json", json.dumps(data).encode(), request.keep_alive, None
        )

    def _health(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """``GET /health``: 200 with an empty body, like vLLM."""
        connection.send_response(200, b"application/json", b"", request.keep_alive, None)

    def _version(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """``GET /version``: says this is the simulator."""
        self._send_json(connection, request, {"version": "simulator", "engine": ENGINE_NAME})

    def _models(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """``GET /v1/models``: the one simulated model, shaped like vLLM's answer."""
        model = self.config.model
        card = {
            "id": model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": OWNED_BY,
            "root": model,
            "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [],
        }
        self._send_json(connection, request, {"object": "list", "data": [card]})

    def _sim_requests(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """``GET /sim/requests``: the server-side records."""
        self._send_json(connection, request, self.records)

    def _sim_reset(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """``POST /sim/reset``: forget the records."""
        self._records = []
        self._send_json(connection, request, {"reset": True})

    def _metrics(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """``GET /metrics``: Prometheus text with vLLM's metric names."""
        body = self.metrics_text().encode()
        connection.send_response(
            200, b"text/plain; version=0.0.4; charset=utf-8", body, request.keep_alive, None
        )

    def metrics_text(self) -> str:
        """The Prometheus exposition of the simulated engine's gauges and counters."""
        engine_labels = f'engine="0",model_name={json.dumps(self.config.model)}'
        budget = self.config.kv_token_budget
        capacity = (
            budget if budget is not None else self.config.max_num_seqs * (self.config.max_model_len)
        )
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            """Append one metric family; each sample's labels follow the engine labels."""
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for extra_labels, value in samples:
                lines.append(f"{name}{{{engine_labels}{extra_labels}}} {float(value)!r}")

        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            [("", self._running_count)],
        )
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            [("", self._waiting_count)],
        )
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage (simulator: reserved prompt+max_tokens).",
            [("", self._kv_reserved / capacity)],
        )
        metric(
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine (simulator: only counted, with "
            "--preempt-every).",
            [("", self._preemptions)],
        )
        metric(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            [("", self._prompt_tokens_total)],
        )
        metric(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            [("", self._generation_tokens_total)],
        )
        metric(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            [
                (f',finished_reason="{reason.decode()}"', count)
                for reason, count in sorted(self._finish_counts.items())
            ],
        )
        latency = "vllm:e2e_request_latency_seconds"
        lines.append(f"# HELP {latency} Histogram of e2e request latency in seconds.")
        lines.append(f"# TYPE {latency} histogram")
        finished = float(self._requests_finished)
        lines.append(f'{latency}_bucket{{{engine_labels},le="+Inf"}} {finished!r}')
        lines.append(f"{latency}_count{{{engine_labels}}} {finished!r}")
        lines.append(f"{latency}_sum{{{engine_labels}}} {float(self._request_seconds_total)!r}")
        metric(
            "gpuinfer_sim_requests_total",
            "counter",
            "Inference requests answered by the simulator, by HTTP status.",
            [(f',code="{code}"', count) for code, count in sorted(self._status_counts.items())],
        )
        lines.append(
            "# HELP gpuinfer_sim_info Marks the pytest-gpuinfer simulator (not an engine)."
        )
        lines.append("# TYPE gpuinfer_sim_info gauge")
        lines.append(f'gpuinfer_sim_info{{simulator="{ENGINE_NAME}",owned_by="{OWNED_BY}"}} 1.0')
        return "\n".join(lines) + "\n"

    # inference

    def _completions(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """``POST /v1/completions``."""
        self._generate(connection, request, chat=False)

    def _chat_completions(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """``POST /v1/chat/completions``."""
        self._generate(connection, request, chat=True)

    def _generate(self, connection: HttpConnection, request: IncomingRequest, chat: bool) -> None:
        """Validate, record, then queue a generation (or fail it as configured)."""
        if self._crashed:
            return
        config = self.config
        response_number = next(self._ids)
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-sim{response_number:x}"
        request_id = request.request_id or response_id
        endpoint = INFERENCE_PATHS[1] if chat else INFERENCE_PATHS[0]
        record = RequestRecord(request_id, endpoint, request.received)
        self._records.append(record)
        if config.slow_after is not None and len(self._records) > config.slow_after:
            self.config = config = dataclasses.replace(  # degraded from now on
                config,
                ttft_s=config.ttft_s * config.slow_factor,
                itl_s=config.itl_s * config.slow_factor,
                slow_after=None,
            )
        if config.leak_kb_per_request:  # written bytes, so they are resident
            self._leaked.append(b"\x01" * int(config.leak_kb_per_request * 1000))
        if config.crash_after is not None and self._served >= config.crash_after:
            self._crash(None)
            return
        try:
            try:
                payload = _decode_json(request.body.decode())
            except (ValueError, UnicodeDecodeError) as decode_error:
                raise BadRequest(f"Invalid JSON body: {decode_error}") from None
            params = GenerationParams(chat, payload, config)
        except BadRequest as refusal:
            self._answer_error(connection, request, record, refusal)
            return
        record.stream = params.stream
        record.prompt_tokens = params.prompt_tokens
        if config.hang:
            connection.hold(record)
            return
        if config.error_rate and self._random.random() < config.error_rate:
            failure = BadRequest(
                "Simulated engine failure (error_rate).", 500, "InternalServerError"
            )
            self._answer_error(connection, request, record, failure)
            return
        generation = Generation(self, connection, record, params, request, response_id)
        connection.hold(generation)
        if params.stream:
            if not generation.chunked:  # HTTP/1.0: the end of the stream is the end of the body
                generation.keep_alive = False
            generation.pending_head = response_head(
                200,
                b"text/event-stream; charset=utf-8",
                None,
                generation.keep_alive,
                request.request_id,
                chunked=generation.chunked,
            )
        self._submit(generation)
        if generation.pending_head is not None:
            connection.write(generation.pending_head)
            generation.pending_head = None

    def _answer_error(
        self,
        connection: HttpConnection,
        request: IncomingRequest,
        record: RequestRecord,
        error: BadRequest,
    ) -> None:
        """Send an OpenAI-style error for an inference request and count it as served."""
        now = time.perf_counter()
        record.end = now
        record.status = error.status
        body = error_body(str(error), error.status, error.error_type)
        connection.send_response(
            error.status, b"application/json", body, request.keep_alive, request.request_id
        )
        self._count_served(error.status, connection)

    # scheduling

    def _fits(self, generation: Generation) -> bool:
        """Whether the engine has a sequence slot and KV room for ``generation`` now."""
        if self._running_count >= self.config.max_num_seqs:
            return False
        budget = self.config.kv_token_budget
        return (
            budget is None
            or self._running_count == 0
            or self._kv_reserved + generation.params.kv_tokens <= budget
        )

    def _submit(self, generation: Generation) -> None:
        """Admit at once when nothing waits and it fits; otherwise join the FIFO queue."""
        if not self._waiting_count and self._fits(generation):
            self._admit(generation, time.perf_counter())
        else:
            generation.waiting = True
            self._waiting.append(generation)
            self._waiting_count += 1

    def _admit(self, generation: Generation, now: float) -> None:
        """Reserve a slot and KV room, then start prefill."""
        self._running_count += 1
        self._admitted += 1
        every = self.config.preempt_every
        if every and self._admitted % every == 0:
            self._preemptions += 1
        self._kv_reserved += generation.params.kv_tokens
        generation.start(now)

    def _admit_waiting(self) -> None:
        """Admit queued requests, head of line first, while they fit."""
        if self._admitting:
            return
        self._admitting = True
        try:
            waiting = self._waiting
            while waiting and not self._crashed:
                generation = waiting[0]
                if not generation.waiting:  # abandoned while queued
                    waiting.popleft()
                    continue
                if not self._fits(generation):
                    break
                waiting.popleft()
                generation.waiting = False
                self._waiting_count -= 1
                self._admit(generation, time.perf_counter())
        finally:
            self._admitting = False

    def _release(self, generation: Generation) -> None:
        """Give back a running generation's slot and KV room."""
        if generation.running:
            generation.running = False
            self._running_count -= 1
            self._kv_reserved -= generation.params.kv_tokens
        elif generation.waiting:
            generation.waiting = False
            self._waiting_count -= 1

    def on_generation_finished(self, generation: Generation) -> None:
        """Book-keeping after a generation sent its last byte."""
        params = generation.params
        self._release(generation)
        self._prompt_tokens_total += params.prompt_tokens
        self._generation_tokens_total += params.output_tokens
        record = generation.record
        self._request_seconds_total += (record.end or time.perf_counter()) - record.received
        self._requests_finished += 1
        reason = params.finish_reason
        self._finish_counts[reason] = self._finish_counts.get(reason, 0) + 1
        if self._count_served(200, generation.connection):
            return
        if self._waiting_count:
            self._admit_waiting()

    def on_generation_abandoned(self, generation: Generation) -> None:
        """A client left: free its slot and let the queue move."""
        self._release(generation)
        if self._waiting_count and not self._crashed:
            self._admit_waiting()

    def _count_served(self, status: int, connection: ResponseChannel) -> bool:
        """Count an answered inference request; returns True when that triggered the crash."""
        self._status_counts[status] = self._status_counts.get(status, 0) + 1
        self._served += 1
        crash_after = self.config.crash_after
        if crash_after is not None and self._served >= crash_after:
            self._crash(connection)
            return True
        return False

    def _crash(self, last_connection: ResponseChannel | None) -> None:
        """Die like a crashed engine: exit the process, or drop the listener and connections."""
        if self._crashed:
            return
        self._crashed = True
        print(
            f"gpuinfer-sim: simulated crash after {self._served} requests (crash_after)",
            file=sys.stderr,
            flush=True,
        )
        if self.exit_process_on_crash:
            self._exit_when_flushed(last_connection, deadline=time.perf_counter() + 0.2)
        else:
            self._shut_down(graceful_connection=last_connection)

    def _exit_when_flushed(self, connection: ResponseChannel | None, deadline: float) -> None:
        """``os._exit`` once the last response left the process (or after a short deadline)."""
        if connection is None or connection.write_buffer_size() == 0:
            os._exit(CRASH_EXIT_CODE)
        if time.perf_counter() > deadline:
            os._exit(CRASH_EXIT_CODE)
        assert self._loop is not None
        self._loop.call_later(0.001, self._exit_when_flushed, connection, deadline)
