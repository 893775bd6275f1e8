"""Async OpenAI-compatible streaming client that fills one ``RequestRecord`` per request.

It speaks HTTP/1.1 itself on asyncio protocols with ``httptools`` doing the response parsing,
because that measured several times leaner per request than aiohttp (see
``bench/bench_load_engine.py --stacks``): a measuring client must not spend the core it measures
with. Every timestamp is ``time.perf_counter()`` taken on entry to ``data_received``, the earliest
point Python sees the bytes, and all per-chunk work runs inside that callback: no task switch, no
queue per chunk.

Token counting per chunk (``RequestRecord.chunk_tokens``):

* When the server sends cumulative ``usage`` in every chunk (vLLM with
  ``stream_options: {"include_usage": true, "continuous_usage_stats": true}``, which is requested by
  default), a chunk's count is the growth of ``usage.completion_tokens`` since the previous text
  chunk; tokens that arrived in text-less chunks are carried into the next text chunk, so a count
  can exceed 1 and, rarely, be 0 (text released without a new token).
* Otherwise, when a ``tokenizer`` callable (text -> token count) is given, it counts each chunk's
  text (an approximation: fragments tokenize slightly differently from the whole).
* Otherwise, when the final ``usage`` reports more completion tokens than there were text chunks,
  that total is spread evenly over the chunks (right for engines that stream a fixed number of
  tokens per chunk, such as vLLM's ``--stream-interval``; an estimate otherwise).
* Otherwise each text chunk counts as one token.

``completion_tokens`` is the server's final ``usage`` when given, else the sum of the chunk counts.
When a server rejects ``stream_options`` (HTTP 400/422 naming it) the client retries once without
``continuous_usage_stats``, then without ``stream_options`` at all, and keeps the weaker setting for
later requests.

``/v1/embeddings`` requests (a spec whose prompt is a list of texts) are sent whole and read as
one JSON body; a response with fewer or more vectors than inputs fails the request (``server``).
A spec with ``keep_text`` keeps the generated text on its record (``response_text``) so a
conversation can carry it into its next turn; no other request keeps text.

Error classes in ``RequestRecord.error``: ``connect`` (no connection: refused, unreachable, connect
timeout), ``timeout`` (first-token or total timeout), ``http`` (status >= 400), ``stream`` (bytes
that are not a valid event stream or JSON, quoted in the message), ``server`` (the server reported
an error inside a 200 stream), ``disconnect`` (the connection closed before the response ended).

The API key only ever exists inside the pre-built request head; it is left out of ``repr`` and
replaced by ``***`` in every error message, even one echoed back by a server.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self, cast
from urllib.parse import urlsplit

import httptools
import orjson

from pytest_gpuinfer.metrics.records import RequestRecord

_json_loads: Callable[[bytes], Any] = orjson.loads

Endpoint = Literal["chat", "completions", "embeddings"]
ENDPOINT_PATHS: dict[str, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}
UsageMode = Literal["continuous", "final", "none"]
Tokenizer = Callable[[str], int]

ERROR_CONNECT = "connect"
ERROR_TIMEOUT = "timeout"
ERROR_HTTP = "http"
ERROR_STREAM = "stream"
ERROR_SERVER = "server"
ERROR_DISCONNECT = "disconnect"

_QUOTE_LIMIT = 120
_ERROR_BODY_LIMIT = 64 * 1024
_DRAIN_AFTER_DONE_S = 2.0
_TIMER_SLACK_S = 0.002
_USAGE_DOWNGRADE: dict[str, UsageMode] = {"continuous": "final", "final": "none"}
_STREAM_OPTIONS: dict[str, dict[str, bool]] = {
    "continuous": {"include_usage": True, "continuous_usage_stats": True},
    "final": {"include_usage": True},
}


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request time limits in seconds, each measured from when the request was sent."""

    connect_s: float = 10.0
    first_token_s: float = 120.0
    total_s: float = 600.0


class StreamFormatError(ValueError):
    """Raised by the SSE decoder for bytes that cannot be part of an event stream."""


