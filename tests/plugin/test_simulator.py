"""Tests of the inference-server simulator: protocol, token counts, timing, queueing, faults."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pytest_gpuinfer.sim as simulator
from pytest_gpuinfer.clock import DeadlineTimers
from pytest_gpuinfer.sim import CRASH_EXIT_CODE, SimConfig, SimServer, run_in_thread
from pytest_gpuinfer.sim import server as sim_server
from pytest_gpuinfer.sim.connection import HttpConnection

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIO_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client, so the tests see exactly what went over the wire


@dataclass
class Response:
    """One HTTP response as the test client received it."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunk_times: list[float] = field(default_factory=list)
    """Arrival time of each HTTP chunk of a chunked body."""

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def sse_data(self) -> list[str]:
        """The ``data:`` payloads of an SSE body, in order."""
        return [
            line[len("data: ") :]
            for line in self.body.decode().split("\n")
            if line.startswith("data: ")
        ]


class Connection:
    """A keep-alive HTTP/1.1 connection to the simulator."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Wrap an open stream pair."""
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        """Connect to ``http://host:port``."""
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    def send(
        self,
        method: str,
        path: str,
        payload: Any = None,
        headers: dict[str, str] | None = None,
        raw_body: bytes | None = None,
    ) -> None:
        """Write one request without waiting for its answer."""
        body = raw_body if raw_body is not None else b""
        if payload is not None:
            body = json.dumps(payload).encode()
        lines = [f"{method} {path} HTTP/1.1", "host: sim", f"content-length: {len(body)}"]
        if body:
            lines.append("content-type: application/json")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def receive(self) -> Response:
        """Read one whole response, de-chunking and timing its chunks."""
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        response = Response(status, headers)
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                response.chunk_times.append(time.perf_counter())
                parts.append(data[:-2])
            response.body = b"".join(parts)
        else:
            response.body = await self.reader.readexactly(int(headers["content-length"]))
        return response

    async def request(self, method: str, path: str, payload: Any = None, **kwargs: Any) -> Response:
        """Send a request and read its response."""
        self.send(method, path, payload, **kwargs)
        return await self.receive()

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        with _suppress_connection_errors():
            await self.writer.wait_closed()


class _suppress_connection_errors:
    """Ignore the errors of a connection the server has already dropped."""

    def __enter__(self) -> None:
        """Nothing to set up."""

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        """Swallow connection resets and broken pipes."""
        return kind is not None and issubclass(kind, (ConnectionError, OSError))


async def call(base_url: str, method: str, path: str, payload: Any = None, **kw: Any) -> Response:
    """One request on a fresh connection."""
    connection = await Connection.open(base_url)
    try:
        return await connection.request(method, path, payload, **kw)
    finally:
        await connection.close()


def instant(**fields: Any) -> SimConfig:
    """A simulator config with zero latency (the throughput fast path)."""
    return SimConfig(ttft_s=0.0, itl_s=0.0, **fields)


def completion(prompt: str | list[int] = "one two three", **fields: Any) -> dict[str, Any]:
    """A completions request body."""
    return {"model": "sim-model", "prompt": prompt, **fields}


def chat(*contents: str, **fields: Any) -> dict[str, Any]:
    """A chat request body with one user message per content."""
    messages = [{"role": "user", "content": content} for content in contents]
    return {"model": "sim-model", "messages": messages, **fields}


def gauge(metrics_text: str, name: str) -> float:
    """The value of metric ``name`` in Prometheus text."""
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", metrics_text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def run(coroutine: Any) -> Any:
    """Run a test scenario on a fresh event loop; a scenario stuck on the server fails."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout=SCENARIO_TIMEOUT_S))


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Server records keyed by request id."""
    return {record["request_id"]: record for record in records}


# --------------------------------------------------------------------------------------------
# Protocol shape


