"""A parameterised OpenAI-compatible server simulating an inference engine, to check clients.

The simulator is an instrument, never a stand-in for a real engine: it always says what it is
(``server`` header, ``owned_by`` in ``/v1/models``, engine name ``sim``). Its latency, batching
limits and failure modes are set by :class:`SimConfig`, and it records server-side timestamps for
every inference request (``GET /sim/requests``) so a load client's measurements can be checked
against the truth.

Behaviour, in one place:

* **Tokens.** The prompt has one token per whitespace-separated word (a list of token ids counts
  its length). A chat prompt counts the words of every message's text content plus
  ``CHAT_TOKENS_PER_MESSAGE`` per message plus ``CHAT_TOKENS_PER_REPLY`` (role markers and the
  assistant prefix a chat template would add). Output token ``i`` is the word ``" tok{i}"``, so
  text is deterministic. A request produces ``min(SimConfig.output_tokens, max_tokens)`` tokens;
  ``finish_reason`` is ``"length"`` when that is the request's ``max_tokens``, else ``"stop"``
  (the simulated model "emitted EOS"). ``ignore_eos`` is accepted and ignored.
* **Usage.** A non-streaming response always carries ``usage``. A stream ends with a usage-only
  chunk (empty ``choices``) when ``stream_options.include_usage`` is set; when
  ``continuous_usage_stats`` is set too, every chunk also carries the cumulative ``usage`` so far
  (the chat role chunk with ``completion_tokens`` 0), in vLLM's shape, with
  ``"completion_tokens_details":null``.
* **Scheduling.** Like vLLM's scheduler: at most ``max_num_seqs`` requests run; with
  ``kv_token_budget`` the running requests' ``prompt + max_tokens`` (``output_tokens`` when the
  request gives no ``max_tokens``) may not exceed the budget (a request larger than the whole
  budget runs alone). Others wait in FIFO order, head of line first. Nothing is ever preempted.
* **Timing.** Prefill starts at admission: the first chunk is sent ``ttft_s`` after the request
  was admitted (the schedule counts from admission, not from receipt), so a request's TTFT seen
  from its receipt is its receive time (rest of its bytes, parsing, waiting behind an earlier
  response on the same connection) plus its queue wait plus ``ttft_s``. Then
  one chunk every ``itl_s``, each carrying ``tokens_per_chunk`` tokens. Deadlines are absolute (no
  drift); chunks that fall due together go out in one write. Timers use Linux ``timerfd`` for
  sub-millisecond precision (falling back to the event loop's timers elsewhere). A streaming
  response's head is sent on receipt, like vLLM's; a non-streaming response is sent whole when its
  last token is due. With ``ttft_s == itl_s == 0`` head and body go out in a single write.
* **Records.** Times are ``time.perf_counter()`` seconds (CLOCK_MONOTONIC on Linux, shared by all
  processes). ``received`` is when the first byte of the request was read from the connection
  (taken on entry to ``data_received``), so the truth includes the simulator's own receive time;
  ``admitted`` is when it got an engine slot (prefill start; ``received <= admitted``).
  ``first_token`` is when the first text chunk was written (for a non-streaming
  response, when the body was written); ``chunk_times`` has the write time of every text chunk of
  a stream (empty for a non-streaming response); ``max_lag`` is the largest delay of a write behind
  its schedule. A client that disconnects early leaves status 499.
* **Failures.** ``error_rate``: that fraction of valid inference requests get HTTP 500 (seeded
  RNG). ``crash_after``: after N inference responses the process exits with
  ``CRASH_EXIT_CODE`` (``os._exit``); in-process, the listener and every connection close.
  ``hang``: inference requests are read and never answered (``/health`` still answers).
  ``malformed_stream``: a corrupt SSE data line follows the middle chunk of every stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import heapq
import itertools
import json
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import httptools

ENGINE_NAME = "sim"
OWNED_BY = "pytest-gpuinfer-simulator"
SERVER_HEADER = "gpuinfer-sim (simulator, not a real engine)"
LISTENING_LINE = "gpuinfer-sim listening on {url} (simulator, not a real engine)"
CHAT_TOKENS_PER_MESSAGE = 3
"""Prompt tokens a chat message adds on top of its words (role and separators of a template)."""
CHAT_TOKENS_PER_REPLY = 3
"""Prompt tokens a chat request adds once (the assistant prefix of a template)."""
CRASH_EXIT_CODE = 3
"""Exit status of a simulator process that crashed on purpose (``crash_after``)."""
CLIENT_CLOSED_STATUS = 499
"""Status recorded for a request whose client disconnected before the response finished."""
INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")
_decode_json = json.JSONDecoder().decode
_DUE_SLACK_S = 20e-6
"""Chunks due within this much of now are sent in the current write instead of a new timer."""


@dataclass(frozen=True)
class SimConfig:
    """How the simulated engine behaves: latency, batching limits and injected failures."""

    ttft_s: float = 0.05
    itl_s: float = 0.01
    tokens_per_chunk: int = 1
    output_tokens: int = 64
    max_num_seqs: int = 256
    kv_token_budget: int | None = None
    error_rate: float = 0.0
    crash_after: int | None = None
    hang: bool = False
    malformed_stream: bool = False
    max_model_len: int = 1024
    model: str = "sim-model"
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject settings that describe no possible engine."""
        if self.ttft_s < 0 or self.itl_s < 0:
            raise ValueError("ttft_s and itl_s must be >= 0")
        if self.tokens_per_chunk < 1 or self.output_tokens < 1:
            raise ValueError("tokens_per_chunk and output_tokens must be >= 1")
        if self.max_num_seqs < 1 or self.max_model_len < 1:
            raise ValueError("max_num_seqs and max_model_len must be >= 1")
        if self.kv_token_budget is not None and self.kv_token_budget < 1:
            raise ValueError("kv_token_budget must be >= 1 or None")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        if self.crash_after is not None and self.crash_after < 0:
            raise ValueError("crash_after must be >= 0 or None")