class SSEDecoder:
    """Incremental Server-Sent Events decoder: feed it bytes, get back complete events."""

    __slots__ = ("_data", "_event", "_partial", "_skip_lf")

    def __init__(self) -> None:
        self._partial = b""
        self._data: bytes | None = None
        self._event = b""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """Decode the next bytes of the stream; return the ``(event, data)`` pairs completed."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 10:
                chunk = chunk[1:]
        buffer = self._partial + chunk if self._partial else chunk
        if b"\r" in buffer:
            self._skip_lf = buffer[-1] == 13
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._partial = lines.pop()
        events: list[tuple[bytes, bytes]] = []
        data = self._data
        for line in lines:  # the two common lines inline; everything else by the grammar
            if line[:6] == b"data: ":
                data = line[6:] if data is None else data + b"\n" + line[6:]
            elif not line:
                if data is not None:
                    events.append((self._event, data))
                    data = None
                self._event = b""
            else:
                self._data = data
                self._take_line(line, events)
                data = self._data
        self._data = data
        return events

    def finish(self) -> list[tuple[bytes, bytes]]:
        """End of stream: dispatch a last event whose blank line never came."""
        events: list[tuple[bytes, bytes]] = []
        if self._partial:
            self._take_line(self._partial, events)
            self._partial = b""
        self._take_line(b"", events)
        return events

    def _take_line(self, line: bytes, events: list[tuple[bytes, bytes]]) -> None:
        """Apply one line of the SSE grammar (field, comment or blank dispatch line)."""
        if not line:
            if self._data is not None:
                events.append((self._event, self._data))
                self._data = None
            self._event = b""
            return
        if line[0] == 58:  # ':' starts a comment (keep-alives)
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            self._data = value if self._data is None else self._data + b"\n" + value
        elif name == b"event":
            self._event = value
        elif name != b"id" and name != b"retry":
            raise StreamFormatError(f"not an event-stream line: {quote_bytes(line)}")


def quote_bytes(data: bytes, limit: int = _QUOTE_LIMIT, *, around: int | None = None) -> str:
    """Printable quotation of some bytes for an error message: the start, or near ``around``."""
    if len(data) <= limit:
        return repr(data)
    start = 0 if around is None else max(0, min(around - limit // 2, len(data) - limit))
    before = "..." if start else ""
    after = "..." if start + limit < len(data) else ""
    return f"{before}{data[start : start + limit]!r}{after} ({len(data)} bytes)"


def _json_error_text(data: bytes, error: ValueError) -> str:
    """Error message for bytes that are not JSON, quoting them around the failure."""
    position = error.pos if isinstance(error, json.JSONDecodeError) else None
    where = f" at byte {position}" if position is not None else ""
    return f"invalid JSON in stream{where}: {quote_bytes(data, around=position)}"


class RequestSpec:
    """What one request asks for: prompt (chat messages, or embedding inputs), output length,
    streaming, extras, and what the workload asked (input tokens, conversation and turn)."""

    __slots__ = (
        "_bodies",
        "extra_body",
        "input_tokens",
        "inputs",
        "keep_text",
        "max_tokens",
        "prompt",
        "session",
        "stream",
        "turn",
    )

    def __init__(
        self,
        prompt: str | Sequence[dict[str, Any]] | Sequence[str],
        max_tokens: int = 64,
        *,
        stream: bool = True,
        extra_body: dict[str, Any] | None = None,
        input_tokens: int | None = None,
        session: int | None = None,
        turn: int | None = None,
        keep_text: bool = False,
    ) -> None:
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.stream = stream
        self.extra_body = extra_body
        self.input_tokens = input_tokens
        self.session = session
        self.turn = turn
        self.keep_text = keep_text
        self.inputs: int | None = (
            len(prompt)
            if prompt and not isinstance(prompt, str) and isinstance(prompt[0], str)
            else None
        )
        """Embedding inputs this request carries (None unless the prompt is a list of texts)."""
        self._bodies: dict[tuple[str, str, str], bytes] = {}

    def body(self, endpoint: Endpoint, model: str, usage_mode: UsageMode) -> bytes:
        """The JSON request body (serialised once per endpoint, model and usage mode)."""
        key = (endpoint, model, usage_mode)
        cached = self._bodies.get(key)
        if cached is not None:
            return cached
        payload: dict[str, Any] = {"model": model}
        prompt = self.prompt
        if endpoint == "embeddings":
            payload["input"] = prompt if isinstance(prompt, str) else list(prompt)
        else:
            if endpoint == "chat":
                payload["messages"] = (
                    [{"role": "user", "content": prompt}]
                    if isinstance(prompt, str)
                    else list(prompt)
                )
            else:
                if not isinstance(prompt, str):
                    raise TypeError("the completions endpoint takes a string prompt")
                payload["prompt"] = prompt
            payload["max_tokens"] = self.max_tokens
            payload["stream"] = self.stream
            if self.stream and usage_mode in _STREAM_OPTIONS:
                payload["stream_options"] = dict(_STREAM_OPTIONS[usage_mode])
        if self.extra_body:
            payload.update(self.extra_body)
        body = orjson.dumps(payload)
        self._bodies[key] = body
        return body

    def __repr__(self) -> str:
        return f"RequestSpec(max_tokens={self.max_tokens}, stream={self.stream})"


class _ConnectFailed(Exception):
    """A connection could not be opened; the message says why."""


class _Exchange:
    """State of one request/response on a connection, updated from protocol callbacks."""

    __slots__ = (
        "body_parts",
        "body_size",
        "client",
        "connection",
        "events_seen",
        "expected_inputs",
        "finished",
        "future",
        "is_event_stream",
        "now",
        "pieces",
        "preview",
        "record",
        "retry_stale",
        "retry_usage",
        "reused",
        "saw_done",
        "split_final_usage",
        "sse",
        "status",
        "stream",
        "text_tokens_seen",
        "timer",
        "usage_completion",
        "usage_prompt",
    )

    def __init__(
        self, client: InferenceClient, record: RequestRecord, future: asyncio.Future[None]
    ) -> None:
        self.client = client
        self.connection: _HTTPConnection | None = None
        self.record = record
        self.future = future
        self.stream = True
        self.sse = SSEDecoder()
        self.status = 0
        self.is_event_stream = True
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.finished = False
        self.now = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.saw_done = False
        self.split_final_usage = client.tokenizer is None
        self.events_seen = 0
        self.preview = b""
        self.text_tokens_seen = 0
        self.usage_completion: int | None = None
        self.usage_prompt: int | None = None
        self.expected_inputs: int | None = None
        self.pieces: list[str] | None = None
        """The generated text's pieces, collected only when the request asks to keep it."""
        self.reused = False
        self.retry_stale = False
        self.retry_usage = False

    def resolve(self, error: str | None, message: str | None, end: float) -> None:
        """Settle the exchange once: write the outcome into the record and wake the sender."""
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        record = self.record
        if record.end is None or error is not None:
            record.end = end
        if error is not None:
            record.error = error
            record.error_message = self.client.redact(message or "")
        if record.prompt_tokens is None:
            record.prompt_tokens = self.usage_prompt
        if self.pieces:
            record.response_text = "".join(self.pieces)
        if self.usage_completion is not None:
            record.completion_tokens = self.usage_completion
            if self.split_final_usage and error is None:
                _spread_tokens(record.chunk_tokens, self.usage_completion)
        elif record.chunk_tokens:
            record.completion_tokens = sum(record.chunk_tokens)
        if not self.future.done():
            self.future.set_result(None)

    def handle_event(self, event: bytes, data: bytes) -> bool:
        """Apply one SSE event; return False when it ended the exchange with an error."""
        if data == b"[DONE]":
            self.saw_done = True
            self.record.end = self.now
            return True
        if event == b"error":
            self.resolve(ERROR_SERVER, f"error event in stream: {quote_bytes(data)}", self.now)
            return False
        try:
            obj = _json_loads(data)
        except ValueError as exc:
            self.resolve(ERROR_STREAM, _json_error_text(data, exc), self.now)
            return False
        if not isinstance(obj, dict):
            self.resolve(
                ERROR_STREAM, f"stream event is not an object: {quote_bytes(data)}", self.now
            )
            return False
        if obj.get("error"):
            self.resolve(ERROR_SERVER, f"error in stream: {quote_bytes(data)}", self.now)
            return False
        try:
            self._take_chunk(obj)
        except (AttributeError, TypeError, IndexError, KeyError, ValueError):
            self.resolve(ERROR_STREAM, f"unexpected chunk shape: {quote_bytes(data)}", self.now)
            return False
        return True

    def _take_chunk(self, obj: dict[str, Any]) -> None:
        """Record one decoded streaming chunk: text, token counts, usage and finish reason."""
        usage = obj.get("usage")
        cumulative: int | None = None
        if usage:
            cumulative = usage.get("completion_tokens")
            prompt = usage.get("prompt_tokens")
            if prompt is not None:
                self.usage_prompt = int(prompt)
        text = ""
        choices = obj.get("choices")
        if choices:
            record = self.record
            for choice in choices:
                delta = choice.get("delta")
                if delta is not None:
                    piece = delta.get("content") or delta.get("reasoning_content") or ""
                else:
                    piece = choice.get("text") or ""
                if piece:
                    text = piece if not text else text + piece
                reason = choice.get("finish_reason")
                if reason:
                    record.finish_reason = reason
        if cumulative is not None:
            self.usage_completion = int(cumulative)
        if text:
            record = self.record
            if cumulative is not None:
                tokens = int(cumulative) - self.text_tokens_seen
                self.text_tokens_seen = int(cumulative)
                self.split_final_usage = False
            elif self.client.tokenizer is not None:
                tokens = self.client.tokenizer(text)
            else:
                tokens = 1
            if record.first_token is None:
                record.first_token = self.now
            record.chunk_times.append(self.now)
            record.chunk_tokens.append(tokens)
            if self.pieces is not None:
                self.pieces.append(text)

    def take_json_body(self, body: bytes) -> None:
        """Record a whole (non-streamed) JSON response as one chunk at its arrival time."""
        try:
            obj = _json_loads(body)
        except ValueError as exc:
            self.resolve(ERROR_STREAM, _json_error_text(body, exc), self.now)
            return
        if not isinstance(obj, dict):
            self.resolve(ERROR_STREAM, f"response is not an object: {quote_bytes(body)}", self.now)
            return
        if obj.get("error"):
            self.resolve(ERROR_SERVER, f"error in response: {quote_bytes(body)}", self.now)
            return
        try:
            usage = obj.get("usage") or {}
            if usage.get("prompt_tokens") is not None:
                self.usage_prompt = int(usage["prompt_tokens"])
            if usage.get("completion_tokens") is not None:
                self.usage_completion = int(usage["completion_tokens"])
            text = ""
            record = self.record
            if self.expected_inputs is not None:
                self._take_embeddings(obj.get("data"))
                return
            for choice in obj.get("choices") or ():
                message = choice.get("message")
                piece = (message.get("content") or "") if message else (choice.get("text") or "")
                text += piece
                if choice.get("finish_reason"):
                    record.finish_reason = choice["finish_reason"]
        except (AttributeError, TypeError, ValueError, KeyError):
            self.resolve(ERROR_STREAM, f"unexpected response shape: {quote_bytes(body)}", self.now)
            return
        if text:
            if self.usage_completion is not None:
                tokens = self.usage_completion
            elif self.client.tokenizer is not None:
                tokens = self.client.tokenizer(text)
            else:
                tokens = 1
            record.first_token = self.now
            record.chunk_times.append(self.now)
            record.chunk_tokens.append(tokens)
            if self.pieces is not None:
                self.pieces.append(text)

    def _take_embeddings(self, data: Any) -> None:
        """Record an embeddings answer: one vector per input asked, arriving all at once."""
        asked = self.expected_inputs
        got = len(data) if isinstance(data, list) else None
        if got != asked:
            self.resolve(
                ERROR_SERVER,
                f"asked for {asked} embeddings, the response carries "
                f"{'no data list' if got is None else got}",
                self.now,
            )
            return
        record = self.record
        record.first_token = self.now
        record.chunk_times.append(self.now)
        record.chunk_tokens.append(0)
        self.usage_completion = 0

    def on_timer(self) -> None:
        """Timer callback: enforce the first-token and total timeouts."""
        self.timer = None
        if self.finished:
            return
        record = self.record
        timeouts = self.client.timeouts
        now = time.perf_counter()
        elapsed = now - (record.sent or now)
        if (
            self.stream
            and record.first_token is None
            and elapsed >= timeouts.first_token_s - (_TIMER_SLACK_S)
        ):
            message = (
                f"no generated text within the first-token timeout of {timeouts.first_token_s} s"
            )
        elif elapsed >= timeouts.total_s - _TIMER_SLACK_S:
            message = f"response not complete within the total timeout of {timeouts.total_s} s"
        else:
            loop = self.client.loop
            self.timer = loop.call_later(timeouts.total_s - elapsed, self.on_timer)
            return
        self.resolve(ERROR_TIMEOUT, message, now)
        connection = self.connection
        if connection is not None and connection.exchange is self:
            connection.exchange = None
            connection.close()


