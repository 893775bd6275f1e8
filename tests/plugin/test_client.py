"""Tests of the streaming client: SSE decoding from byte fixtures and requests to canned servers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_gpuinfer.load.client import (
    InferenceClient,
    RequestSpec,
    SSEDecoder,
    StreamFormatError,
    Timeouts,
)
from pytest_gpuinfer.metrics.records import RequestRecord

# --- SSE decoding -----------------------------------------------------------------------------

VLLM_STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    b"event: error\ndata: first line\ndata: second line\n\n"
    b"id: 7\nretry: 100\ndata:no-space\n\n"
    b"data: [DONE]\n\n"
)
VLLM_EVENTS = [
    (b"", b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'),
    (b"", b'{"choices":[{"index":0,"delta":{"content":"Hel"}}]}'),
    (b"", b'{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]}'),
    (b"", b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}'),
    (b"error", b"first line\nsecond line"),
    (b"", b"no-space"),
    (b"", b"[DONE]"),
]


def decode_in_pieces(stream: bytes, cuts: list[int]) -> list[tuple[bytes, bytes]]:
    """Feed ``stream`` to a fresh decoder cut at the given offsets; return every event."""
    decoder = SSEDecoder()
    events: list[tuple[bytes, bytes]] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        events.extend(decoder.feed(stream[start:cut]))
        start = cut
    events.extend(decoder.finish())
    return events


def test_sse_decoder_reads_a_whole_stream() -> None:
    """Events, comments, multi-line data, other fields and [DONE] in one read."""
    assert decode_in_pieces(VLLM_STREAM, []) == VLLM_EVENTS


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_sse_decoder_accepts_other_line_endings(ending: bytes) -> None:
    """CRLF and lone CR line endings decode like LF."""
    stream = VLLM_STREAM.replace(b"\n", ending)
    assert decode_in_pieces(stream, []) == VLLM_EVENTS


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_sse_decoder_split_at_every_offset(ending: bytes) -> None:
    """Cutting the stream in two at any byte gives the same events."""
    stream = VLLM_STREAM.replace(b"\n", ending)
    for cut in range(len(stream) + 1):
        assert decode_in_pieces(stream, [cut]) == VLLM_EVENTS, cut


def test_sse_decoder_byte_by_byte() -> None:
    """One byte per read gives the same events (CRLF stream: the CR and LF arrive apart)."""
    stream = VLLM_STREAM.replace(b"\n", b"\r\n")
    assert decode_in_pieces(stream, list(range(len(stream)))) == VLLM_EVENTS


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=len(VLLM_STREAM) * 2), max_size=30),
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_sse_decoder_any_split(cuts: list[int], ending: bytes) -> None:
    """Any set of cut points gives the same events."""
    stream = VLLM_STREAM.replace(b"\n", ending)
    cuts = [c for c in cuts if c <= len(stream)]
    assert decode_in_pieces(stream, cuts) == VLLM_EVENTS


def test_sse_decoder_dispatches_unterminated_last_event_at_finish() -> None:
    """A last event without its blank line is still delivered when the stream ends."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b") == [(b"", b"a")]
    assert decoder.finish() == [(b"", b"b")]


def test_sse_decoder_rejects_lines_that_are_not_sse() -> None:
    """A line with an unknown field name is reported, quoting the bytes."""
    with pytest.raises(StreamFormatError, match="garbage"):
        SSEDecoder().feed(b"<html>garbage</html>\n\n")


# --- canned servers ---------------------------------------------------------------------------


@dataclass
class Reply:
    """A canned HTTP response: pieces written with pauses, then optionally a close."""

    pieces: list[tuple[float, bytes]]
    close: bool = False


@dataclass
class CannedServer:
    """A real TCP server that answers each request with the next reply a function picks."""

    answer: Callable[[int, bytes, bytes], Reply]
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """Base URL of the listening server."""
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                reply = self.answer(len(self.requests) - 1, head, body)
                for pause, data in reply.pieces:
                    if pause:
                        await asyncio.sleep(pause)
                    writer.write(data)
                    await writer.drain()
                if reply.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        """Stop listening."""
        assert self.server is not None
        self.server.close()


