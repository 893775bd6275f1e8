"""The target answers: health, models with their context length, metrics, completions, streaming."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat.calls import sse_events
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.metrics.engine_gauges import detect_engine, engine_gauges, parse_metrics
from pytest_gpuinfer.plugin.compat_outcomes import excuse
from pytest_gpuinfer.plugin.fixtures import gpuinfer_settings_of
from pytest_gpuinfer.targets import InferenceServer

BUILTIN_MAX_MODEL_LEN = 1024
"""The context the plugin launches the built-in model with."""

VLLM_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def test_health_is_200(
    http_client: httpx.Client, inference_server: InferenceServer, probe: ServerProbe
) -> None:
    """GET /health answers 200 (vLLM must have it; other servers may lack the route)."""
    feature = probe.health_route()
    if inference_server.engine == "vllm" and not feature.available:
        pytest.fail(f"vLLM must serve /health: {feature.reason}", pytrace=False)
    feature.require()
    response = http_client.get("/health")
    assert response.status_code == 200, (
        f"/health answered {response.status_code}: {response.text[:300]}"
    )


def test_models_lists_the_served_model(
    http_client: httpx.Client, inference_server: InferenceServer
) -> None:
    """/v1/models is an OpenAI list that names the served model."""
    response = http_client.get("/v1/models")
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    assert body.get("object") == "list", f"/v1/models is not an OpenAI list: {body}"
    ids = [entry["id"] for entry in body["data"]]
    assert inference_server.model in ids, f"{inference_server.model!r} not in {ids}"


def test_completion_returns_text_and_usage(
    http_client: httpx.Client, inference_server: InferenceServer
) -> None:
    """One completion returns text, a finish reason and consistent usage."""
    max_tokens = 8
    response = http_client.post(
        "/v1/completions",
        json={
            "model": inference_server.model,
            "prompt": "The server says",
            "max_tokens": max_tokens,
            "temperature": 0.0,
        },
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


def test_streamed_chat_completion_is_well_formed(
    http_client: httpx.Client,
    inference_server: InferenceServer,
    engine_identity: tuple[str, str | None],
    chat_extra: dict[str, Any],
) -> None:
    """A streamed chat completion is SSE with content chunks, a finish reason and usage."""
    max_tokens = 6
    request = {
        "model": inference_server.model,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **chat_extra,
    }
    with http_client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200, response.read()[:500]
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
    assert events, "no chunks before [DONE]"
    assert all(event["object"] == "chat.completion.chunk" for event in events)
    content_chunks = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert content_chunks, "no chunk carried generated text"
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] in ("length", "stop"), f"last finish_reason {finishes[-1]!r}"
    usage_chunks = [e for e in events if e.get("usage") and not e["choices"]]
    if not usage_chunks:
        excuse(engine_identity, "stream:include_usage", events)
    assert usage_chunks, "include_usage asked for a final usage chunk; none came"
    assert 1 <= usage_chunks[-1]["usage"]["completion_tokens"] <= max_tokens


def test_models_reports_the_max_context(
    http_client: httpx.Client, inference_server: InferenceServer, request: pytest.FixtureRequest
) -> None:
    """/v1/models gives the served model's context length (vLLM: max_model_len)."""
    body = http_client.get("/v1/models").json()
    entry = next((e for e in body["data"] if e.get("id") == inference_server.model), None)
    assert entry is not None, f"{inference_server.model!r} missing from /v1/models: {body}"
    reported = next(
        (entry[k] for k in ("max_model_len", "context_length", "max_context_length") if k in entry),
        None,
    )
    if reported is None:
        if inference_server.engine == "vllm":
            pytest.fail(f"vLLM's /v1/models entry has no max_model_len: {entry}", pytrace=False)
        pytest.skip(f"the target's /v1/models entry reports no context length: {sorted(entry)}")
    assert isinstance(reported, int) and reported > 0, f"context length {reported!r} is not > 0"
    settings = gpuinfer_settings_of(request.config)
    builtin_default = settings.uses_builtin_model and not any(
        arg.startswith("--max-model-len") for arg in settings.engine_args
    )
    if inference_server.launched and builtin_default:
        assert reported == BUILTIN_MAX_MODEL_LEN, (
            f"built-in model served with context {reported}, expected {BUILTIN_MAX_MODEL_LEN}"
        )


def test_metrics_parse_and_expose_engine_gauges(
    inference_server: InferenceServer, probe: ServerProbe, http_client: httpx.Client
) -> None:
    """/metrics is valid Prometheus text with the engine's queue and KV-cache gauges."""
    feature = probe.metrics_route()
    if inference_server.engine == "vllm" and not feature.available:
        pytest.fail(f"vLLM must serve /metrics: {feature.reason}", pytrace=False)
    feature.require()
    response = http_client.get("/metrics")
    assert response.status_code == 200, f"/metrics answered {response.status_code}"
    try:
        metrics = parse_metrics(response.text)
    except ValueError as exc:
        pytest.fail(f"/metrics is not Prometheus text: {exc}", pytrace=False)
    assert metrics, "/metrics parsed to no samples at all"
    engine = detect_engine(metrics)
    if inference_server.engine == "vllm" or engine == "vllm":
        missing = [name for name in VLLM_GAUGES if name not in metrics]
        assert not missing, (
            f"vLLM /metrics lacks {missing}; it has {len(metrics)} sample names, e.g. "
            f"{sorted(n for n in metrics if n.startswith('vllm:'))[:15]}"
        )
    elif engine is None:
        pytest.skip(
            "/metrics parses, but carries no gauges of a known engine (vLLM, SGLang, TGI, "
            f"llama.cpp); sample names include {sorted(metrics)[:10]}"
        )
    gauges = engine_gauges(metrics, model=inference_server.model)
    assert gauges.running is not None and gauges.waiting is not None, (
        f"{engine} /metrics lacks a running/waiting gauge for model {inference_server.model!r}: "
        f"{gauges}"
    )
    assert gauges.running >= 0 and gauges.waiting >= 0, f"negative queue gauge: {gauges}"
    if gauges.kv_cache_usage is not None:
        assert 0.0 <= gauges.kv_cache_usage <= 1.0, f"KV-cache usage outside 0..1: {gauges}"
    elif engine in ("vllm", "sglang", "llamacpp"):
        pytest.fail(f"{engine} /metrics lacks its KV-cache usage gauge: {gauges}", pytrace=False)
