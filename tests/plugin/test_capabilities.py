"""Readiness and capability probes against servers that are not vLLM (no /health, other routes)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fake_http import FakeHandler

from pytest_gpuinfer.compat.capabilities import probe_capabilities
from pytest_gpuinfer.compat.probe import ProbeError, ServerProbe
from pytest_gpuinfer.targets.base import InferenceServer, TargetError, wait_until_ready

Routes = dict[tuple[str, str], Callable[[dict[str, Any]], tuple[int, Any]]]
MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "me"}]}


def llama_cpp_python_routes() -> Routes:
    """The routes llama-cpp-python's server has: no /health, /tokenize or /metrics."""
    return {
        ("GET", "/v1/models"): lambda body: (200, MODELS),
        ("POST", "/extras/tokenize"): lambda body: (200, {"tokens": [0, 11, 12]}),
        ("POST", "/extras/detokenize"): lambda body: (200, {"text": "Hello"}),
        ("POST", "/v1/completions"): lambda body: (
            200,
            {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]},
        ),
    }


@pytest.fixture
def serve() -> Iterator[Callable[[Routes], str]]:
    """Start a loopback HTTP server answering the given routes (404 elsewhere); yields a starter."""
    servers: list[ThreadingHTTPServer] = []

    def start(routes: Routes) -> str:
        class Handler(FakeHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                handler = routes.get((method, self.path))
                status, payload = handler(body) if handler else (404, {"detail": "Not Found"})
                self.send_json(status, payload)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_ready_without_health_route_when_models_lists_a_model(
    serve: Callable[[Routes], str],
) -> None:
    """A 404 on /health is "no such route": /v1/models decides (it waited 600 s before)."""
    url = serve(llama_cpp_python_routes())
    ready = wait_until_ready(url, timeout_s=120, headers={}, poll_s=0.05)
    assert ready.model_ids == ["m"]
    assert ready.health_route is None


def test_definite_404_on_models_fails_instead_of_waiting(serve: Callable[[Routes], str]) -> None:
    """A URL that 404s on both /health and /v1/models is not a server root: fail, naming it."""
    url = serve({})
    with pytest.raises(TargetError, match=r"/v1/models answered 404.*not the root"):
        wait_until_ready(url, timeout_s=120, headers={}, poll_s=0.05)


def test_health_503_means_still_loading(serve: Callable[[Routes], str]) -> None:
    """A 503 on /health is "not ready yet": the wait goes on until /health says 200."""
    calls = {"health": 0}

    def health(body: dict[str, Any]) -> tuple[int, Any]:
        calls["health"] += 1
        return (503, {"status": "loading"}) if calls["health"] < 3 else (200, {})

    url = serve({("GET", "/health"): health, ("GET", "/v1/models"): lambda body: (200, MODELS)})
    ready = wait_until_ready(url, timeout_s=120, headers={}, poll_s=0.05)
    assert calls["health"] == 3
    assert ready.health_route == "/health"


def test_capabilities_of_a_llama_cpp_python_like_server(serve: Callable[[Routes], str]) -> None:
    """The tokenize route is found under /extras/tokenize; the missing ones are named."""
    url = serve(llama_cpp_python_routes())
    server = InferenceServer(base_url=url, model="m", engine="endpoint", max_model_len=1024)
    probe = ServerProbe(url, "m")
    found = probe_capabilities(server, probe)
    line = found.line()
    assert "tokenize route (/extras/tokenize, llama-cpp-python)" in found.offered(), line
    assert "detokenize route" in found.offered(), line
    for missing in ("/health", "/metrics", "/version", "context length in /v1/models"):
        assert missing in found.missing(), line
    assert "context length 1024 as set by this run's launch" in line
    assert probe.liveness_path() == "/v1/models"
    assert len(probe.tokenize("Hello")) == 3
    with pytest.raises(ProbeError, match="always adds special tokens"):
        probe.tokenize("Hello", add_special_tokens=False)
    assert probe.detokenize([0, 11, 12]) == "Hello"


def test_tokenize_dialect_of_vllm_is_tried_first() -> None:
    """A vLLM-style /tokenize (prompt in, tokens out) is used as such."""

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        if request.url.path == "/tokenize" and "prompt" in body:
            return httpx.Response(200, json={"tokens": [1, 2], "count": 2})
        return httpx.Response(404, json={"detail": "Not Found"})

    probe = ServerProbe("http://127.0.0.1:9", "m", transport=httpx.MockTransport(answer))
    assert probe.tokenize_route().available
    dialect = probe.tokenize_dialect()
    assert dialect is not None and dialect.name == "vLLM"
    assert probe.tokenize("Hi", add_special_tokens=False) == [1, 2]


def test_usage_in_streams_absent_when_no_chunk_carries_usage() -> None:
    """A stream that ignores include_usage is reported as lacking usage in streams."""
    chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
    stream = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=stream.encode(), headers={"content-type": "text/event-stream"}
        )

    probe = ServerProbe("http://127.0.0.1:9", "m", transport=httpx.MockTransport(answer))
    feature = probe.stream_usage()
    assert not feature.available and not feature.broken
    assert "none with usage" in feature.reason