def http_chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_reply(events: list[bytes], *, pause: float = 0.0, end: bool = True) -> Reply:
    """A 200 chunked event-stream response, one HTTP chunk per event."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    pieces: list[tuple[float, bytes]] = [(0.0, head)]
    pieces += [(pause, http_chunk(event)) for event in events]
    if end:
        pieces.append((0.0, b"0\r\n\r\n"))
    return Reply(pieces)


def json_reply(status: int, payload: Any) -> Reply:
    """A JSON response with a content length."""
    body = json.dumps(payload).encode()
    head = b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
        status,
        len(body),
    )
    return Reply([(0.0, head + body)])


def chat_event(
    content: str | None, *, usage: dict[str, int] | None = None, finish: str | None = None
) -> bytes:
    """A vLLM-shaped chat completion chunk event."""
    delta: dict[str, Any] = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    chunk: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def usage_event(prompt: int, completion: int) -> bytes:
    """The usage-only final chunk (empty choices)."""
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def run_against(
    answer: Callable[[int, bytes, bytes], Reply],
    scenario: Callable[[InferenceClient, CannedServer], Awaitable[Any]],
    **client_args: Any,
) -> tuple[Any, CannedServer]:
    """Start a canned server and a client on one loop, run the scenario, return its outcome."""

    async def main() -> tuple[Any, CannedServer]:
        server = CannedServer(answer)
        await server.start()
        client = InferenceClient(server.url, "m", **client_args)
        try:
            return await scenario(client, server), server
        finally:
            await client.aclose()
            await server.stop()

    return asyncio.run(main())


async def one_request(client: InferenceClient, _server: CannedServer) -> RequestRecord:
    """Scenario: a single streaming chat request."""
    return await client.request("hello world", max_tokens=8)


# --- client behaviour -------------------------------------------------------------------------


def test_stream_with_continuous_usage_counts_tokens_per_chunk() -> None:
    """Cumulative usage gives each chunk its token count; role-only chunk is not a token."""
    events = [
        chat_event("", usage={"prompt_tokens": 4, "completion_tokens": 0}),
        chat_event(" a b c", usage={"prompt_tokens": 4, "completion_tokens": 3}),
        chat_event(" d", usage={"prompt_tokens": 4, "completion_tokens": 4}),
        chat_event(" e f", usage={"prompt_tokens": 4, "completion_tokens": 6}, finish="length"),
        usage_event(4, 6),
        DONE,
    ]
    record, server = run_against(lambda i, h, b: sse_reply(events, pause=0.01), one_request)
    assert record.ok, record.error_message
    assert record.chunk_tokens == [3, 1, 2]
    assert record.completion_tokens == 6
    assert record.prompt_tokens == 4
    assert record.finish_reason == "length"
    assert record.status == 200
    assert record.first_token == record.chunk_times[0]
    assert record.sent is not None and record.first_byte is not None
    assert record.scheduled <= record.sent <= record.first_byte < record.first_token
    gaps = [b - a for a, b in zip(record.chunk_times, record.chunk_times[1:], strict=False)]
    assert all(gap > 0.005 for gap in gaps)
    assert record.end is not None and record.end >= record.chunk_times[-1]
    body = json.loads(server.requests[0][1])
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["messages"] == [{"role": "user", "content": "hello world"}]
    assert body["max_tokens"] == 8


def test_stream_without_usage_counts_one_token_per_chunk() -> None:
    """No usage at all: one token per text chunk; completion tokens are their sum."""
    events = [chat_event("x"), chat_event("y"), chat_event("z", finish="stop"), DONE]
    record, _ = run_against(lambda i, h, b: sse_reply(events), one_request)
    assert record.ok
    assert record.chunk_tokens == [1, 1, 1]
    assert record.completion_tokens == 3
    assert record.prompt_tokens is None


def test_final_usage_is_spread_over_multi_token_chunks() -> None:
    """Only a final usage of 8 tokens over 4 chunks: each chunk is counted as 2 tokens."""
    events = [chat_event("ab"), chat_event("cd"), chat_event("ef"), chat_event("gh")]
    events += [usage_event(2, 8), DONE]
    record, _ = run_against(lambda i, h, b: sse_reply(events), one_request)
    assert record.chunk_tokens == [2, 2, 2, 2]
    assert record.completion_tokens == 8


def test_tokenizer_counts_chunk_text_when_no_usage() -> None:
    """A tokenizer callable counts each chunk's text."""
    events = [chat_event("one two"), chat_event(" three"), DONE]
    record, _ = run_against(
        lambda i, h, b: sse_reply(events), one_request, tokenizer=lambda text: len(text.split())
    )
    assert record.chunk_tokens == [2, 1]
    assert record.completion_tokens == 3


