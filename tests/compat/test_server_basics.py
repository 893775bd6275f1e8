"""The target answers: health, model list, one completion, one streamed chat completion."""

from __future__ import annotations

import json
from typing import Any

import httpx

from pytest_gpuinfer.targets import InferenceServer


def test_health_is_200(http_client: httpx.Client) -> None:
    response = http_client.get("/health")
    assert response.status_code == 200, f"/health answered {response.status_code}: {response.text[:300]}"


def test_models_lists_the_served_model(
    http_client: httpx.Client, inference_server: InferenceServer
) -> None:
    response = http_client.get("/v1/models")
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    assert body.get("object") == "list", f"/v1/models is not an OpenAI list: {body}"
    ids = [entry["id"] for entry in body["data"]]
    assert inference_server.model in ids, f"{inference_server.model!r} not in {ids}"


def test_completion_returns_text_and_usage(
    http_client: httpx.Client, inference_server: InferenceServer
) -> None:
    max_tokens = 8
    response = http_client.post(
        "/v1/completions",
        json={"model": inference_server.model, "prompt": "The server says", "max_tokens": max_tokens,
              "temperature": 0.0},
    )
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    choice = body["choices"][0]
    assert isinstance(choice["text"], str)
    assert choice["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 1 <= usage["completion_tokens"] <= max_tokens
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == max_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def _sse_events(response: httpx.Response) -> list[Any]:
    """Decode an SSE body into JSON events; '[DONE]' ends it."""
    events: list[Any] = []
    done = False
    for line in response.iter_lines():
        if not line or line.startswith(":"):
            continue
        assert line.startswith("data:"), f"not an SSE data line: {line[:200]!r}"
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            done = True
            continue
        assert not done, "data after [DONE]"
        events.append(json.loads(payload))
    assert done, "the stream did not end with data: [DONE]"
    return events


def test_streamed_chat_completion_is_well_formed(
    http_client: httpx.Client, inference_server: InferenceServer
) -> None:
    max_tokens = 6
    request = {
        "model": inference_server.model,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http_client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200, response.read()[:500]
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response)
    assert events, "no chunks before [DONE]"
    assert all(event["object"] == "chat.completion.chunk" for event in events)
    content_chunks = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert content_chunks, "no chunk carried generated text"
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] in ("length", "stop"), f"last finish_reason {finishes[-1]!r}"
    usage_chunks = [e for e in events if e.get("usage") and not e["choices"]]
    assert usage_chunks, "include_usage asked for a final usage chunk; none came"
    assert 1 <= usage_chunks[-1]["usage"]["completion_tokens"] <= max_tokens
