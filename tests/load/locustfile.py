"""Locust load for an OpenAI-compatible server: a streaming chat user and the four burst shapes.

Run it on its own::

    locust -f tests/load/locustfile.py --headless --host http://127.0.0.1:8000 -u 4 -r 4 -t 30s

or with a shape (users then follow the shape's rate; ``-u``/``-r`` are ignored)::

    GPUINFER_SHAPE=spike10x GPUINFER_BASELINE_RPS=2 GPUINFER_LOAD_SCALE=0.1 \\
        locust -f tests/load/locustfile.py --headless --host http://127.0.0.1:8000 -t 60s

Each request makes three kinds of locust entries: the request itself (``POST``, response time =
end-to-end, failures for non-200 answers, error events and streams without ``[DONE]``), ``TTFT``
(time to the first chunk with generated text) and ``ITL`` (one entry per gap between text
chunks). Environment: ``GPUINFER_MODEL`` (else the first of ``/v1/models``),
``GPUINFER_MAX_TOKENS`` (16), ``GPUINFER_API_KEY``, ``GPUINFER_USER_RPS`` (requests per second
each user aims for, 1), and for shapes ``GPUINFER_SHAPE`` (spike5x, spike10x, oscillating,
ramp_drop), ``GPUINFER_BASELINE_RPS`` (2) and ``GPUINFER_LOAD_SCALE`` (1).

``GPUINFER_WORKLOAD`` sends a workload the load engine takes too, in its text form, e.g.
``dataset:path=/data/ShareGPT_V3.json,ignore_eos=true`` or
``trace:path=mooncake.jsonl,ignore_eos=true`` (the trace's lengths and prefixes; users keep their
own pace): the same request bodies, each with its own prompt and output length, taken in turn.
Conversations and embeddings need ``gpuinfer-load`` or the ``load_runner`` fixture.

A shape turns rate into users: ``ceil(rate / GPUINFER_USER_RPS)`` users, each paced by
``constant_throughput``. That approximates the rate while each request takes less than
``1 / GPUINFER_USER_RPS`` seconds; pytest-gpuinfer's own open-loop engine (``burst_runner``) keeps
the exact arrival times. Locust patches the standard library with gevent on import: this file
runs in locust's own process, never inside pytest.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

from locust import FastHttpUser, LoadTestShape, constant_throughput, events, task

from pytest_gpuinfer.load.prompts import token_counter_for
from pytest_gpuinfer.load.shapes import STANDARD_SHAPES, LoadShape, standard_shape
from pytest_gpuinfer.load.workloads import WorkloadContext, workload_from_text

MAX_TOKENS = int(os.environ.get("GPUINFER_MAX_TOKENS", "16"))
USER_RPS = float(os.environ.get("GPUINFER_USER_RPS", "1"))
SELECTED_SHAPE = os.environ.get("GPUINFER_SHAPE", "")
if SELECTED_SHAPE and SELECTED_SHAPE not in STANDARD_SHAPES:
    raise SystemExit(
        f"GPUINFER_SHAPE={SELECTED_SHAPE!r} is not a shape; known: {', '.join(STANDARD_SHAPES)}"
    )
PROMPT = "Tell me a story about a lighthouse keeper."
ENDPOINT_NAME = "/v1/chat/completions (stream)"
WORKLOAD = os.environ.get("GPUINFER_WORKLOAD", "")
_PREPARING = threading.Lock()


def workload_bodies(spec: str, host: str, model: str, headers: dict[str, str]) -> list[bytes]:
    """The request bodies of a workload given in its text form (counted by the server)."""
    workload = workload_from_text(spec)
    counter = token_counter_for(host, model, headers=headers)
    prepared = workload.prepare(WorkloadContext(counter, "chat", stream=True))
    if prepared.sessions or prepared.endpoint is not None:
        raise SystemExit(
            f"GPUINFER_WORKLOAD={spec!r}: the locustfile sends single chat requests; "
            "conversations and embeddings need gpuinfer-load or the load_runner fixture"
        )
    return [request.body("chat", model, "final") for request in prepared.specs]


class OpenAIStreamingUser(FastHttpUser):
    """Streams chat completions and reports TTFT and ITL as their own locust entries."""

    wait_time = constant_throughput(USER_RPS)
    connection_timeout = 5.0
    network_timeout = 60.0
    model: ClassVar[str] = os.environ.get("GPUINFER_MODEL", "")
    bodies: ClassVar[list[bytes]] = []
    turn: ClassVar[Iterator[int]] = itertools.count()

    def on_start(self) -> None:
        """Learn the model name from /v1/models when it was not given; build the workload."""
        if not type(self).model:
            with self.client.get("/v1/models", catch_response=True) as response:
                models = response.json().get("data") or [{}]
                type(self).model = str(models[0].get("id", ""))
        if WORKLOAD:
            with _PREPARING:
                if not type(self).bodies:
                    type(self).bodies = workload_bodies(
                        WORKLOAD, self.host or "", type(self).model, self._headers()
                    )

    def _headers(self) -> dict[str, str]:
        """Authorization when an API key is set."""
        key = os.environ.get("GPUINFER_API_KEY")
        return {"Authorization": f"Bearer {key}"} if key else {}

    @task
    def stream_chat(self) -> None:
        """One streaming chat request; TTFT and per-gap ITL go out as separate entries."""
        bodies = type(self).bodies
        body = (
            bodies[next(type(self).turn) % len(bodies)]
            if bodies
            else json.dumps(
                {
                    "model": self.model,
                    "messages": [{"role": "user", "content": PROMPT}],
                    "max_tokens": MAX_TOKENS,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            ).encode()
        )
        start = time.perf_counter()
        chunk_times: list[float] = []
        with self.client.post(
            "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json", **self._headers()},
            stream=True,
            catch_response=True,
            name=ENDPOINT_NAME,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            raw = response._response  # geventhttpclient's response: readline returns per line
            outcome = _read_stream(iter(lambda: raw.readline(b"\n"), b""), chunk_times)
            response.request_meta["response_time"] = (time.perf_counter() - start) * 1000
            if outcome:
                response.failure(outcome)
                return
            response.success()
        if chunk_times:
            _fire("TTFT", (chunk_times[0] - start) * 1000)
            for earlier, later in itertools.pairwise(chunk_times):
                _fire("ITL", (later - earlier) * 1000)


def _read_stream(lines: Iterator[bytes], chunk_times: list[float]) -> str | None:
    """Read SSE lines as they arrive, stamping each text chunk; an error text, or None if ok."""
    for raw_line in lines:
        line = raw_line.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        try:
            payload = json.loads(data)
        except ValueError:
            return f"malformed SSE data: {data[:80]!r}"
        if "error" in payload:
            return f"error event: {str(payload['error'])[:200]}"
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text"):
                chunk_times.append(time.perf_counter())
    return "stream ended without [DONE]"


def _fire(kind: str, milliseconds: float) -> None:
    """Record one TTFT or ITL sample as a locust request entry."""
    events.request.fire(
        request_type=kind,
        name=ENDPOINT_NAME,
        response_time=milliseconds,
        response_length=0,
        exception=None,
        context={},
    )


class _RateShape(LoadTestShape):
    """Follows a pytest-gpuinfer burst shape: users = ceil(rate / per-user rate)."""

    abstract = True
    shape_name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        baseline = float(os.environ.get("GPUINFER_BASELINE_RPS", "2"))
        scale = float(os.environ.get("GPUINFER_LOAD_SCALE", "1"))
        self.shape: LoadShape = standard_shape(self.shape_name, baseline, scale=scale)

    def tick(self) -> tuple[int, float] | None:
        """Users for the rate the shape asks for now; None after its end stops the test."""
        run_time = self.get_run_time()
        if run_time >= self.shape.duration_s:
            return None
        users = max(1, math.ceil(self.shape.rate_at(run_time) / USER_RPS))
        return users, float(max(users, 10) * 10)  # reach the new count within a tick


class Spike5xShape(_RateShape):
    """Baseline, 5x baseline for a while, baseline again."""

    abstract = SELECTED_SHAPE != "spike5x"  # locust uses the one non-abstract shape
    shape_name = "spike5x"


class Spike10xShape(_RateShape):
    """Baseline, 10x baseline for a while, baseline again."""

    abstract = SELECTED_SHAPE != "spike10x"
    shape_name = "spike10x"


class OscillatingShape(_RateShape):
    """Square waves between the baseline and 5x the baseline."""

    abstract = SELECTED_SHAPE != "oscillating"
    shape_name = "oscillating"


class RampDropShape(_RateShape):
    """A ramp up to 8x the baseline, then a sudden drop back."""

    abstract = SELECTED_SHAPE != "ramp_drop"
    shape_name = "ramp_drop"