def test_completions_endpoint_and_text_field() -> None:
    """The completions endpoint posts a prompt and reads ``choices[].text``."""
    event = b'data: {"choices":[{"index":0,"text":" hi","finish_reason":"stop"}]}\n\n'
    record, server = run_against(
        lambda i, h, b: sse_reply([event, DONE]), one_request, endpoint="completions"
    )
    assert record.ok and record.chunk_tokens == [1]
    head, body = server.requests[0]
    assert head.startswith(b"POST /v1/completions HTTP/1.1")
    assert json.loads(body)["prompt"] == "hello world"


def test_base_url_with_v1_suffix_is_not_doubled() -> None:
    """A base URL ending in /v1 gives /v1/chat/completions, not /v1/v1/..."""
    client = InferenceClient("http://127.0.0.1:9/v1/", "m")
    assert client.path == "/v1/chat/completions"


def test_stream_without_done_ends_cleanly_with_the_message() -> None:
    """A stream that ends its HTTP message without [DONE] is complete (llama.cpp style)."""
    events = [chat_event("a"), chat_event("b", finish="stop")]
    record, _ = run_against(lambda i, h, b: sse_reply(events), one_request)
    assert record.ok and record.chunk_tokens == [1, 1] and record.finish_reason == "stop"


def test_several_events_in_one_http_chunk() -> None:
    """Many events in one read, one event across reads: same result."""
    whole = chat_event("a") + chat_event("b") + DONE
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    raw = head + http_chunk(whole) + b"0\r\n\r\n"
    pieces = [(0.0, raw[:57]), (0.01, raw[57:140]), (0.01, raw[140:])]
    record, _ = run_against(lambda i, h, b: Reply(pieces), one_request)
    assert record.ok and record.chunk_tokens == [1, 1]


def test_malformed_json_in_stream_is_a_stream_error_quoting_the_bytes() -> None:
    """Truncated JSON mid-stream: error class 'stream', bad bytes quoted, no exception."""
    events = [chat_event("a"), b'data: {"choices":[{"delta":{"content":" tok", "finish_re\n\n']
    events += [chat_event("b"), DONE]
    record, _ = run_against(lambda i, h, b: sse_reply(events), one_request)
    assert record.error == "stream"
    assert "finish_re" in (record.error_message or "")
    assert record.end is not None and record.chunk_tokens == [1]


def test_non_sse_line_is_a_stream_error() -> None:
    """A line that is no SSE field gives error class 'stream'."""
    record, _ = run_against(lambda i, h, b: sse_reply([b"<html>oops</html>\n\n"]), one_request)
    assert record.error == "stream" and "oops" in (record.error_message or "")


def test_error_json_mid_stream_is_a_server_error() -> None:
    """vLLM's mid-stream ``{"error": ...}`` chunk ends the request with class 'server'."""
    error = b'data: {"error":{"object":"error","message":"engine died","code":500}}\n\n'
    record, _ = run_against(lambda i, h, b: sse_reply([chat_event("a"), error, DONE]), one_request)
    assert record.error == "server" and "engine died" in (record.error_message or "")


def test_error_event_is_a_server_error() -> None:
    """An ``event: error`` SSE event ends the request with class 'server'."""
    error = b'event: error\ndata: {"message":"overloaded"}\n\n'
    record, _ = run_against(lambda i, h, b: sse_reply([error]), one_request)
    assert record.error == "server" and "overloaded" in (record.error_message or "")


def test_http_error_status_is_recorded_and_connection_kept() -> None:
    """A 500 gives class 'http' with the status and body; the connection stays reusable."""

    async def two(client: InferenceClient, server: CannedServer) -> list[RequestRecord]:
        return [await client.request("x"), await client.request("x")]

    records, server = run_against(lambda i, h, b: json_reply(500, {"error": "boom"}), two)
    assert [r.error for r in records] == ["http", "http"]
    assert records[0].status == 500 and "boom" in (records[0].error_message or "")
    assert server.connections == 1