def test_health_models_and_labels_say_simulator() -> None:
    """The server never passes for a real engine."""

    async def scenario(url: str) -> None:
        health = await call(url, "GET", "/health")
        assert (health.status, health.body) == (200, b"")
        assert "simulator" in health.headers["server"]
        models = (await call(url, "GET", "/v1/models")).json()
        assert models["object"] == "list"
        (card,) = models["data"]
        assert card["id"] == "tiny-sim"
        assert card["owned_by"] == "pytest-gpuinfer-simulator"
        assert card["max_model_len"] == 333
        metrics = (await call(url, "GET", "/metrics")).body.decode()
        assert 'gpuinfer_sim_info{simulator="sim"' in metrics
        assert (await call(url, "GET", "/nope")).status == 404
        assert (await call(url, "GET", "/v1/completions")).status == 405

    with run_in_thread(instant(model="tiny-sim", max_model_len=333)) as url:
        run(scenario(url))


def test_non_streaming_token_counts_text_and_finish_reasons() -> None:
    """Usage counts words, ``max_tokens`` caps output with "length", else "stop"."""

    async def scenario(url: str) -> None:
        connection = await Connection.open(url)
        capped = await connection.request("POST", "/v1/completions", completion(max_tokens=5))
        body = capped.json()
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == " tok0 tok1 tok2 tok3 tok4"
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        natural = (await connection.request("POST", "/v1/completions", completion())).json()
        assert natural["usage"]["completion_tokens"] == 8
        assert natural["choices"][0]["finish_reason"] == "stop"
        ids = await connection.request("POST", "/v1/completions", completion([1, 2, 3, 4]))
        assert ids.json()["usage"]["prompt_tokens"] == 4
        reply = await connection.request("POST", "/v1/chat/completions", chat("a b", "c d e"))
        message_body = reply.json()
        assert message_body["object"] == "chat.completion"
        assert message_body["choices"][0]["message"]["role"] == "assistant"
        assert message_body["choices"][0]["message"]["content"].split() == [
            f"tok{i}" for i in range(8)
        ]
        overhead = 2 * simulator.CHAT_TOKENS_PER_MESSAGE + simulator.CHAT_TOKENS_PER_REPLY
        assert message_body["usage"]["prompt_tokens"] == 5 + overhead
        await connection.close()

    with run_in_thread(instant(output_tokens=8)) as url:
        run(scenario(url))


def test_chat_stream_has_role_chunk_token_chunks_usage_and_done() -> None:
    """vLLM's stream shape: role first, tokens grouped per chunk, usage with no choices, DONE."""

    async def scenario(url: str) -> None:
        request = chat("hello there", max_tokens=7, stream=True)
        request["stream_options"] = {"include_usage": True}
        response = await call(url, "POST", "/v1/chat/completions", request)
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        data = response.sse_data()
        assert data[-1] == "[DONE]"
        events = [json.loads(item) for item in data[:-1]]
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        contents = [event["choices"][0]["delta"]["content"] for event in events[1:-1]]
        assert contents == [" tok0 tok1 tok2", " tok3 tok4 tok5", " tok6"]
        assert [e["choices"][0]["finish_reason"] for e in events[1:-1]] == [None, None, "length"]
        assert events[-1]["choices"] == []
        assert events[-1]["usage"]["completion_tokens"] == 7
        assert events[-1]["usage"]["prompt_tokens"] == 2 + simulator.CHAT_TOKENS_PER_MESSAGE + (
            simulator.CHAT_TOKENS_PER_REPLY
        )
        assert {event["object"] for event in events} == {"chat.completion.chunk"}

        plain = await call(url, "POST", "/v1/completions", completion(max_tokens=4, stream=True))
        plain_data = plain.sse_data()
        assert plain_data[-1] == "[DONE]"
        texts = [json.loads(item)["choices"][0]["text"] for item in plain_data[:-1]]
        assert texts == [" tok0 tok1 tok2", " tok3"]  # no usage chunk unless asked for

    with run_in_thread(instant(tokens_per_chunk=3)) as url:
        run(scenario(url))


