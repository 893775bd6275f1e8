"""Limits: a prompt that exactly fills the context works; one token more fails cleanly with 400.

Prompts of exact token lengths repeat a one-token word, counted with the model's tokenizer (or the
server's /tokenize, or its usage report); the context length comes from /v1/models.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat.calls import check_finish, post_ok, require_healthy
from pytest_gpuinfer.compat.findings import error_message
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.plugin.compat_outcomes import excuse
from pytest_gpuinfer.targets import InferenceServer

CONTEXT_MESSAGE = re.compile(r"context|max_model_len|maximum.{0,40}(length|tokens)", re.I)
"""What a rejection must talk about: the context length."""

FILL_MAX_TOKENS = 4


@pytest.fixture(autouse=True)
def _completions(probe: ServerProbe) -> None:
    """Every limit check here uses /v1/completions."""
    probe.completions().require()


def _serves_next_request(client: httpx.Client, server: InferenceServer, after: str) -> None:
    """/health answers 200 and a small completion still succeeds."""
    require_healthy(client, after)
    body = {"model": server.model, "prompt": "Still there?", "max_tokens": 2, "temperature": 0}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, (
        f"after {after}, a small completion answered {response.status_code}: "
        f"{error_message(response)}"
    )


def test_prompt_exactly_filling_context_succeeds(
    http_client: httpx.Client,
    inference_server: InferenceServer,
    prompt_builder: Callable[[int], str],
    max_context: int,
    engine_identity: tuple[str, str | None],
) -> None:
    """prompt + max_tokens == context: accepted, and every token generated, so the context is
    really filled (a model that stops on EOS is asked again with ignore_eos)."""
    prompt_tokens = max_context - FILL_MAX_TOKENS
    prompt = prompt_builder(prompt_tokens)
    request = {
        "model": inference_server.model,
        "prompt": prompt,
        "max_tokens": FILL_MAX_TOKENS,
        "temperature": 0.0,
    }
    response = http_client.post("/v1/completions", json=request)
    if response.status_code == 200:
        body = response.json()
    else:
        excuse(engine_identity, "limits:prompt+max_tokens=context", response)
        body = post_ok(http_client, "/v1/completions", request)  # fails with the message
    usage = body["usage"]
    assert usage["prompt_tokens"] == prompt_tokens, (
        f"the server counted {usage['prompt_tokens']} prompt tokens, we built {prompt_tokens}"
    )
    choice = body["choices"][0]
    if choice.get("finish_reason") == "stop" and usage["completion_tokens"] < FILL_MAX_TOKENS:
        # A real model may end on EOS before the context is full; ask again past EOS (vLLM,
        # llama.cpp), so the last position of the context is really used.
        body = post_ok(http_client, "/v1/completions", {**request, "ignore_eos": True})
        usage, choice = body["usage"], body["choices"][0]
    assert usage["completion_tokens"] == FILL_MAX_TOKENS, (
        f"{usage['completion_tokens']} of {FILL_MAX_TOKENS} tokens generated in a context of "
        f"{max_context} (prompt {prompt_tokens}), finish_reason {choice.get('finish_reason')!r}"
    )
    check_finish(choice, usage["completion_tokens"], FILL_MAX_TOKENS)


OVER_BY_ONE = {
    # id: (prompt tokens relative to the context, max_tokens)
    "prompt=context-3,max_tokens=4": (-3, 4),
    "prompt=context,max_tokens=1": (0, 1),
    "prompt=context+1,max_tokens=1": (1, 1),
}


@pytest.mark.parametrize("case", list(OVER_BY_ONE))
def test_one_token_over_context_is_rejected(
    case: str,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    prompt_builder: Callable[[int], str],
    max_context: int,
    engine_identity: tuple[str, str | None],
) -> None:
    """prompt + max_tokens == context + 1 gets 400 about the context length; the server lives on."""
    offset, max_tokens = OVER_BY_ONE[case]
    prompt_tokens = max_context + offset
    prompt = _prompt_of(prompt_builder, prompt_tokens, max_context)
    body: dict[str, Any] = {
        "model": inference_server.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    try:
        response = http_client.post("/v1/completions", json=body)
    except httpx.HTTPError as exc:
        pytest.fail(f"{case}: the connection failed instead of a 400: {exc}", pytrace=False)
    total = prompt_tokens + max_tokens
    excuse(engine_identity, _deviation_id(case), response)
    if response.status_code == 200:
        answer = response.json()
        pytest.fail(
            f"{case}: prompt {prompt_tokens} + max_tokens {max_tokens} = {total} > context "
            f"{max_context} was accepted (200) instead of rejected with 400; usage "
            f"{answer.get('usage')}, finish_reason "
            f"{(answer.get('choices') or [{}])[0].get('finish_reason')!r}",
            pytrace=False,
        )
    message = error_message(response)
    assert response.status_code == 400, (
        f"{case}: {total} tokens > context {max_context} answered {response.status_code} "
        f"(expected 400): {message}"
    )
    assert CONTEXT_MESSAGE.search(message), (
        f"{case}: the 400 does not mention the context length: {message!r}"
    )
    _serves_next_request(http_client, inference_server, f"the over-long request ({case})")


def _deviation_id(case: str) -> str:
    """The KNOWN_DEVIATIONS id of an over-by-one case."""
    if case == "prompt=context-3,max_tokens=4":
        return "limits:prompt+max_tokens=context+1"
    return f"limits:{case}"


def _prompt_of(build: Callable[[int], str], n_tokens: int, max_context: int) -> str:
    """A prompt of ``n_tokens``; at or past the context, a context-1 prompt plus repeated words."""
    # Counting stops below the context (a server's usage report cannot count past it).
    if n_tokens < max_context:
        return build(n_tokens)
    base, shorter = build(max_context - 1), build(max_context - 2)
    assert base.startswith(shorter), "exact-length prompts are not prefixes of each other"
    word = base[len(shorter) :]
    return base + word * (n_tokens - max_context + 1)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_max_tokens_alone_over_context_is_rejected(
    path: str,
    probe: ServerProbe,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    max_context: int,
    engine_identity: tuple[str, str | None],
) -> None:
    """max_tokens = context + 1 on a short prompt is a clean 4xx, and the server stays healthy."""
    if path.endswith("chat/completions"):
        probe.chat().require()
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}
    else:
        body = {"prompt": "Hi"}
    body.update(model=inference_server.model, max_tokens=max_context + 1, temperature=0.0)
    try:
        response = http_client.post(path, json=body)
    except httpx.HTTPError as exc:
        pytest.fail(f"max_tokens={max_context + 1}: the connection failed: {exc}", pytrace=False)
    if not 400 <= response.status_code < 500:
        excuse(engine_identity, "limits:max_tokens>context", response)
    assert 400 <= response.status_code < 500, (
        f"max_tokens={max_context + 1} > context {max_context} answered {response.status_code} "
        f"(expected 4xx): {error_message(response)}"
    )
    _serves_next_request(http_client, inference_server, f"max_tokens={max_context + 1}")