def test_non_streaming_request_reads_the_json_body() -> None:
    """stream=False: one chunk at the body's arrival, usage from the body."""
    payload = {
        "choices": [{"index": 0, "message": {"content": "hi there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 5},
    }

    async def scenario(client: InferenceClient, server: CannedServer) -> RequestRecord:
        return await client.request("x", stream=False)

    record, server = run_against(lambda i, h, b: json_reply(200, payload), scenario)
    assert record.ok and record.completion_tokens == 5 and record.prompt_tokens == 2
    assert record.chunk_tokens == [5] and record.first_token == record.end
    body = json.loads(server.requests[0][1])
    assert body["stream"] is False and "stream_options" not in body


def test_rejected_stream_options_fall_back_and_stick() -> None:
    """A 400 naming stream_options: retried without it, and later requests leave it out."""

    def answer(index: int, head: bytes, body: bytes) -> Reply:
        if b"stream_options" in body:
            return json_reply(400, {"error": {"message": "Unknown field stream_options"}})
        return sse_reply([chat_event("a"), DONE])

    async def two(client: InferenceClient, server: CannedServer) -> list[RequestRecord]:
        return [await client.request("x"), await client.request("x")]

    records, server = run_against(answer, two)
    assert all(r.ok for r in records), [r.error_message for r in records]
    bodies = [json.loads(body) for _, body in server.requests]
    assert [b.get("stream_options") for b in bodies] == [
        {"include_usage": True, "continuous_usage_stats": True},
        {"include_usage": True},
        None,
        None,
    ]


def test_api_key_is_sent_but_never_recorded() -> None:
    """The key goes in the Authorization header; repr, records and messages never show it."""
    secret = "sk-very-secret-123"

    def answer(index: int, head: bytes, body: bytes) -> Reply:
        return json_reply(401, {"error": f"bad key {secret}"})

    record, server = run_against(answer, one_request, api_key=secret)
    head = server.requests[0][0]
    assert f"Authorization: Bearer {secret}".encode() in head
    assert record.error == "http"
    assert secret not in json.dumps(record.to_dict())
    assert "***" in (record.error_message or "")
    client = InferenceClient("http://127.0.0.1:9", "m", api_key=secret)
    assert secret not in repr(client)


def test_request_id_header_is_sent_and_recorded() -> None:
    """Each request carries an x-request-id, unique per request and kept in the record."""

    async def scenario(client: InferenceClient, server: CannedServer) -> list[RequestRecord]:
        spec = RequestSpec("x", 4)
        first = await client.send(spec, RequestRecord(0, time.perf_counter()), request_id="r-1")
        second = await client.send(spec, RequestRecord(1, time.perf_counter()))
        return [first, second]

    records, server = run_against(lambda i, h, b: sse_reply([chat_event("a"), DONE]), scenario)
    assert records[0].request_id == "r-1"
    assert records[1].request_id and records[1].request_id != "r-1"
    assert b"x-request-id: r-1\r\n" in server.requests[0][0]
    assert f"x-request-id: {records[1].request_id}\r\n".encode() in server.requests[1][0]


def test_keep_alive_reuses_one_connection() -> None:
    """Sequential requests share one connection."""

    async def five(client: InferenceClient, server: CannedServer) -> list[RequestRecord]:
        return [await client.request("x") for _ in range(5)]

    records, server = run_against(lambda i, h, b: sse_reply([chat_event("a"), DONE]), five)
    assert all(r.ok for r in records) and server.connections == 1


def test_pool_never_opens_more_than_max_connections() -> None:
    """Twenty concurrent requests over a pool of four use four connections."""

    async def many(client: InferenceClient, server: CannedServer) -> list[RequestRecord]:
        return list(await asyncio.gather(*(client.request("x") for _ in range(20))))

    records, server = run_against(
        lambda i, h, b: sse_reply([chat_event("a"), DONE], pause=0.005), many, max_connections=4
    )
    assert all(r.ok for r in records) and server.connections == 4


def test_server_closing_an_idle_connection_is_retried_transparently() -> None:
    """A keep-alive connection the server closed after its reply is replaced without an error."""

    def answer(index: int, head: bytes, body: bytes) -> Reply:
        reply = sse_reply([chat_event("a"), DONE])
        reply.close = True  # closes without saying "Connection: close"
        return reply

    async def two(client: InferenceClient, server: CannedServer) -> list[RequestRecord]:
        first = await client.request("x")
        await asyncio.sleep(0.05)
        return [first, await client.request("x")]

    records, server = run_against(answer, two)
    assert [r.error for r in records] == [None, None]
    assert server.connections == 2


class ClosedTransport:
    """A transport as uvloop leaves one whose peer went away, before connection_lost arrives:
    closing, and raising on write."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def is_closing(self) -> bool:
        """Always closing."""
        return True

    def write(self, data: bytes) -> None:
        """Raise as uvloop does on a closed handle."""
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize("where", ["idle in the pool", "handed to a request"])
def test_connection_closing_before_its_loss_is_reported_is_not_written_to(where: str) -> None:
    """A pooled connection whose transport is already closing (a server that died; the loop has
    not delivered connection_lost yet) is never written to: the request goes out on a new one.
    Seen as a RuntimeError out of LoadRunner.run when a simulator crashed behind the proxy."""

    async def two(client: InferenceClient, server: CannedServer) -> list[RequestRecord]:
        first = await client.request("x")
        (idle,) = client._idle
        idle.transport = cast(Any, ClosedTransport(idle.transport))
        if where == "handed to a request":
            client._idle.clear()
            client._idle.append(idle)
            original = client._acquire

            async def hand_over() -> tuple[Any, bool]:
                client._acquire = original  # type: ignore[method-assign]
                client._idle.remove(idle)
                return idle, True

            client._acquire = hand_over  # type: ignore[method-assign]
        second = await asyncio.wait_for(client.request("x"), 5)
        return [first, second]

    records, server = run_against(lambda i, h, b: sse_reply([chat_event("a"), DONE]), two)
    assert [r.error for r in records] == [None, None], [r.error_message for r in records]
    assert server.connections == 2


def test_disconnect_mid_stream_is_a_disconnect_error() -> None:
    """The server closing the connection mid-response gives class 'disconnect'."""
    reply = sse_reply([chat_event("a")], end=False)
    reply.close = True
    record, _ = run_against(lambda i, h, b: reply, one_request)
    assert record.error == "disconnect" and record.chunk_tokens == [1]


def test_connection_refused_is_a_connect_error() -> None:
    """Nothing listening: class 'connect', quickly."""

    async def main() -> RequestRecord:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        client = InferenceClient(f"http://127.0.0.1:{port}", "m")
        return await client.request("x")

    started = time.perf_counter()
    record = asyncio.run(main())
    assert record.error == "connect" and record.status is None
    assert time.perf_counter() - started < 2.0


def test_first_token_timeout() -> None:
    """Headers then silence: class 'timeout' at the first-token limit, not later."""
    head = sse_reply([]).pieces[0]
    reply = Reply([head, (5.0, b"")])
    started = time.perf_counter()
    record, _ = run_against(
        lambda i, h, b: reply, one_request, timeouts=Timeouts(first_token_s=0.3, total_s=5)
    )
    elapsed = time.perf_counter() - started
    assert record.error == "timeout" and "first-token" in (record.error_message or "")
    assert record.end is not None and record.sent is not None
    assert 0.29 <= record.end - record.sent < 0.45
    assert elapsed < 3.0


def test_total_timeout_after_first_token() -> None:
    """Tokens arrive but the response never ends: class 'timeout' at the total limit."""
    reply = sse_reply([chat_event("a")] * 50, pause=0.05, end=False)
    record, _ = run_against(
        lambda i, h, b: reply, one_request, timeouts=Timeouts(first_token_s=1, total_s=0.4)
    )
    assert record.error == "timeout" and "total" in (record.error_message or "")
    assert record.first_token is not None and record.end is not None and record.sent is not None
    assert 0.39 <= record.end - record.sent < 0.6


def test_request_on_a_connection_closing_under_it_is_retried_once() -> None:
    """The keep-alive race: the server drops a reused connection without answering."""

    def answer(index: int, head: bytes, body: bytes) -> Reply:
        if index == 1:
            return Reply([], close=True)
        return sse_reply([chat_event("a"), DONE])

    async def two(client: InferenceClient, server: CannedServer) -> list[RequestRecord]:
        return [await client.request("x"), await client.request("x")]

    records, server = run_against(answer, two)
    assert [r.error for r in records] == [None, None]
    assert len(server.requests) == 3 and server.connections == 2