def test_continuous_usage_stats_put_cumulative_usage_in_every_chunk() -> None:
    """Like vLLM: with include_usage and continuous_usage_stats every chunk has usage so far."""
    both = {"include_usage": True, "continuous_usage_stats": True}
    prompt = 2 + simulator.CHAT_TOKENS_PER_MESSAGE + simulator.CHAT_TOKENS_PER_REPLY

    async def scenario(url: str) -> tuple[Response, ...]:
        request = chat("hello there", max_tokens=7, stream=True, stream_options=both)
        continuous = await call(url, "POST", "/v1/chat/completions", request)
        plain = completion(max_tokens=4, stream=True, stream_options=both)
        plain_continuous = await call(url, "POST", "/v1/completions", plain)
        final_only = chat("hello there", max_tokens=7, stream=True)
        final_only["stream_options"] = {"include_usage": True}
        final = await call(url, "POST", "/v1/chat/completions", final_only)
        neither = chat("hello there", max_tokens=7, stream=True)
        neither["stream_options"] = {"continuous_usage_stats": True}
        none = await call(url, "POST", "/v1/chat/completions", neither)
        return continuous, plain_continuous, final, none

    with run_in_thread(instant(tokens_per_chunk=3)) as url:
        continuous, plain_continuous, final, none = run(scenario(url))

    data = continuous.sse_data()
    assert data[-1] == "[DONE]"
    events = [json.loads(item) for item in data[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usages = [event["usage"] for event in events]
    assert [usage["completion_tokens"] for usage in usages] == [0, 3, 6, 7, 7]
    assert all(usage["prompt_tokens"] == prompt for usage in usages)
    assert all(u["total_tokens"] == prompt + u["completion_tokens"] for u in usages)
    assert events[-1]["choices"] == []  # the usage-only chunk still ends the stream
    assert (
        f'"usage":{{"prompt_tokens":{prompt},"total_tokens":{prompt + 3},"completion_tokens":3,'
        '"completion_tokens_details":null}' in data[1]
    )  # vLLM's exact shape on content chunks

    plain_events = [json.loads(item) for item in plain_continuous.sse_data()[:-1]]
    assert [event["usage"]["completion_tokens"] for event in plain_events] == [3, 4, 4]
    assert [event["choices"] for event in plain_events][-1] == []

    final_events = [json.loads(item) for item in final.sse_data()[:-1]]
    assert ["usage" in event for event in final_events] == [False] * 4 + [True]
    none_events = [json.loads(item) for item in none.sse_data()[:-1]]
    assert len(none_events) == 4 and not any("usage" in event for event in none_events)


def test_bad_requests_get_openai_style_errors_and_server_stays_healthy() -> None:
    """400 for bad JSON, missing fields, bad limits and over-long prompts; 404 for wrong model."""

    async def scenario(url: str) -> None:
        connection = await Connection.open(url)
        cases: list[tuple[dict[str, Any], str, int]] = [
            ({"raw_body": b"{not json"}, "/v1/completions", 400),
            ({"payload": {"model": "sim-model"}}, "/v1/completions", 400),
            ({"payload": {"model": "sim-model"}}, "/v1/chat/completions", 400),
            ({"payload": completion(max_tokens=0)}, "/v1/completions", 400),
            (
                {"payload": completion(stream_options={"include_usage": True})},
                "/v1/completions",
                400,
            ),
            ({"payload": {**completion(), "model": "other"}}, "/v1/completions", 404),
        ]
        for kwargs, path, status in cases:
            response = await connection.request("POST", path, **kwargs)
            assert response.status == status, (kwargs, response.body)
            error = response.json()["error"]
            assert error["code"] == status
            assert error["type"] == ("BadRequestError" if status == 400 else "NotFoundError")
        too_long = await connection.request(
            "POST", "/v1/completions", completion("w " * 90, max_tokens=20)
        )
        assert too_long.status == 400
        message = too_long.json()["error"]["message"]
        assert message.startswith("This model's maximum context length is 100 tokens")
        prompt_alone = await connection.request("POST", "/v1/completions", completion("w " * 101))
        assert prompt_alone.status == 400
        fits = await connection.request(
            "POST", "/v1/completions", completion("w " * 90, max_tokens=10)
        )
        assert fits.status == 200
        assert (await connection.request("GET", "/health")).status == 200
        await connection.close()

    with run_in_thread(instant(max_model_len=100)) as url:
        run(scenario(url))


def test_keep_alive_pipelining_and_connection_close() -> None:
    """Many requests share one connection, pipelined ones are answered in order."""

    async def scenario(url: str) -> None:
        connection = await Connection.open(url)
        connection.send("POST", "/v1/completions", completion(max_tokens=2, stream=True))
        connection.send("GET", "/health")
        connection.send("POST", "/v1/completions", completion(max_tokens=3))
        first, second, third = [await connection.receive() for _ in range(3)]
        assert first.sse_data()[-1] == "[DONE]"
        assert (second.status, second.body) == (200, b"")
        assert third.json()["usage"]["completion_tokens"] == 3
        closing = await connection.request("GET", "/health", headers={"connection": "close"})
        assert closing.headers["connection"] == "close"
        assert await connection.reader.read() == b""  # the server hung up
        await connection.close()

    with run_in_thread(SimConfig(ttft_s=0.01, itl_s=0.002)) as url:
        run(scenario(url))


def test_zero_latency_response_is_a_single_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no latency, head and the whole stream leave in one write (the fast path)."""
    writes: list[bytes] = []
    original_write = HttpConnection.write

    def counting_write(self: HttpConnection, data: bytes) -> None:
        writes.append(data)
        original_write(self, data)

    monkeypatch.setattr(HttpConnection, "write", counting_write)

    async def scenario() -> None:
        server = SimServer(instant())
        await server.start()
        response = await call(server.base_url, "POST", "/v1/completions", completion(stream=True))
        await server.close()
        assert response.sse_data()[-1] == "[DONE]"
        assert len(writes) == 1
        assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert writes[0].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        (record,) = server.records
        assert record["tokens"] == 64
        assert record["status"] == 200

    run(scenario())


def test_http_10_stream_is_close_delimited() -> None:
    """An HTTP/1.0 client gets the stream unchunked, ended by the server closing."""

    async def scenario(url: str) -> bytes:
        connection = await Connection.open(url)
        body = json.dumps(completion(max_tokens=2, stream=True)).encode()
        head = f"POST /v1/completions HTTP/1.0\r\ncontent-length: {len(body)}\r\n\r\n"
        connection.writer.write(head.encode() + body)
        raw = await connection.reader.read()
        await connection.close()
        return raw

    with run_in_thread(instant()) as url:
        raw = run(scenario(url))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body.endswith(b"data: [DONE]\n\n")
    assert body.count(b"data: ") == 3


# --------------------------------------------------------------------------------------------
# Timing


def test_stream_timing_follows_ttft_and_itl_schedule() -> None:
    """First token ttft after admission, then one chunk per itl; server records prove it."""
    ttft, itl, tokens = 0.05, 0.01, 10

    async def one(url: str, index: int) -> Response:
        await asyncio.sleep(index * 0.003)
        headers = {"x-request-id": f"timed-{index}"}
        body = completion(max_tokens=tokens, stream=True)
        return await call(url, "POST", "/v1/completions", body, headers=headers)

    async def scenario(url: str) -> tuple[list[Response], list[dict[str, Any]]]:
        responses = await asyncio.gather(*(one(url, index) for index in range(6)))
        records = (await call(url, "GET", "/sim/requests")).json()
        return responses, records

    with run_in_thread(SimConfig(ttft_s=ttft, itl_s=itl)) as url:
        responses, records = run(scenario(url))
    assert sorted(record["request_id"] for record in records) == [f"timed-{i}" for i in range(6)]
    chunk_lags = []
    for record in records:
        assert record["tokens"] == tokens and record["status"] == 200
        assert 0 <= record["admitted"] - record["received"] < 0.002
        assert len(record["chunk_times"]) == tokens
        assert record["chunk_times"][0] == record["first_token"]
        assert record["chunk_times"][-1] <= record["end"]
        for index, sent in enumerate(record["chunk_times"]):
            chunk_lags.append(sent - (record["admitted"] + ttft + index * itl))
        assert max(chunk_lags[-tokens:]) == pytest.approx(record["max_lag"])
    chunk_lags.sort()
    assert chunk_lags[0] >= -20e-6, "a chunk left before its time"
    assert chunk_lags[len(chunk_lags) // 2] < 0.001, chunk_lags
    # Client-side cross-check. The reader shares this process (and, in CI, the machine) with
    # the server thread, so a reader starved of CPU takes two chunks in one read now and then
    # (a floor-stage CI run: every response read 8 or 9 of its 10); the server records above are
    # the ground truth. Pooled over the responses, most reads are one chunk apart: the median
    # gap is the schedule's, and most chunks arrived in reads of their own.
    counts = [len(r.chunk_times) for r in responses]
    assert sum(counts) >= len(responses) * tokens * 0.6, counts
    gaps = sorted(
        b - a
        for response in responses
        for a, b in zip(response.chunk_times, response.chunk_times[1:], strict=False)
    )
    assert abs(gaps[len(gaps) // 2] - itl) < 0.002, gaps


def test_received_is_when_the_first_byte_arrived() -> None:
    """A request whose body comes 50 ms after its head was received at its head's arrival."""

    async def scenario(url: str) -> tuple[float, list[dict[str, Any]]]:
        connection = await Connection.open(url)
        body = json.dumps(completion(max_tokens=2, stream=True)).encode()
        head = (
            "POST /v1/completions HTTP/1.1\r\nhost: sim\r\nx-request-id: slow\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        sent = time.perf_counter()
        connection.writer.write(head.encode())
        await connection.writer.drain()
        await asyncio.sleep(0.05)
        connection.writer.write(body)
        assert (await connection.receive()).status == 200
        records = (await connection.request("GET", "/sim/requests")).json()
        await connection.close()
        return sent, records

    with run_in_thread(SimConfig(ttft_s=0.01, itl_s=0.001)) as url:
        sent, records = run(scenario(url))
    (record,) = records
    assert record["request_id"] == "slow"
    assert sent <= record["received"] <= record["admitted"] <= record["first_token"]
    assert record["received"] - sent < 0.03
    assert record["admitted"] - record["received"] >= 0.045  # the body's wait is in the truth
    assert record["first_token"] - record["admitted"] >= 0.01 - 20e-6  # TTFT from admission


def test_non_streaming_response_arrives_when_the_last_token_is_due() -> None:
    """A non-streamed body is sent at admission + ttft + (chunks - 1) * itl."""

    async def scenario(url: str) -> tuple[float, float, dict[str, Any]]:
        start = time.perf_counter()
        response = await call(url, "POST", "/v1/completions", completion(max_tokens=6))
        elapsed = time.perf_counter() - start
        assert response.json()["usage"]["completion_tokens"] == 6
        (record,) = (await call(url, "GET", "/sim/requests")).json()
        return start, elapsed, record

    with run_in_thread(SimConfig(ttft_s=0.03, itl_s=0.01, tokens_per_chunk=2)) as url:
        _, elapsed, record = run(scenario(url))
    expected = 0.03 + 2 * 0.01  # 3 chunks of 2 tokens
    assert expected <= elapsed < expected + 0.02
    assert expected - 20e-6 <= record["end"] - record["admitted"] < expected + 0.01


def test_portable_loop_timers_keep_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without timerfd (not Linux) the loop's own timers drive chunks, to within a few ms."""
    monkeypatch.setattr(
        sim_server, "DeadlineTimers", functools.partial(DeadlineTimers, use_timerfd=False)
    )

    async def scenario() -> dict[str, Any]:
        server = SimServer(SimConfig(ttft_s=0.02, itl_s=0.01))
        await server.start()
        assert not server.timers.precise
        response = await call(
            server.base_url, "POST", "/v1/chat/completions", chat("x", max_tokens=4, stream=True)
        )
        await server.close()
        assert response.sse_data()[-1] == "[DONE]"
        (record,) = server.records
        return record

    record = run(scenario())
    assert isinstance(record, dict)
    for index, sent in enumerate(record["chunk_times"]):
        lag = sent - (record["admitted"] + 0.02 + index * 0.01)
        assert -20e-6 <= lag < 0.005, (index, lag)


# --------------------------------------------------------------------------------------------
# Scheduling


def test_max_num_seqs_queues_fifo_and_queueing_adds_to_ttft() -> None:
    """Beyond max_num_seqs requests wait in arrival order; /metrics shows running and waiting."""
    ttft = 0.1

    async def one(url: str, index: int) -> Response:
        await asyncio.sleep(index * 0.005)
        body = completion(max_tokens=1, stream=True)
        return await call(
            url, "POST", "/v1/completions", body, headers={"x-request-id": f"q{index}"}
        )

    async def scenario(url: str) -> tuple[str, list[dict[str, Any]]]:
        tasks = [asyncio.create_task(one(url, index)) for index in range(6)]
        await asyncio.sleep(0.06)
        metrics = (await call(url, "GET", "/metrics")).body.decode()
        await asyncio.gather(*tasks)
        return metrics, (await call(url, "GET", "/sim/requests")).json()

    with run_in_thread(SimConfig(ttft_s=ttft, itl_s=0.0, max_num_seqs=2)) as url:
        metrics, records = run(scenario(url))
    assert gauge(metrics, "vllm:num_requests_running") == 2
    assert gauge(metrics, "vllm:num_requests_waiting") == 4
    assert gauge(metrics, "vllm:num_preemptions_total") == 0
    record = by_id(records)
    admitted_order = sorted(record, key=lambda rid: record[rid]["admitted"])
    assert admitted_order == [f"q{i}" for i in range(6)]
    for index in range(2, 6):  # each waits for the request two places ahead to finish
        freed = record[f"q{index - 2}"]["end"]
        assert 0 <= record[f"q{index}"]["admitted"] - freed < 0.005
    last = record["q5"]
    assert last["first_token"] - last["received"] > 3 * ttft - 0.03  # two waits plus prefill


def test_kv_token_budget_limits_running_requests_head_of_line() -> None:
    """Running prompt+max_tokens stays within the budget; the queue head blocks those behind."""

    async def one(url: str, name: str, delay: float, max_tokens: int) -> Response:
        await asyncio.sleep(delay)
        body = completion("w " * 10, max_tokens=max_tokens, stream=True)
        return await call(url, "POST", "/v1/completions", body, headers={"x-request-id": name})

    async def scenario(url: str) -> tuple[str, list[dict[str, Any]]]:
        plan = [("a", 0.0, 40), ("b", 0.005, 40), ("big", 0.01, 80), ("small", 0.015, 5)]
        tasks = [asyncio.create_task(one(url, *item)) for item in plan]
        await asyncio.sleep(0.05)
        metrics = (await call(url, "GET", "/metrics")).body.decode()
        await asyncio.gather(*tasks)
        return metrics, (await call(url, "GET", "/sim/requests")).json()

    config = SimConfig(ttft_s=0.1, itl_s=0.0, kv_token_budget=120, output_tokens=100)
    with run_in_thread(config) as url:
        metrics, records = run(scenario(url))
    assert gauge(metrics, "vllm:num_requests_running") == 2
    assert gauge(metrics, "vllm:num_requests_waiting") == 2
    assert gauge(metrics, "vllm:kv_cache_usage_perc") == pytest.approx(100 / 120)
    record = by_id(records)
    both_done = max(record["a"]["end"], record["b"]["end"])
    assert record["big"]["admitted"] >= both_done  # 50 + 90 > 120 until both are gone
    assert record["small"]["admitted"] >= record["big"]["admitted"]  # FIFO, though 115 fit
    assert record["small"]["admitted"] - record["big"]["admitted"] < 0.005


def test_client_disconnect_frees_the_slot() -> None:
    """A client that leaves mid-stream is recorded as 499 and the next request runs at once."""

    async def scenario(url: str) -> tuple[float, list[dict[str, Any]]]:
        leaver = await Connection.open(url)
        leaver.send("POST", "/v1/completions", completion(stream=True), {"x-request-id": "gone"})
        await leaver.reader.readuntil(b"tok0")
        waiter = asyncio.create_task(
            call(
                url,
                "POST",
                "/v1/completions",
                completion(max_tokens=1),
                headers={"x-request-id": "next"},
            )
        )
        await asyncio.sleep(0.05)
        left_at = time.perf_counter()
        leaver.writer.transport.abort()
        assert (await waiter).status == 200
        return left_at, (await call(url, "GET", "/sim/requests")).json()

    with run_in_thread(SimConfig(ttft_s=0.01, itl_s=0.05, max_num_seqs=1)) as url:
        left_at, records = run(scenario(url))
    record = by_id(records)
    assert record["gone"]["status"] == simulator.CLIENT_CLOSED_STATUS
    assert record["gone"]["first_token"] is not None  # it was cut mid-stream
    assert record["next"]["admitted"] - left_at < 0.02  # not after the leaver's 3.2 s stream


# --------------------------------------------------------------------------------------------
# Failures


def test_error_rate_is_seeded_and_roughly_honoured() -> None:
    """About error_rate of requests get 500, in the same pattern for the same seed."""

    async def statuses(url: str) -> list[int]:
        connection = await Connection.open(url)
        result = [
            (await connection.request("POST", "/v1/completions", completion(max_tokens=2))).status
            for _ in range(200)
        ]
        await connection.close()
        return result

    config = instant(error_rate=0.25, seed=7)
    with run_in_thread(config) as url:
        first = run(statuses(url))
    with run_in_thread(config) as url:
        again = run(statuses(url))
    with run_in_thread(instant(error_rate=0.25, seed=8)) as url:
        other_seed = run(statuses(url))
    assert set(first) == {200, 500}
    assert 30 <= first.count(500) <= 70
    assert first == again
    assert first != other_seed


def test_error_response_body_is_json() -> None:
    """A simulated failure looks like an engine's 500."""

    async def scenario(url: str) -> Response:
        return await call(url, "POST", "/v1/chat/completions", chat("x", stream=True))

    with run_in_thread(instant(error_rate=1.0)) as url:
        response = run(scenario(url))
    assert response.status == 500
    assert response.json()["error"]["type"] == "InternalServerError"


def test_crash_after_in_process_closes_listener_and_connections() -> None:
    """After N answered requests the server drops everything in flight and stops listening."""

    async def scenario(url: str) -> None:
        slow = await Connection.open(url)
        slow.send("POST", "/v1/completions", completion(max_tokens=20, stream=True))
        await slow.reader.readuntil(b"tok0")
        quick = await call(url, "POST", "/v1/completions", completion(max_tokens=1))
        assert quick.status == 200  # the Nth answer is delivered whole
        rest = await slow.reader.read()  # the in-flight stream is cut: no end of stream
        assert b"[DONE]" not in rest
        with pytest.raises(OSError):
            await call(url, "GET", "/health")
        await slow.close()

    with run_in_thread(SimConfig(ttft_s=0.0, itl_s=0.05, crash_after=1)) as url:
        run(scenario(url))


def test_hang_accepts_and_never_answers() -> None:
    """A hung engine reads the request and sends nothing, while /health still answers."""

    async def scenario(url: str) -> list[dict[str, Any]]:
        stuck = await Connection.open(url)
        stuck.send("POST", "/v1/completions", completion(stream=True), {"x-request-id": "stuck"})
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stuck.reader.read(1), timeout=0.3)
        assert (await call(url, "GET", "/health")).status == 200
        records: list[dict[str, Any]] = (await call(url, "GET", "/sim/requests")).json()
        await stuck.close()
        return records

    with run_in_thread(instant(hang=True)) as url:
        (record,) = run(scenario(url))
    assert record["request_id"] == "stuck"
    assert record["received"] is not None
    assert record["end"] is None and record["status"] is None


def test_malformed_stream_has_one_corrupt_data_line() -> None:
    """One data line mid-stream is not JSON; everything else is intact."""

    async def scenario(url: str) -> Response:
        return await call(url, "POST", "/v1/completions", completion(max_tokens=6, stream=True))

    with run_in_thread(instant(malformed_stream=True)) as url:
        response = run(scenario(url))
    data = response.sse_data()
    assert data[-1] == "[DONE]"
    parsed, corrupt = [], []
    for index, item in enumerate(data[:-1]):
        try:
            parsed.append(json.loads(item))
        except json.JSONDecodeError:
            corrupt.append(index)
    assert corrupt == [4]  # right after the middle chunk (index 3 of 6)
    assert "".join(event["choices"][0]["text"] for event in parsed).split() == [
        f"tok{i}" for i in range(6)
    ]


def test_records_reset_and_request_ids() -> None:
    """/sim/requests keeps x-request-id or a generated id; /sim/reset empties it."""

    async def scenario(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        connection = await Connection.open(url)
        await connection.request(
            "POST", "/v1/completions", completion(), headers={"x-request-id": "mine"}
        )
        await connection.request("POST", "/v1/completions", completion())
        before = (await connection.request("GET", "/sim/requests")).json()
        await connection.request("POST", "/sim/reset")
        after = (await connection.request("GET", "/sim/requests")).json()
        await connection.close()
        return before, after

    with run_in_thread(instant()) as url:
        before, after = run(scenario(url))
    assert before[0]["request_id"] == "mine"
    assert before[1]["request_id"].startswith("cmpl-")
    assert before[0]["received"] <= before[0]["admitted"] <= before[0]["first_token"]
    assert before[0]["first_token"] <= before[0]["end"]
    assert after == []


def test_config_rejects_impossible_settings() -> None:
    """Settings that describe no engine fail loudly."""
    with pytest.raises(ValueError):
        SimConfig(error_rate=1.5)
    with pytest.raises(ValueError):
        SimConfig(tokens_per_chunk=0)
    with pytest.raises(ValueError):
        SimConfig(ttft_s=-1)


# --------------------------------------------------------------------------------------------
# As a process


def start_process(*options: str) -> tuple[subprocess.Popen[str], str]:
    """Start the simulator CLI and read its announced URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest_gpuinfer.sim", "--port", "0", *options],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.fullmatch(
        r"gpuinfer-sim listening on (http://127\.0\.0\.1:\d+) \(simulator, not a real engine\)\n",
        line,
    )
    assert match, line
    return process, match.group(1)


def test_process_serves_and_exits_cleanly_on_sigterm() -> None:
    """The CLI announces its URL, serves with the options given, and exits 0 on SIGTERM."""
    process, url = start_process("--ttft-ms", "0", "--itl-ms", "0", "--output-tokens", "3")
    try:
        response = run(call(url, "POST", "/v1/completions", completion()))
        assert response.json()["usage"]["completion_tokens"] == 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.communicate()


def test_process_crash_after_exits_abruptly() -> None:
    """--crash-after N: N answers, then the process is gone with CRASH_EXIT_CODE."""
    process, url = start_process("--ttft-ms", "0", "--itl-ms", "0", "--crash-after", "2")
    try:

        async def scenario() -> list[int]:
            return [(await call(url, "POST", "/v1/completions", completion())).status for _ in "ab"]

        assert run(scenario()) == [200, 200]
        assert process.wait(timeout=10) == CRASH_EXIT_CODE
        assert "simulated crash" in (process.communicate()[1] or "")
    finally:
        process.kill()
        process.communicate()
