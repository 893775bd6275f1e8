"""compat_probe's helpers: a 5xx is a fault that fails checks, a 4xx an absence that skips."""

from __future__ import annotations

import httpx
import pytest

from pytest_gpuinfer.compat.probe import ProbeError, ServerFault, ServerProbe
from pytest_gpuinfer.compat.tokens import exact_length_prompt


def probe_answering(status: int, body: object) -> ServerProbe:
    """A ServerProbe whose HTTP client gets ``status`` and ``body`` for every request."""
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    return ServerProbe("http://127.0.0.1:9", "m", transport=transport)


def test_tokenize_5xx_is_a_server_fault() -> None:
    probe = probe_answering(500, {"error": {"message": "boom"}})
    with pytest.raises(ServerFault, match=r"POST /tokenize \(vLLM\) answered 500: boom"):
        probe.tokenize("hello")


def test_tokenize_404_is_a_plain_probe_error() -> None:
    probe = probe_answering(404, {"detail": "Not Found"})
    with pytest.raises(ProbeError) as info:
        probe.tokenize("hello")
    assert not isinstance(info.value, ServerFault)


def test_exact_length_prompt_counts_with_the_given_counter() -> None:
    def count(text: str) -> int:
        return 1 + text.count(" the") + (1 if text.startswith("the") else 0)

    prompt = exact_length_prompt(count, 10)
    assert count(prompt) == 10


def test_exact_length_prompt_passes_server_faults_through() -> None:
    probe = probe_answering(503, {"error": {"message": "overloaded"}})
    with pytest.raises(ServerFault):
        exact_length_prompt(probe.tokenize, 10)