class _RequestRecord:
    """Server-side timeline of one inference request (the rows of ``GET /sim/requests``)."""

    __slots__ = (
        "admitted",
        "chunk_times",
        "end",
        "endpoint",
        "first_token",
        "max_lag",
        "prompt_tokens",
        "received",
        "request_id",
        "status",
        "stream",
        "tokens",
    )

    def __init__(self, request_id: str, endpoint: str, received: float) -> None:
        """Start a record for a request whose first byte was read at ``received``."""
        self.request_id = request_id
        self.endpoint = endpoint
        self.stream = False
        self.received = received
        self.admitted: float | None = None
        self.first_token: float | None = None
        self.end: float | None = None
        self.prompt_tokens: int | None = None
        self.tokens = 0
        self.status: int | None = None
        self.max_lag = 0.0
        self.chunk_times: list[float] = []

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the record, fields in timeline order."""
        fields = {name: getattr(self, name) for name in _RECORD_FIELDS}
        fields["chunk_times"] = list(self.chunk_times)
        return fields


_RECORD_FIELDS = (
    "request_id",
    "endpoint",
    "stream",
    "status",
    "received",
    "admitted",
    "first_token",
    "end",
    "prompt_tokens",
    "tokens",
    "max_lag",
)


class _BadRequest(Exception):
    """A request the simulated server refuses, with the HTTP status and OpenAI error type."""

    def __init__(self, message: str, status: int = 400, error_type: str = "BadRequestError"):
        """Keep the status and error type next to the message."""
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class _IncomingRequest:
    """One fully parsed HTTP request waiting for its connection to answer it."""

    __slots__ = ("body", "http_10", "keep_alive", "method", "path", "received", "request_id")

    def __init__(
        self,
        method: bytes,
        path: bytes,
        body: bytes,
        request_id: str | None,
        keep_alive: bool,
        http_10: bool,
        received: float,
    ) -> None:
        """Capture the parts of a request the server needs and when its first byte arrived."""
        self.received = received
        self.method = method
        self.path = path
        self.body = body
        self.request_id = request_id
        self.keep_alive = keep_alive
        self.http_10 = http_10


# --------------------------------------------------------------------------------------------
# Timers


class _Timespec(ctypes.Structure):
    """``struct timespec`` for timerfd_settime."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    """``struct itimerspec`` for timerfd_settime."""

    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


class _LoopTimers:
    """Deadline callbacks on the event loop's own timers (the portable, millisecond-grained way)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``loop`` for scheduling."""
        self._loop = loop

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at ``perf_counter()`` time ``when`` (a millisecond early or late)."""
        delay = max(0.0, when - time.perf_counter())
        self._loop.call_later(delay, callback)

    def close(self) -> None:
        """Nothing to release: pending loop timers die with the loop or run as no-ops."""


class _TimerfdTimers:
    """Deadline callbacks with sub-millisecond precision: one Linux timerfd armed for a heap."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the timerfd (raises OSError where there is none) and watch it on ``loop``."""
        libc = ctypes.CDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd: int = fd
        self._loop = loop
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._armed_for = math.inf
        self._dispatching = False
        loop.add_reader(fd, self._on_expired)

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` once ``perf_counter()`` reaches ``when``."""
        heapq.heappush(self._heap, (when, next(self._sequence), callback))
        if when < self._armed_for and not self._dispatching:
            self._arm(when)

    def _arm(self, when: float) -> None:
        """Set the timerfd to expire at absolute CLOCK_MONOTONIC time ``when``."""
        self._armed_for = when
        seconds = int(when)
        value = self._spec.it_value
        value.tv_sec = seconds
        value.tv_nsec = max(1, int((when - seconds) * 1e9))
        self._settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None)

    def _on_expired(self) -> None:
        """Run every callback that is due, then re-arm for the next deadline."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        heap = self._heap
        self._armed_for = math.inf
        self._dispatching = True
        try:
            limit = time.perf_counter() + _DUE_SLACK_S
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


def _make_timers(loop: asyncio.AbstractEventLoop) -> _TimerfdTimers | _LoopTimers:
    """Precise timerfd timers on Linux, the loop's timers elsewhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            return _TimerfdTimers(loop)
    return _LoopTimers(loop)


def _reduce_timer_slack() -> None:
    """Ask Linux to wake this thread within 1 µs of its timers instead of the default 50 µs."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK


# --------------------------------------------------------------------------------------------
# HTTP framing


_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
}
_SERVER_LINE = b"server: " + SERVER_HEADER.encode() + b"\r\n"
_STREAM_END = b"data: [DONE]\n\n"
_CONTINUOUS_USAGE = (
    b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d,'
    b'"completion_tokens_details":null}}\n\n'
)
"""End of a chunk with cumulative usage (vLLM's ``continuous_usage_stats``): prompt, total, done."""
_LAST_HTTP_CHUNK = b"0\r\n\r\n"


def _response_head(
    status: int,
    content_type: bytes,
    content_length: int | None,
    keep_alive: bool,
    request_id: str | None,
    chunked: bool = False,
) -> bytes:
    """Status line and headers: a body of known length, chunked, or ended by closing."""
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
        _SERVER_LINE,
        b"content-type: " + content_type + b"\r\n",
    ]
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n")
    elif content_length is not None:
        parts.append(b"content-length: %d\r\n" % content_length)
    if request_id is not None:
        parts.append(b"x-request-id: " + request_id.encode("latin-1") + b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _http_chunk(payload: bytes) -> bytes:
    """Frame ``payload`` as one chunk of a chunked transfer encoding."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def _error_body(message: str, status: int, error_type: str) -> bytes:
    """OpenAI/vLLM-style JSON error body."""
    error = {"message": message, "type": error_type, "param": None, "code": status}
    return json.dumps({"error": error}).encode()


# --------------------------------------------------------------------------------------------
# Requests


class _GenerationParams:
    """What a validated completions or chat request asks the simulated model to do."""

    __slots__ = (
        "chat",
        "continuous_usage",
        "finish_reason",
        "include_usage",
        "max_tokens",
        "output_tokens",
        "prompt_tokens",
        "stream",
    )

    def __init__(self, chat: bool, payload: Any, config: SimConfig) -> None:
        """Validate ``payload`` like vLLM would; raises _BadRequest."""
        if not isinstance(payload, dict):
            raise _BadRequest("The request body must be a JSON object.")
        model = payload.get("model")
        if model is not None and model != config.model:
            raise _BadRequest(
                f"The model `{model}` does not exist.", status=404, error_type="NotFoundError"
            )
        self.chat = chat
        self.prompt_tokens = _count_chat_prompt(payload) if chat else _count_prompt(payload)
        max_tokens = payload.get("max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = payload.get("max_tokens")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise _BadRequest(f"max_tokens must be at least 1, got {max_tokens}.")
        n = payload.get("n", 1)
        if n != 1:
            raise _BadRequest(f"The simulator only serves n=1, got n={n}.")
        stream = payload.get("stream", False)
        if not isinstance(stream, bool):
            raise _BadRequest("`stream` must be a boolean.")
        self.stream = stream
        options = payload.get("stream_options")
        if options is not None and not stream:
            raise _BadRequest("Stream options can only be defined when `stream=True`.")
        if options is not None and not isinstance(options, dict):
            raise _BadRequest("`stream_options` must be an object.")
        self.include_usage = bool(options and options.get("include_usage"))
        self.continuous_usage = bool(
            self.include_usage and options and options.get("continuous_usage_stats")
        )
        self.max_tokens: int | None = max_tokens
        if max_tokens is not None and max_tokens <= config.output_tokens:
            self.output_tokens = max_tokens
            self.finish_reason = b"length"
        else:
            self.output_tokens = config.output_tokens
            self.finish_reason = b"stop"
        completion = max_tokens if max_tokens is not None else self.output_tokens
        if self.prompt_tokens > config.max_model_len:  # vLLM 0.32's wording
            raise _BadRequest(
                f"This model's maximum context length is {config.max_model_len} tokens. "
                f"However, your prompt contains {self.prompt_tokens} input tokens, which exceeds "
                "this limit even without any output tokens. "
                "Please reduce the length of the input prompt."
            )
        if self.prompt_tokens + completion > config.max_model_len:  # older vLLM's wording
            raise _BadRequest(
                f"This model's maximum context length is {config.max_model_len} tokens. "
                f"However, you requested {self.prompt_tokens + completion} tokens "
                f"({self.prompt_tokens} in the messages, {completion} in the completion). "
                "Please reduce the length of the messages or completion."
            )

    @property
    def kv_tokens(self) -> int:
        """Tokens of KV cache the request reserves while it runs: prompt plus its token limit."""
        limit = self.max_tokens if self.max_tokens is not None else self.output_tokens
        return self.prompt_tokens + limit


def _count_prompt(payload: dict[str, Any]) -> int:
    """Prompt tokens of a completions request: words of a text prompt, or token ids given."""
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return len(prompt.split())
    if isinstance(prompt, list) and all(
        isinstance(token, int) and not isinstance(token, bool) for token in prompt
    ):
        return len(prompt)
    if prompt is None:
        raise _BadRequest("Field required: `prompt`.")
    raise _BadRequest(
        "`prompt` must be a string or a list of token ids (the simulator serves one prompt)."
    )


def _count_chat_prompt(payload: dict[str, Any]) -> int:
    """Prompt tokens of a chat request: words of every text content plus template overhead."""
    messages = payload.get("messages")
    if messages is None:
        raise _BadRequest("Field required: `messages`.")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("`messages` must be a non-empty list.")
    tokens = CHAT_TOKENS_PER_REPLY
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _BadRequest("Every message must be an object with a string `role`.")
        tokens += CHAT_TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            tokens += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise _BadRequest("Message content parts must be objects.")
                text = part.get("text")
                if isinstance(text, str):
                    tokens += len(text.split())
        elif content is not None:
            raise _BadRequest("Message `content` must be a string, a list of parts or null.")
    return tokens


# --------------------------------------------------------------------------------------------
# Generations


class _Generation:
    """One inference request's life in the simulated engine: waiting, running, streaming out."""

    __slots__ = (
        "chunk_count",
        "chunk_prefix",
        "chunked",
        "connection",
        "created",
        "done",
        "echo_request_id",
        "first_due",
        "keep_alive",
        "next_chunk",
        "params",
        "pending_head",
        "record",
        "response_id",
        "running",
        "server",
        "waiting",
    )

    def __init__(
        self,
        server: SimServer,
        connection: _HttpConnection,
        record: _RequestRecord,
        params: _GenerationParams,
        request: _IncomingRequest,
        response_id: str,
    ) -> None:
        """Prepare the response of an accepted request; nothing is sent yet."""
        self.server = server
        self.connection = connection
        self.record = record
        self.params = params
        self.response_id = response_id
        self.created = int(time.time())
        self.keep_alive = request.keep_alive
        self.chunked = not request.http_10
        self.echo_request_id = request.request_id
        self.pending_head: bytes | None = None
        per_chunk = server.config.tokens_per_chunk
        self.chunk_count = -(-params.output_tokens // per_chunk)
        self.next_chunk = 0
        self.first_due = 0.0
        self.running = False
        self.waiting = False
        self.done = False
        self.chunk_prefix = b""

    def _event_head(self, object_name: bytes) -> bytes:
        """Start of every SSE event of this response, up to the ``choices`` value."""
        return b'data: {"id":"%s","object":"%s","created":%d,"model":%s,"choices":' % (
            self.response_id.encode(),
            object_name,
            self.created,
            self.server.model_json,
        )

    def start(self, now: float) -> None:
        """Admission: prefill begins now, and the first token is due ``ttft_s`` later."""
        self.running = True
        self.record.admitted = now
        config = self.server.config
        self.first_due = now + config.ttft_s
        if self.params.stream:
            object_name = b"chat.completion.chunk" if self.params.chat else b"text_completion"
            self.chunk_prefix = self._event_head(object_name)
        due = self.first_due if self.params.stream else self._due(self.chunk_count - 1)
        if due <= now + _DUE_SLACK_S:
            self.on_due()
        else:
            self.server.timers.call_at(due, self.on_due)

    def _due(self, chunk_index: int) -> float:
        """When chunk ``chunk_index`` is scheduled to leave the server."""
        return self.first_due + chunk_index * self.server.config.itl_s

    def on_due(self) -> None:
        """Send whatever has fallen due; schedule the rest."""
        if self.done or self.server.closed:
            return
        now = time.perf_counter()
        if self.params.stream:
            self._send_stream_chunks(now)
        else:
            due = self._due(self.chunk_count - 1)
            if due > now + _DUE_SLACK_S:
                self.server.timers.call_at(due, self.on_due)
                return
            self._send_whole_body(now, due)

    def _send_stream_chunks(self, now: float) -> None:
        """Write every chunk due by ``now`` in one write, then schedule the next one."""
        first = self.next_chunk
        if self._due(first) > now + _DUE_SLACK_S:
            self.server.timers.call_at(self._due(first), self.on_due)
            return
        count = self.chunk_count
        itl = self.server.config.itl_s
        if itl == 0:
            last = count
        else:  # every chunk already due goes out now
            last = min(count, first + 1 + int((now + _DUE_SLACK_S - self._due(first)) / itl))
        body = self._stream_events(first, last)
        finished = last == count
        if self.chunked:
            data = _http_chunk(body) + _LAST_HTTP_CHUNK if finished else _http_chunk(body)
        else:
            data = body
        if self.pending_head is not None:
            data = self.pending_head + data
            self.pending_head = None
        record = self.record
        lag = now - self._due(first)
        if lag > record.max_lag:
            record.max_lag = lag
        if first == 0:
            record.first_token = now
        record.chunk_times.extend([now] * (last - first))
        self.connection.write(data)
        self.next_chunk = last
        if finished:
            record.tokens = self.params.output_tokens
            self._finish(200, now)
        else:
            self.server.timers.call_at(self._due(last), self.on_due)

    def _stream_events(self, first: int, last: int) -> bytes:
        """SSE events for chunks ``first`` to ``last - 1``, with role, usage and end as needed."""
        params = self.params
        prefix = self.chunk_prefix
        usage_prompt = params.prompt_tokens if params.continuous_usage else -1
        tails = self.server.event_tails(
            params.chat, params.output_tokens, params.finish_reason, first, last, usage_prompt
        )
        body = prefix + prefix.join(tails)
        if last == self.chunk_count:
            if params.include_usage:
                body += prefix + b"[]," + self._usage_json() + b"}\n\n"
            body += _STREAM_END
        return body

    def _usage_json(self) -> bytes:
        """``"usage":{...}`` of this response."""
        prompt = self.params.prompt_tokens
        completion = self.params.output_tokens
        return b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
            prompt,
            prompt + completion,
            completion,
        )

    def _send_whole_body(self, now: float, due: float) -> None:
        """Write a non-streaming response in one piece."""
        params = self.params
        text = b"".join(self.server.token_texts[: params.output_tokens])
        head = b'{"id":"%s","object":"%s","created":%d,"model":%s,"choices":' % (
            self.response_id.encode(),
            b"chat.completion" if params.chat else b"text_completion",
            self.created,
            self.server.model_json,
        )
        if params.chat:
            choice = (
                b'[{"index":0,"message":{"role":"assistant","content":"%s","tool_calls":[]},'
                % (text)
            )
        else:
            choice = b'[{"index":0,"text":"%s",' % text
        choice += b'"logprobs":null,"finish_reason":"%s","stop_reason":null}],' % (
            params.finish_reason
        )
        body = head + choice + self._usage_json() + b"}"
        response_head = _response_head(
            200, b"application/json", len(body), self.keep_alive, self.echo_request_id
        )
        record = self.record
        record.max_lag = max(0.0, now - due)
        record.first_token = now
        record.tokens = params.output_tokens
        self.connection.write(response_head + body)
        self._finish(200, now)

    def _finish(self, status: int, now: float) -> None:
        """Close the books on a completed response and free its engine slot."""
        self.done = True
        self.record.end = now
        self.record.status = status
        self.server.on_generation_finished(self)
        self.connection.end_response(self.keep_alive)

    def abandon(self, now: float) -> None:
        """The client went away: stop producing and free the slot."""
        if self.done:
            return
        self.done = True
        self.record.end = now
        self.record.status = CLIENT_CLOSED_STATUS
        self.server.on_generation_abandoned(self)


# --------------------------------------------------------------------------------------------
# Connections


class _HttpConnection(asyncio.Protocol):
    """One client connection: parses HTTP/1.1 with httptools and answers requests in order."""

    __slots__ = (
        "_body",
        "_busy",
        "_closed",
        "_data_time",
        "_generation",
        "_parser",
        "_pending",
        "_received",
        "_request_id",
        "_server",
        "_transport",
        "_url",
    )

    def __init__(self, server: SimServer) -> None:
        """A connection of ``server``; the transport arrives in connection_made."""
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._request_id: str | None = None
        self._data_time = 0.0
        self._received = 0.0
        self._pending: deque[_IncomingRequest] = deque()
        self._busy = False
        self._closed = False
        self._generation: _Generation | _RequestRecord | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection so a crash or close can end it."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Abandon whatever this connection was waiting for."""
        self._closed = True
        self._server.connections.discard(self)
        self._pending.clear()
        current = self._generation
        self._generation = None
        now = time.perf_counter()
        if isinstance(current, _Generation):
            current.abandon(now)
        elif isinstance(current, _RequestRecord) and current.status is None:
            current.end = now
            current.status = CLIENT_CLOSED_STATUS

    def data_received(self, data: bytes) -> None:
        """Parse (stamping when each request's first byte arrived), then answer complete ones."""
        self._data_time = time.perf_counter()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject_malformed(b"Upgrades are not supported.")
            return
        except httptools.HttpParserError as error:
            self._reject_malformed(str(error).encode("utf-8", "replace"))
            return
        if self._pending and not self._busy:
            self._answer_pending()

    # httptools callbacks

    def on_message_begin(self) -> None:
        """A new request starts: its first byte came with the data being parsed."""
        self._received = self._data_time
        self._url = b""
        self._body = []
        self._request_id = None

    def on_url(self, url: bytes) -> None:
        """Collect the request target (it may arrive in pieces)."""
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep ``x-request-id``; answer ``Expect: 100-continue``."""
        if len(name) == 12 and name.lower() == b"x-request-id":
            self._request_id = value.decode("latin-1")
        elif len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        """Collect the request body."""
        self._body.append(body)

    def on_message_complete(self) -> None:
        """Queue the finished request; it is answered after parsing returns."""
        parser = self._parser
        self._pending.append(
            _IncomingRequest(
                parser.get_method(),
                self._url.split(b"?", 1)[0],
                b"".join(self._body),
                self._request_id,
                parser.should_keep_alive(),
                parser.get_http_version() == "1.0",
                self._received,
            )
        )

    # answering

    def _answer_pending(self) -> None:
        """Answer queued requests in order until one needs time (a generation) to finish."""
        server = self._server
        while self._pending and not self._busy and not self._closed:
            request = self._pending.popleft()
            try:
                server.dispatch(self, request)
            except Exception:
                traceback.print_exc()
                self._busy = False
                body = _error_body("internal simulator error", 500, "InternalServerError")
                self.send_response(500, b"application/json", body, False, request.request_id)

    def write(self, data: bytes) -> None:
        """Hand bytes to the socket unless the connection is gone or going."""
        transport = self._transport
        if transport is not None and not self._closed and not transport.is_closing():
            transport.write(data)

    def send_response(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        keep_alive: bool,
        request_id: str | None,
    ) -> None:
        """Write a complete response with a known length."""
        head = _response_head(status, content_type, len(body), keep_alive, request_id)
        self.write(head + body)
        if not keep_alive:
            self.close()

    def hold(self, generation: _Generation | _RequestRecord) -> None:
        """Answer nothing else on this connection until ``generation`` ends (or forever)."""
        self._busy = True
        self._generation = generation

    def end_response(self, keep_alive: bool) -> None:
        """The held response finished: close, or go on with pipelined requests."""
        self._busy = False
        self._generation = None
        if not keep_alive:
            self.close()
        elif self._pending:
            self._answer_pending()

    def _reject_malformed(self, reason: bytes) -> None:
        """Answer unparseable bytes with 400 and hang up, like an HTTP server would."""
        body = _error_body(reason.decode("utf-8", "replace"), 400, "BadRequestError")
        self.send_response(400, b"application/json", body, False, None)

    def close(self) -> None:
        """Close after the buffered bytes are sent."""
        if self._transport is not None and not self._closed:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, losing buffered bytes (a crash)."""
        if self._transport is not None:
            self._transport.abort()

    def write_buffer_size(self) -> int:
        """Bytes still waiting in the transport."""
        if self._transport is None or self._closed:
            return 0
        return self._transport.get_write_buffer_size()


# --------------------------------------------------------------------------------------------
# Server


class SimServer:
    """The simulated inference server on the running event loop (see the module docstring)."""

    def __init__(self, config: SimConfig | None = None, *, exit_process_on_crash: bool = False):
        """Prepare a server; ``exit_process_on_crash`` makes ``crash_after`` kill the process."""
        self.config = config or SimConfig()
        self.exit_process_on_crash = exit_process_on_crash
        self.model_json = json.dumps(self.config.model).encode()
        self.token_texts = [b" tok%d" % index for index in range(self.config.output_tokens)]
        self.connections: set[_HttpConnection] = set()
        self.timers: _TimerfdTimers | _LoopTimers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Server | None = None
        self._closed_event: asyncio.Event | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._records: list[_RequestRecord] = []
        self._random = random.Random(self.config.seed)
        self._ids = itertools.count(1)
        self._waiting: deque[_Generation] = deque()
        self._waiting_count = 0
        self._running_count = 0
        self._kv_reserved = 0
        self._admitting = False
        self._served = 0
        self._crashed = False
        self.closed = False
        self._status_counts: dict[int, int] = {}
        self._finish_counts: dict[bytes, int] = {}
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._routes: dict[tuple[bytes, bytes], Callable[[_HttpConnection, _IncomingRequest], None]]
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
        self.timers = _make_timers(loop)
        self._listener = await loop.create_server(
            lambda: _HttpConnection(self), host, port, backlog=4096, reuse_address=True
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

    def _shut_down(self, graceful_connection: _HttpConnection | None) -> None:
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
            return _CONTINUOUS_USAGE % (usage_prompt, usage_prompt + completion, completion)

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

    def dispatch(self, connection: _HttpConnection, request: _IncomingRequest) -> None:
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

    def _send_json(self, connection: _HttpConnection, request: _IncomingRequest, data: Any) -> None:
        """Answer 200 with ``data`` as JSON."""
        connection.send_response(
            200, b"application/json", json.dumps(data).encode(), request.keep_alive, None
        )

    def _health(self, connection: _HttpConnection, request: _IncomingRequest) -> None:
        """``GET /health``: 200 with an empty body, like vLLM."""
        connection.send_response(200, b"application/json", b"", request.keep_alive, None)

    def _version(self, connection: _HttpConnection, request: _IncomingRequest) -> None:
        """``GET /version``: says this is the simulator."""
        self._send_json(connection, request, {"version": "simulator", "engine": ENGINE_NAME})

    def _models(self, connection: _HttpConnection, request: _IncomingRequest) -> None:
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

    def _sim_requests(self, connection: _HttpConnection, request: _IncomingRequest) -> None:
        """``GET /sim/requests``: the server-side records."""
        self._send_json(connection, request, self.records)

    def _sim_reset(self, connection: _HttpConnection, request: _IncomingRequest) -> None:
        """``POST /sim/reset``: forget the records."""
        self._records = []
        self._send_json(connection, request, {"reset": True})

    def _metrics(self, connection: _HttpConnection, request: _IncomingRequest) -> None:
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
            "Cumulative number of preemption from the engine (the simulator never preempts).",
            [("", 0)],
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

    def _completions(self, connection: _HttpConnection, request: _IncomingRequest) -> None:
        """``POST /v1/completions``."""
        self._generate(connection, request, chat=False)

    def _chat_completions(self, connection: _HttpConnection, request: _IncomingRequest) -> None:
        """``POST /v1/chat/completions``."""
        self._generate(connection, request, chat=True)

    def _generate(self, connection: _HttpConnection, request: _IncomingRequest, chat: bool) -> None:
        """Validate, record, then queue a generation (or fail it as configured)."""
        if self._crashed:
            return
        config = self.config
        response_number = next(self._ids)
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-sim{response_number:x}"
        request_id = request.request_id or response_id
        endpoint = INFERENCE_PATHS[1] if chat else INFERENCE_PATHS[0]
        record = _RequestRecord(request_id, endpoint, request.received)
        self._records.append(record)
        if config.crash_after is not None and self._served >= config.crash_after:
            self._crash(None)
            return
        try:
            try:
                payload = _decode_json(request.body.decode())
            except (ValueError, UnicodeDecodeError) as decode_error:
                raise _BadRequest(f"Invalid JSON body: {decode_error}") from None
            params = _GenerationParams(chat, payload, config)
        except _BadRequest as refusal:
            self._answer_error(connection, request, record, refusal)
            return
        record.stream = params.stream
        record.prompt_tokens = params.prompt_tokens
        if config.hang:
            connection.hold(record)
            return
        if config.error_rate and self._random.random() < config.error_rate:
            failure = _BadRequest(
                "Simulated engine failure (error_rate).", 500, "InternalServerError"
            )
            self._answer_error(connection, request, record, failure)
            return
        generation = _Generation(self, connection, record, params, request, response_id)
        connection.hold(generation)
        if params.stream:
            if not generation.chunked:  # HTTP/1.0: the end of the stream is the end of the body
                generation.keep_alive = False
            generation.pending_head = _response_head(
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
        connection: _HttpConnection,
        request: _IncomingRequest,
        record: _RequestRecord,
        error: _BadRequest,
    ) -> None:
        """Send an OpenAI-style error for an inference request and count it as served."""
        now = time.perf_counter()
        record.end = now
        record.status = error.status
        body = _error_body(str(error), error.status, error.error_type)
        connection.send_response(
            error.status, b"application/json", body, request.keep_alive, request.request_id
        )
        self._count_served(error.status, connection)

    # scheduling

    def _fits(self, generation: _Generation) -> bool:
        """Whether the engine has a sequence slot and KV room for ``generation`` now."""
        if self._running_count >= self.config.max_num_seqs:
            return False
        budget = self.config.kv_token_budget
        return (
            budget is None
            or self._running_count == 0
            or self._kv_reserved + generation.params.kv_tokens <= budget
        )

    def _submit(self, generation: _Generation) -> None:
        """Admit at once when nothing waits and it fits; otherwise join the FIFO queue."""
        if not self._waiting_count and self._fits(generation):
            self._admit(generation, time.perf_counter())
        else:
            generation.waiting = True
            self._waiting.append(generation)
            self._waiting_count += 1

    def _admit(self, generation: _Generation, now: float) -> None:
        """Reserve a slot and KV room, then start prefill."""
        self._running_count += 1
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

    def _release(self, generation: _Generation) -> None:
        """Give back a running generation's slot and KV room."""
        if generation.running:
            generation.running = False
            self._running_count -= 1
            self._kv_reserved -= generation.params.kv_tokens
        elif generation.waiting:
            generation.waiting = False
            self._waiting_count -= 1

    def on_generation_finished(self, generation: _Generation) -> None:
        """Book-keeping after a generation sent its last byte."""
        params = generation.params
        self._release(generation)
        self._prompt_tokens_total += params.prompt_tokens
        self._generation_tokens_total += params.output_tokens
        reason = params.finish_reason
        self._finish_counts[reason] = self._finish_counts.get(reason, 0) + 1
        if self._count_served(200, generation.connection):
            return
        if self._waiting_count:
            self._admit_waiting()

    def on_generation_abandoned(self, generation: _Generation) -> None:
        """A client left: free its slot and let the queue move."""
        self._release(generation)
        if self._waiting_count and not self._crashed:
            self._admit_waiting()

    def _count_served(self, status: int, connection: _HttpConnection) -> bool:
        """Count an answered inference request; returns True when that triggered the crash."""
        self._status_counts[status] = self._status_counts.get(status, 0) + 1
        self._served += 1
        crash_after = self.config.crash_after
        if crash_after is not None and self._served >= crash_after:
            self._crash(connection)
            return True
        return False

    def _crash(self, last_connection: _HttpConnection | None) -> None:
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

    def _exit_when_flushed(self, connection: _HttpConnection | None, deadline: float) -> None:
        """``os._exit`` once the last response left the process (or after a short deadline)."""
        if connection is None or connection.write_buffer_size() == 0:
            os._exit(CRASH_EXIT_CODE)
        if time.perf_counter() > deadline:
            os._exit(CRASH_EXIT_CODE)
        assert self._loop is not None
        self._loop.call_later(0.001, self._exit_when_flushed, connection, deadline)


# --------------------------------------------------------------------------------------------
# Running it


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@contextlib.contextmanager
def run_in_process(*cli_args: str, cpu: int | None = None) -> Iterator[str]:
    """Run the simulator CLI as its own process (optionally pinned to ``cpu``); yield its URL.

    ``cli_args`` are the command-line flags (``--ttft-ms 50 ...``). A process has its own GIL, so
    this is the mode for timing-grade work: benchmarks and accuracy tests.
    """
    import subprocess

    process = subprocess.Popen(
        [sys.executable, "-m", "pytest_gpuinfer.sim.server", "--port", "0", *cli_args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        prefix = LISTENING_LINE.split("{url}")[0]
        if not line.startswith(prefix):
            raise RuntimeError(f"the simulator did not start (exit {process.poll()}): {line!r}")
        if cpu is not None:
            os.sched_setaffinity(process.pid, {cpu})
        yield line[len(prefix) :].split()[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def run_in_thread(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Run a simulator on its own event loop in a background thread; yields its base URL.

    The thread shares the GIL with the caller, so a busy caller delays the simulator's sends;
    for benchmark-grade timing run it as a process (``python -m pytest_gpuinfer.sim.server``).
    """
    started = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        _reduce_timer_slack()
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        server = SimServer(config)
        try:
            loop.run_until_complete(server.start(host, port))
        except BaseException as error:
            state["error"] = error
            started.set()
            loop.close()
            return
        state["server"] = server
        state["loop"] = loop
        started.set()
        try:
            loop.run_until_complete(server.wait_closed())
            loop.run_until_complete(asyncio.sleep(0))  # let transports finish closing
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="gpuinfer-sim", daemon=True)
    thread.start()
    if not started.wait(timeout=30):
        raise RuntimeError("the simulator thread did not start within 30 s")
    if "error" in state:
        raise state["error"]
    server: SimServer = state["server"]
    loop: asyncio.AbstractEventLoop = state["loop"]
    try:
        yield server.base_url
    finally:
        with contextlib.suppress(RuntimeError):  # the loop is gone already after a crash
            loop.call_soon_threadsafe(lambda: loop.create_task(server.close()))
        thread.join(timeout=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; they mirror the fields of SimConfig."""
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m pytest_gpuinfer.sim.server",
        description="OpenAI-compatible inference server SIMULATOR (not a real engine).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ttft-ms", type=float, default=defaults.ttft_s * 1000)
    parser.add_argument("--itl-ms", type=float, default=defaults.itl_s * 1000)
    parser.add_argument("--tokens-per-chunk", type=int, default=defaults.tokens_per_chunk)
    parser.add_argument("--output-tokens", type=int, default=defaults.output_tokens)
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--kv-token-budget", type=int, default=defaults.kv_token_budget)
    parser.add_argument("--error-rate", type=float, default=defaults.error_rate)
    parser.add_argument("--crash-after", type=int, default=defaults.crash_after)
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--malformed-stream", action="store_true")
    parser.add_argument("--max-model-len", type=int, default=defaults.max_model_len)
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig described by parsed command-line options."""
    return SimConfig(
        ttft_s=args.ttft_ms / 1000,
        itl_s=args.itl_ms / 1000,
        tokens_per_chunk=args.tokens_per_chunk,
        output_tokens=args.output_tokens,
        max_num_seqs=args.max_num_seqs,
        kv_token_budget=args.kv_token_budget,
        error_rate=args.error_rate,
        crash_after=args.crash_after,
        hang=args.hang,
        malformed_stream=args.malformed_stream,
        max_model_len=args.max_model_len,
        model=args.model,
        seed=args.seed,
    )


async def _serve_until_signalled(config: SimConfig, host: str, port: int) -> None:
    """Serve as a process: announce the URL, stop cleanly on SIGTERM or SIGINT."""
    server = SimServer(config, exit_process_on_crash=True)
    await server.start(host, port)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    print(LISTENING_LINE.format(url=server.base_url), flush=True)
    waits = {
        asyncio.ensure_future(stop_requested.wait()),
        asyncio.ensure_future(server.wait_closed()),
    }
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pytest_gpuinfer.sim.server``."""
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"gpuinfer-sim: {error}", file=sys.stderr)
        return 2
    _reduce_timer_slack()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_serve_until_signalled(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