class _HTTPConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; parses responses and feeds the current exchange."""

    def __init__(self, client: InferenceClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.idle = False
        self.drain_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self, exchange: _Exchange, head_and_body: bytes) -> None:
        """Send a request on this connection and make ``exchange`` the one receiving bytes."""
        self.exchange = exchange
        exchange.connection = self
        self.idle = False
        assert self.transport is not None
        # Stamped before the write: on loopback the kernel delivers (and may run the server)
        # inside the write call, so a stamp after it can land after the server has the request.
        exchange.record.sent = time.perf_counter()
        if self.transport.is_closing():
            # The peer closed it and connection_lost is still on its way (a server dying between
            # requests): the same disconnect connection_lost reports, retried once if reused.
            self.connection_lost(None)
            return
        self.transport.write(head_and_body)
        timeouts = self.client.timeouts
        first = timeouts.first_token_s if exchange.stream else timeouts.total_s
        exchange.timer = self.client.loop.call_later(
            min(first, timeouts.total_s), exchange.on_timer
        )

    def data_received(self, data: bytes) -> None:
        """Stamp the arrival time and let the parser call back into the exchange."""
        now = time.perf_counter()
        exchange = self.exchange
        if exchange is None:
            self.close()
            return
        exchange.now = now
        if exchange.record.first_byte is None:
            exchange.record.first_byte = now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._fail(ERROR_STREAM, f"could not handle response data: {exc.__cause__!r}")
        except httptools.HttpParserError as exc:
            self._fail(ERROR_STREAM, f"invalid HTTP response ({exc}): {quote_bytes(data)}")
        else:
            current = self.exchange
            if current is not None and current.saw_done and self.drain_timer is None:
                self.drain_timer = self.client.loop.call_later(
                    _DRAIN_AFTER_DONE_S, self._drain_expired
                )

    def _drain_expired(self) -> None:
        """``[DONE]`` came but the HTTP message never ended: settle and drop the connection."""
        self.drain_timer = None
        exchange = self.exchange
        if exchange is not None:
            exchange.resolve(None, None, exchange.record.end or time.perf_counter())
            self.exchange = None
        self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        """Note the content type of the response."""
        exchange = self.exchange
        if exchange is not None and name.lower() == b"content-type":
            exchange.is_event_stream = value.lower().startswith(b"text/event-stream")

    def on_headers_complete(self) -> None:
        """Record the status code."""
        exchange = self.exchange
        if exchange is None:
            return
        exchange.status = self.parser.get_status_code()
        exchange.record.status = exchange.status

    def on_body(self, body: bytes) -> None:
        """Feed body bytes to the SSE decoder, or keep them for a JSON or error body."""
        exchange = self.exchange
        if exchange is None or exchange.finished:
            return
        if exchange.status >= 400 or not (exchange.stream and exchange.is_event_stream):
            if exchange.body_size < _ERROR_BODY_LIMIT or exchange.status < 400:
                exchange.body_parts.append(body)
                exchange.body_size += len(body)
            return
        if len(exchange.preview) < _QUOTE_LIMIT:
            exchange.preview += body[:_QUOTE_LIMIT]
        try:
            events = exchange.sse.feed(body)
        except StreamFormatError as exc:
            self._fail(ERROR_STREAM, str(exc))
            return
        exchange.events_seen += len(events)
        for event, data in events:
            if not exchange.handle_event(event, data):
                self._drop_after_failure()
                return

    def on_message_complete(self) -> None:
        """The response ended: settle the exchange and hand the connection back for reuse."""
        exchange = self.exchange
        if exchange is None:
            return
        if not exchange.finished:
            self._complete(exchange)
        self.exchange = None
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None
        if exchange.record.error in (None, ERROR_HTTP) and self.parser.should_keep_alive():
            self.client.release(self)
        else:
            self.close()

    def _complete(self, exchange: _Exchange) -> None:
        """Settle an exchange whose response arrived in full."""
        now = exchange.now
        body = b"".join(exchange.body_parts)
        if exchange.status >= 400:
            text = body[:300].decode("utf-8", "replace")
            if exchange.client.should_downgrade_usage(exchange, text):
                exchange.retry_usage = True
            exchange.resolve(ERROR_HTTP, f"HTTP {exchange.status}: {text}", now)
            return
        if exchange.stream and exchange.is_event_stream:
            try:
                events = exchange.sse.finish()
            except StreamFormatError as exc:
                exchange.resolve(ERROR_STREAM, str(exc), now)
                return
            exchange.events_seen += len(events)
            for event, data in events:
                if not exchange.handle_event(event, data):
                    return
            if exchange.events_seen == 0:
                exchange.resolve(
                    ERROR_STREAM,
                    f"stream ended without any event: {quote_bytes(exchange.preview)}",
                    now,
                )
                return
        else:
            exchange.take_json_body(body)
        exchange.resolve(None, None, exchange.record.end or now)

    def _fail(self, error: str, message: str) -> None:
        """End the current exchange with an error and drop the connection."""
        exchange = self.exchange
        if exchange is not None:
            exchange.resolve(error, message, exchange.now or time.perf_counter())
        self._drop_after_failure()

    def _drop_after_failure(self) -> None:
        """Detach the failed exchange; the connection is mid-message, so close it."""
        self.exchange = None
        self.close()

    def close(self) -> None:
        """Close the connection and forget it in the pool."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.client.forget(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """The peer closed or the socket broke: fail an unfinished exchange as a disconnect."""
        exchange = self.exchange
        self.exchange = None
        if exchange is not None and not exchange.finished:
            now = time.perf_counter()
            if exchange.saw_done:
                exchange.resolve(None, None, exchange.record.end or now)
            elif exchange.record.first_byte is None:
                exchange.retry_stale = exchange.reused
                exchange.resolve(
                    ERROR_DISCONNECT, "server closed the connection before responding", now
                )
            else:
                exchange.resolve(
                    ERROR_DISCONNECT, "server closed the connection before the response ended", now
                )
        if not self.closed:
            self.closed = True
            self.client.forget(self)


def _spread_tokens(chunk_tokens: list[int], total: int) -> None:
    """Spread a final usage count evenly over chunks counted as one token each."""
    chunks = len(chunk_tokens)
    if chunks == 0 or total <= chunks:
        return
    base, extra = divmod(total, chunks)
    for position in range(chunks):
        chunk_tokens[position] = base + (1 if position >= chunks - extra else 0)


def _reset_for_retry(record: RequestRecord) -> None:
    """Clear what a failed attempt wrote, keeping identity and the scheduled time."""
    record.sent = record.first_byte = record.first_token = record.end = None
    record.chunk_times.clear()
    record.chunk_tokens.clear()
    record.status = record.error = record.error_message = None
    record.prompt_tokens = record.completion_tokens = record.finish_reason = None


class InferenceClient:
    """Async client for ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``
    with a keep-alive pool."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        endpoint: Endpoint = "chat",
        timeouts: Timeouts | None = None,
        max_connections: int | None = None,
        usage_mode: UsageMode = "continuous",
        tokenizer: Tokenizer | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if endpoint not in ENDPOINT_PATHS:
            raise ValueError(
                f"endpoint must be one of {', '.join(ENDPOINT_PATHS)}, not {endpoint!r}"
            )
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
        self.model = model
        self.endpoint: Endpoint = endpoint
        self.timeouts = timeouts or Timeouts()
        self.max_connections = max_connections
        self.usage_mode: UsageMode = usage_mode
        self.tokenizer = tokenizer
        self._secret = api_key or None
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        prefix = parts.path.rstrip("/")
        if not prefix.endswith("/v1"):
            prefix += "/v1"
        self.path = prefix + ENDPOINT_PATHS[endpoint]
        host_header = parts.netloc.rsplit("@", 1)[-1]
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {host_header}",
            "User-Agent: pytest-gpuinfer",
            "Content-Type: application/json",
        ]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if api_key:
            lines.append(f"Authorization: Bearer {api_key}")
        self._head_stream = ("\r\n".join([*lines, "Accept: text/event-stream"]) + "\r\n").encode()
        self._head_plain = ("\r\n".join([*lines, "Accept: application/json"]) + "\r\n").encode()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self._tls else None
        self._idle: list[_HTTPConnection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[_HTTPConnection | None]] = deque()
        self._active: set[_HTTPConnection] = set()
        self.connections_opened = 0
        self._next_id = 0

    def __repr__(self) -> str:
        key = ", api_key=***" if self._secret else ""
        return f"InferenceClient({self.base_url!r}, model={self.model!r}{key})"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this client's connections live on."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def redact(self, text: str) -> str:
        """Replace the API key wherever it occurs in ``text``."""
        return text.replace(self._secret, "***") if self._secret else text

    async def request(
        self,
        prompt: str | Sequence[dict[str, Any]],
        *,
        max_tokens: int = 64,
        stream: bool = True,
        extra_body: dict[str, Any] | None = None,
        index: int = 0,
        request_id: str | None = None,
    ) -> RequestRecord:
        """Send one request now and return its record."""
        record = RequestRecord(index=index, scheduled=time.perf_counter())
        spec = RequestSpec(prompt, max_tokens, stream=stream, extra_body=extra_body)
        return await self.send(spec, record, request_id=request_id)

    async def send(
        self, spec: RequestSpec, record: RequestRecord, *, request_id: str | None = None
    ) -> RequestRecord:
        """Send ``spec`` and fill ``record`` (whose ``scheduled`` time the caller set)."""
        if request_id is None:
            self._next_id += 1
            request_id = f"gpuinfer-{id(self):x}-{self._next_id}"
        if "\r" in request_id or "\n" in request_id:
            raise ValueError("request_id must not contain line breaks")
        record.request_id = request_id
        for _attempt in range(3):
            exchange = await self._attempt(spec, record, request_id)
            if exchange is None:
                return record
            if exchange.retry_stale and _attempt == 0:
                _reset_for_retry(record)
                continue
            if exchange.retry_usage:
                _reset_for_retry(record)
                continue
            return record
        return record

    async def _attempt(
        self, spec: RequestSpec, record: RequestRecord, request_id: str
    ) -> _Exchange | None:
        """One try at sending ``spec``; None when no connection could be had."""
        loop = self.loop
        try:
            connection, reused = await self._acquire()
        except _ConnectFailed as exc:
            record.error = ERROR_CONNECT
            record.error_message = self.redact(str(exc))
            record.end = time.perf_counter()
            return None
        future: asyncio.Future[None] = loop.create_future()
        exchange = _Exchange(self, record, future)
        exchange.stream = spec.stream
        if spec.keep_text:
            exchange.pieces = []
        exchange.expected_inputs = spec.inputs
        exchange.reused = reused
        body = spec.body(self.endpoint, self.model, self.usage_mode)
        head = self._head_stream if spec.stream else self._head_plain
        message = b"%sx-request-id: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            head,
            request_id.encode(),
            len(body),
            body,
        )
        self._active.add(connection)
        try:
            connection.start(exchange, message)
            await future
        finally:
            self._active.discard(connection)
            if not exchange.finished:  # cancelled by the caller
                exchange.resolve(ERROR_TIMEOUT, "request cancelled", time.perf_counter())
                connection.close()
        return exchange

    def should_downgrade_usage(self, exchange: _Exchange, body_text: str) -> bool:
        """After a 400/422 that names ``stream_options``, fall back to a weaker usage request."""
        if exchange.status not in (400, 422) or not exchange.stream:
            return False
        lowered = body_text.lower()
        if "stream_options" not in lowered and "continuous_usage" not in lowered:
            return False
        weaker = _USAGE_DOWNGRADE.get(self.usage_mode)
        if weaker is None:
            return False
        self.usage_mode = weaker
        return True

    async def _acquire(self) -> tuple[_HTTPConnection, bool]:
        """An idle keep-alive connection, or a new one, waiting when the pool is full."""
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None and connection.transport.is_closing():
                connection.close()  # closed by the peer; connection_lost not delivered yet
            elif not connection.closed:
                connection.idle = False
                return connection, True
        if self.max_connections is not None and self._open >= self.max_connections:
            waiter: asyncio.Future[_HTTPConnection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._hand_back(waiter.result())
                raise
            if handed is not None:
                return handed, True
            return await self._connect(), False  # a slot was reserved for this waiter
        self._open += 1
        return await self._connect(), False

    def _hand_back(self, handed: _HTTPConnection | None) -> None:
        """Give back what a cancelled waiter was handed: a connection or a reserved slot."""
        if handed is None:
            self._open_slot_freed()
        else:
            self.release(handed)

    async def _connect(self) -> _HTTPConnection:
        """Open a new connection (its slot already counted) within the connect timeout."""
        loop = self.loop
        try:
            _transport, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _HTTPConnection(self),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                ),
                self.timeouts.connect_s,
            )
        except TimeoutError:
            self._open_slot_freed()
            raise _ConnectFailed(
                f"could not connect to {self._host}:{self._port} within {self.timeouts.connect_s} s"
            ) from None
        except OSError as exc:
            self._open_slot_freed()
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise _ConnectFailed(
                f"could not connect to {self._host}:{self._port}: {reason}"
            ) from None
        except BaseException:  # cancelled: give the slot back before going
            self._open_slot_freed()
            raise
        self.connections_opened += 1
        return connection

    def _open_slot_freed(self) -> None:
        """A connection went away: pass its slot to one waiter, which then connects."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    def release(self, connection: _HTTPConnection) -> None:
        """Return a connection whose response ended cleanly, handing it to a waiter if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle = True
        self._idle.append(connection)

    def forget(self, connection: _HTTPConnection) -> None:
        """Drop a closed connection from the pool's books."""
        if connection.idle:
            connection.idle = False
            with contextlib.suppress(ValueError):
                self._idle.remove(connection)
        self._open_slot_freed()

    async def open_connections(self, count: int) -> int:
        """Open idle connections ahead of a run until ``count`` are open; return how many are."""
        missing = count - self._open
        if self.max_connections is not None:
            missing = min(missing, self.max_connections - self._open)
        if missing > 0:
            self._open += missing
            opened = await asyncio.gather(
                *(self._connect() for _ in range(missing)), return_exceptions=True
            )
            for connection in opened:
                if isinstance(connection, _HTTPConnection):
                    self.release(connection)
        return self._open

    @property
    def in_flight(self) -> int:
        """Requests currently waiting for their response."""
        return len(self._active)

    def unread_bytes(self, sample: int = 8) -> list[int]:
        """Bytes waiting unread in the kernel on up to ``sample`` busy connections (Linux)."""
        found: list[int] = []
        if sys.platform == "win32":
            return found
        import fcntl
        import termios

        for connection in self._active:
            if len(found) >= sample:
                break
            transport = connection.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None:
                continue
            try:
                pending = array.array("i", [0])
                fcntl.ioctl(sock.fileno(), termios.FIONREAD, pending, True)
            except (OSError, ValueError):
                continue
            found.append(pending[0])
        return found

    async def aclose(self) -> None:
        """Close every connection."""
        for connection in [*self._idle, *self._active]:
            connection.close()
        self._idle.clear()
        await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
