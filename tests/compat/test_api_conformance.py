"""API conformance: completions and chat, streaming, usage, stop, n, logprobs, determinism, load.

Random-weight models write gibberish, so every check here is structural: shapes, counts, finish
reasons, equality between two ways of asking the same thing, and reproducibility.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat.calls import check_finish, finish_retry, post_ok, stream_events
from pytest_gpuinfer.compat.deviations import openai_defaults
from pytest_gpuinfer.compat.findings import error_message
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.compat.tokens import TokenCounter, first_difference
from pytest_gpuinfer.plugin.compat_outcomes import excuse
from pytest_gpuinfer.targets import InferenceServer

PROMPT = "The inference server streams tokens back to"
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Describe the queue in one sentence."},
]
SEED = 1234
LOGPROB_TOLERANCE = 1e-3
"""Logprobs travel as JSON floats; the greedy token may tie with another within this."""


@pytest.fixture
def completions(probe: ServerProbe) -> None:
    """Skip unless the target answers /v1/completions."""
    probe.completions().require()


@pytest.fixture
def chat(probe: ServerProbe) -> None:
    """Skip unless the target answers /v1/chat/completions."""
    probe.chat().require()


def _completion(server: InferenceServer, **extra: Any) -> dict[str, Any]:
    """A completions request body for the target."""
    return {
        "model": server.model,
        "prompt": PROMPT,
        "max_tokens": 16,
        "temperature": 0.0,
        "seed": SEED,
        **extra,
    }


def _chat(server: InferenceServer, **extra: Any) -> dict[str, Any]:
    """A chat completions request body for the target."""
    return {
        "model": server.model,
        "messages": MESSAGES,
        "max_tokens": 16,
        "temperature": 0.0,
        "seed": SEED,
        **extra,
    }


def _text_diff(label_a: str, a: str, label_b: str, b: str) -> str:
    """A message naming the first differing character of two texts."""
    at = first_difference(a, b)
    return (
        f"{label_a} {a!r} != {label_b} {b!r} at char {at} "
        f"({a[at : at + 8]!r} vs {b[at : at + 8]!r})"
    )


def _usage(body: dict[str, Any]) -> dict[str, int]:
    """The usage object, checked for the three counts and their sum."""
    usage = body.get("usage")
    assert isinstance(usage, dict), f"no usage in the answer: {str(body)[:300]}"
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert isinstance(usage.get(key), int), f"usage.{key} missing or not an int: {usage}"
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], (
        f"usage total {usage['total_tokens']} != prompt {usage['prompt_tokens']} + completion "
        f"{usage['completion_tokens']}"
    )
    return usage


# -- basic shapes and usage --------------------------------------------------------------------


def test_completion_shape(
    completions: None, http_client: httpx.Client, inference_server: InferenceServer
) -> None:
    """A completion has the OpenAI shape: id, object, model, one indexed choice with text."""
    request = _completion(inference_server)
    body = post_ok(http_client, "/v1/completions", request)
    assert body.get("object") == "text_completion", f"object is {body.get('object')!r}"
    assert isinstance(body.get("id"), str) and body["id"], f"no id: {body.get('id')!r}"
    assert body.get("model") == inference_server.model, (
        f"answer names model {body.get('model')!r}, asked {inference_server.model!r}"
    )
    assert isinstance(body.get("created"), int), f"created is {body.get('created')!r}"
    choices = body["choices"]
    assert len(choices) == 1 and choices[0]["index"] == 0, f"choices: {choices}"
    assert isinstance(choices[0]["text"], str), f"text is {choices[0]['text']!r}"
    usage = _usage(body)
    retry = finish_retry(http_client, "/v1/completions", request)
    check_finish(choices[0], usage["completion_tokens"], 16, retry=retry)


def test_chat_completion_shape(
    chat: None,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    chat_extra: dict[str, Any],
) -> None:
    """A chat completion has one choice with an assistant message and a finish reason."""
    request = _chat(inference_server, **chat_extra)
    body = post_ok(http_client, "/v1/chat/completions", request)
    assert body.get("object") == "chat.completion", f"object is {body.get('object')!r}"
    assert body.get("model") == inference_server.model, f"model is {body.get('model')!r}"
    choices = body["choices"]
    assert len(choices) == 1 and choices[0]["index"] == 0, f"choices: {choices}"
    message = choices[0]["message"]
    assert message.get("role") == "assistant", f"message role {message.get('role')!r}"
    assert isinstance(message.get("content"), str), f"content is {message.get('content')!r}"
    usage = _usage(body)
    retry = finish_retry(http_client, "/v1/chat/completions", request)
    check_finish(choices[0], usage["completion_tokens"], 16, retry=retry)


@pytest.mark.parametrize("max_tokens", [1, 7, 32])
def test_completion_usage_matches_tokenizer(
    completions: None,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    token_counter: TokenCounter,
    max_tokens: int,
) -> None:
    """prompt_tokens equals the tokenizer's count (BOS included); finish matches the count."""
    request = _completion(inference_server, max_tokens=max_tokens)
    body = post_ok(http_client, "/v1/completions", request)
    usage = _usage(body)
    expected = token_counter.count(PROMPT)
    assert usage["prompt_tokens"] == expected, (
        f"usage.prompt_tokens {usage['prompt_tokens']} != {expected} counted by "
        f"{token_counter.source} for {PROMPT!r} (special tokens included)"
    )
    retry = finish_retry(http_client, "/v1/completions", request)
    check_finish(body["choices"][0], usage["completion_tokens"], max_tokens, retry=retry)


@pytest.mark.parametrize("max_tokens", [1, 9])
def test_chat_usage_matches_chat_template(
    chat: None,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    token_counter: TokenCounter,
    max_tokens: int,
) -> None:
    """Chat prompt_tokens equals the chat template's token count; finish matches the count."""
    request = _chat(inference_server, max_tokens=max_tokens)
    body = post_ok(http_client, "/v1/chat/completions", request)
    usage = _usage(body)
    expected = token_counter.count_chat(MESSAGES)
    assert usage["prompt_tokens"] == expected, (
        f"usage.prompt_tokens {usage['prompt_tokens']} != {expected} counted by "
        f"{token_counter.source} with the chat template and generation prompt"
    )
    retry = finish_retry(http_client, "/v1/chat/completions", request)
    check_finish(body["choices"][0], usage["completion_tokens"], max_tokens, retry=retry)


# -- streaming -----------------------------------------------------------------------------------


def _stream_usage(events: list[dict[str, Any]]) -> dict[str, int] | None:
    """The usage carried by the stream's final usage chunk, if any."""
    usages = [e["usage"] for e in events if e.get("usage")]
    return usages[-1] if usages else None


def _assert_stream_ends_like(
    events: list[dict[str, Any]], whole: dict[str, Any], identity: tuple[str, str | None]
) -> None:
    """The stream has exactly the non-streamed finish reason and the same usage counts."""
    finishes = [
        c.get("finish_reason")
        for e in events
        for c in e.get("choices", [])
        if c.get("finish_reason")
    ]
    assert finishes == [whole["choices"][0]["finish_reason"]], (
        f"stream finish reasons {finishes} != non-streamed "
        f"{whole['choices'][0]['finish_reason']!r} (exactly one expected)"
    )
    usage = _stream_usage(events)
    if usage is None:
        excuse(identity, "stream:include_usage", events)
    assert usage is not None, "include_usage asked for a usage chunk; none came"
    for key in ("prompt_tokens", "completion_tokens"):
        assert usage.get(key) == whole["usage"][key], (
            f"streamed usage.{key} {usage.get(key)} != non-streamed {whole['usage'][key]}"
        )


def test_streamed_completion_equals_non_streamed(
    completions: None,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    engine_identity: tuple[str, str | None],
) -> None:
    """Streamed completion text, finish reason and usage equal the non-streamed ones."""
    request = _completion(inference_server, max_tokens=24)
    whole = post_ok(http_client, "/v1/completions", request)
    events = stream_events(
        http_client, "/v1/completions", {**request, "stream_options": {"include_usage": True}}
    )
    assert events, "no chunks before [DONE]"
    bad = [e.get("object") for e in events if e.get("object") != "text_completion"]
    assert not bad, f"stream chunks with object {bad[:3]} (expected 'text_completion')"
    pieces = [c.get("text") or "" for e in events for c in e.get("choices", [])]
    streamed = "".join(pieces)
    text = whole["choices"][0]["text"]
    assert streamed == text, _text_diff("streamed text", streamed, "non-streamed", text)
    _assert_stream_ends_like(events, whole, engine_identity)


def test_streamed_chat_equals_non_streamed(
    chat: None,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    engine_identity: tuple[str, str | None],
    chat_extra: dict[str, Any],
) -> None:
    """Streamed chat deltas start with the assistant role and add up to the non-streamed reply."""
    request = _chat(inference_server, max_tokens=24, **chat_extra)
    whole = post_ok(http_client, "/v1/chat/completions", request)
    events = stream_events(
        http_client, "/v1/chat/completions", {**request, "stream_options": {"include_usage": True}}
    )
    bad = [e.get("object") for e in events if e.get("object") != "chat.completion.chunk"]
    assert not bad, f"stream chunks with object {bad[:3]} (expected 'chat.completion.chunk')"
    deltas = [c.get("delta") or {} for e in events for c in e.get("choices", [])]
    assert deltas, "no chunk carried a choice"
    assert deltas[0].get("role") == "assistant", f"first delta {deltas[0]} has no assistant role"
    streamed = "".join(d.get("content") or "" for d in deltas)
    text = whole["choices"][0]["message"]["content"]
    assert streamed == text, _text_diff("streamed text", streamed, "non-streamed", text)
    _assert_stream_ends_like(events, whole, engine_identity)


# -- stop, n, logprobs ---------------------------------------------------------------------------


def _pick_stop(text: str) -> tuple[str, int] | None:
    """A 3-character substring first seen past the start, printable, or None when there is none."""
    for start in range(max(1, len(text) // 3), len(text) - 2):
        candidate = text[start : start + 3]
        if "\ufffd" in candidate or not candidate.strip():
            continue
        if text.find(candidate) == start:
            return candidate, start
    return None


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_stop_sequence_is_honoured(
    kind: str,
    probe: ServerProbe,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    chat_extra: dict[str, Any],
) -> None:
    """Asked to stop at text it emitted at temperature 0, the model ends just before it."""
    feature = probe.completions() if kind == "completions" else probe.chat()
    feature.require()
    path = "/v1/completions" if kind == "completions" else "/v1/chat/completions"

    def build(server: InferenceServer, **extra: Any) -> dict[str, Any]:
        if kind == "completions":
            return _completion(server, **extra)
        return _chat(server, **chat_extra, **extra)

    def text_of(body: dict[str, Any]) -> str:
        choice = body["choices"][0]
        return str(choice["text"] if kind == "completions" else choice["message"]["content"])

    max_tokens = 48
    first = post_ok(http_client, path, build(inference_server, max_tokens=max_tokens))
    text = text_of(first)
    picked = _pick_stop(text)
    if picked is None:
        pytest.skip(f"the model emitted no usable stop candidate: {text!r}")
    stop, at = picked
    second = post_ok(http_client, path, build(inference_server, max_tokens=max_tokens, stop=[stop]))
    stopped = text_of(second)
    choice = second["choices"][0]
    assert stop not in stopped, f"stop {stop!r} appears in the output {stopped!r}"
    assert stopped == text[:at], _text_diff(
        "output with stop", stopped, "expected prefix", text[:at]
    )
    assert choice["finish_reason"] == "stop", (
        f"finish_reason {choice['finish_reason']!r} after stop sequence {stop!r} (expected 'stop')"
    )
    assert _usage(second)["completion_tokens"] < max_tokens, "the stop did not end generation early"


def test_n_returns_distinct_choices(
    completions: None,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    engine_identity: tuple[str, str | None],
) -> None:
    """n=3 at temperature 1 returns three different choices indexed 0, 1, 2; usage counts
    all of them."""
    n, max_tokens = 3, 8
    body = post_ok(
        http_client,
        "/v1/completions",
        _completion(inference_server, n=n, temperature=1.0, max_tokens=max_tokens),
    )
    choices = body["choices"]
    if len(choices) != n:
        excuse(engine_identity, "n=3", body)
    indexes = sorted(c.get("index") for c in choices)
    assert indexes == list(range(n)), f"choice indexes {indexes}, expected {list(range(n))}"
    for choice in choices:
        assert isinstance(choice.get("text"), str), f"choice without text: {choice}"
        assert choice.get("finish_reason") in ("length", "stop"), f"finish in {choice}"
    texts = [choice["text"] for choice in sorted(choices, key=lambda c: c["index"])]
    repeated = sorted({text for text in texts if texts.count(text) > 1})
    assert not repeated, (
        f"n={n} at temperature 1 returned the same text more than once: {texts} (the choices "
        "were not sampled independently)"
    )
    usage = _usage(body)
    assert n <= usage["completion_tokens"] <= n * max_tokens, (
        f"usage.completion_tokens {usage['completion_tokens']} outside {n}..{n * max_tokens} "
        f"for n={n}, max_tokens={max_tokens}"
    )


def test_completion_logprobs_shape(
    probe: ServerProbe,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    engine_identity: tuple[str, str | None],
) -> None:
    """logprobs=3: one entry per generated token, at most 3 alternatives, the greedy one on top."""
    probe.completion_logprobs().require()
    k, max_tokens = 3, 8
    # The greedy token is the top logprob only under OpenAI's sampling defaults (no penalties).
    extra = openai_defaults(engine_identity)
    body = post_ok(
        http_client,
        "/v1/completions",
        _completion(inference_server, logprobs=k, max_tokens=max_tokens, **extra),
    )
    usage = _usage(body)
    logprobs = body["choices"][0].get("logprobs")
    assert isinstance(logprobs, dict), f"logprobs is {logprobs!r}"
    tokens = logprobs.get("tokens")
    count = usage["completion_tokens"]
    assert isinstance(tokens, list) and len(tokens) == count, (
        f"{len(tokens or [])} logprob tokens for {count} completion tokens"
    )
    token_lps: list[Any] = logprobs.get("token_logprobs") or []
    tops: list[Any] = logprobs.get("top_logprobs") or []
    offsets: list[Any] = logprobs.get("text_offset") or []
    for name, values in (
        ("token_logprobs", token_lps),
        ("top_logprobs", tops),
        ("text_offset", offsets),
    ):
        assert isinstance(values, list) and len(values) == count, (
            f"logprobs.{name} has {len(values) if isinstance(values, list) else values!r} "
            f"entries, expected {count}"
        )
    assert offsets == sorted(offsets), f"text_offset not non-decreasing: {offsets}"
    for i, (token, lp, top) in enumerate(zip(tokens, token_lps, tops, strict=True)):
        assert isinstance(lp, float) and lp <= 0.0 and not math.isnan(lp), (
            f"token {i} {token!r}: logprob {lp!r} is not a number <= 0"
        )
        assert isinstance(top, dict) and 1 <= len(top) <= k, (
            f"token {i}: top_logprobs has {len(top) if isinstance(top, dict) else top!r} entries, "
            f"expected 1..{k}"
        )
        best = max(top.values())
        assert lp >= best - LOGPROB_TOLERANCE, (
            f"token {i} {token!r} (logprob {lp:.4f}) is not the top choice {top} at temperature 0"
        )


def test_chat_logprobs_shape(
    probe: ServerProbe,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    engine_identity: tuple[str, str | None],
) -> None:
    """Chat logprobs=true, top_logprobs=2: one entry per token, two alternatives each."""
    probe.chat_logprobs().require()
    k, max_tokens = 2, 8
    extra = openai_defaults(engine_identity)
    body = post_ok(
        http_client,
        "/v1/chat/completions",
        _chat(inference_server, logprobs=True, top_logprobs=k, max_tokens=max_tokens, **extra),
    )
    usage = _usage(body)
    logprobs = body["choices"][0].get("logprobs")
    assert isinstance(logprobs, dict), f"logprobs is {logprobs!r}"
    content = logprobs.get("content")
    count = usage["completion_tokens"]
    assert isinstance(content, list) and len(content) == count, (
        f"{len(content or [])} logprob entries for {count} completion tokens"
    )
    for i, entry in enumerate(content):
        assert isinstance(entry.get("token"), str), f"entry {i} has no token string: {entry}"
        lp = entry.get("logprob")
        assert isinstance(lp, float) and lp <= 0.0, f"entry {i}: logprob {lp!r} is not <= 0"
        top = entry.get("top_logprobs")
        assert isinstance(top, list) and len(top) == k, (
            f"entry {i}: {len(top) if isinstance(top, list) else top!r} top_logprobs, expected {k}"
        )
        best = max(alt["logprob"] for alt in top)
        assert lp >= best - LOGPROB_TOLERANCE, (
            f"entry {i} {entry['token']!r} (logprob {lp:.4f}) is not the top choice at "
            f"temperature 0: {top}"
        )


# -- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_temperature_zero_is_deterministic(
    kind: str, probe: ServerProbe, http_client: httpx.Client, inference_server: InferenceServer
) -> None:
    """Three identical requests at temperature 0 return the same text."""
    (probe.completions() if kind == "completions" else probe.chat()).require()
    path = "/v1/completions" if kind == "completions" else "/v1/chat/completions"
    request = (_completion if kind == "completions" else _chat)(inference_server, max_tokens=24)
    request.pop("seed")
    texts = []
    for _ in range(3):
        choice = post_ok(http_client, path, request)["choices"][0]
        texts.append(choice["text"] if kind == "completions" else choice["message"]["content"])
    for i, text in enumerate(texts[1:], start=2):
        assert text == texts[0], _text_diff(f"call {i}", text, "call 1", texts[0])


def test_seed_reproduces_sampling(
    completions: None, http_client: httpx.Client, inference_server: InferenceServer
) -> None:
    """At temperature 1 the same seed gives the same text, and other seeds change it."""

    def sample(seed: int) -> str:
        body = _completion(inference_server, temperature=1.0, seed=seed, max_tokens=24)
        return str(post_ok(http_client, "/v1/completions", body)["choices"][0]["text"])

    first, again = sample(42), sample(42)
    assert again == first, _text_diff("seed 42, second call", again, "first call", first)
    others = {seed: sample(seed) for seed in (1, 2, 3)}
    assert any(text != first for text in others.values()), (
        f"seeds 1, 2, 3 all reproduced seed 42's text {first!r}: the sampler ignores the seed "
        "or temperature"
    )


def test_prompt_list_returns_one_choice_per_prompt(
    completions: None,
    http_client: httpx.Client,
    inference_server: InferenceServer,
    token_counter: TokenCounter,
    engine_identity: tuple[str, str | None],
) -> None:
    """A list of prompts in one request returns one choice per prompt; usage adds them up."""
    prompts = ["First prompt", "A second, longer prompt here", "3"]
    max_tokens = 5
    request = _completion(inference_server, prompt=prompts, max_tokens=max_tokens)
    response = http_client.post("/v1/completions", json=request)
    if response.status_code == 200:
        body = response.json()
    else:
        excuse(engine_identity, "prompt list", response)
        body = post_ok(http_client, "/v1/completions", request)  # fails with the message
    indexes = sorted(c.get("index") for c in body["choices"])
    assert indexes == list(range(len(prompts))), (
        f"{len(prompts)} prompts gave choice indexes {indexes}"
    )
    usage = _usage(body)
    expected = sum(token_counter.count(p) for p in prompts)
    assert usage["prompt_tokens"] == expected, (
        f"usage.prompt_tokens {usage['prompt_tokens']} != {expected}, the sum over the prompts "
        f"counted by {token_counter.source}"
    )
    assert usage["completion_tokens"] <= len(prompts) * max_tokens, f"usage {usage}"


# -- concurrency -------------------------------------------------------------------------------


def test_hundred_requests_at_concurrency_ten(
    completions: None, inference_server: InferenceServer, record_property: Any
) -> None:
    """100 short completions, 10 in flight at a time, all succeed with a well-formed answer."""
    total, concurrency, max_tokens = 100, 10, 4
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(
        base_url=inference_server.base_url,
        headers=inference_server.auth_headers(),
        timeout=httpx.Timeout(120.0, connect=5.0),
        limits=limits,
    ) as client:

        def one(i: int) -> str | None:
            body = {
                "model": inference_server.model,
                "prompt": f"Request number {i} says",
                "max_tokens": max_tokens,
                "temperature": 0.0,
            }
            try:
                response = client.post("/v1/completions", json=body)
            except httpx.HTTPError as exc:
                return f"request {i}: {type(exc).__name__}: {exc}"
            if response.status_code != 200:
                return f"request {i}: HTTP {response.status_code}: {error_message(response)}"
            answer = response.json()
            choices = answer.get("choices") or []
            if len(choices) != 1 or not isinstance(choices[0].get("text"), str):
                return f"request {i}: malformed choices {str(choices)[:200]}"
            used = (answer.get("usage") or {}).get("completion_tokens")
            if not isinstance(used, int) or not 0 <= used <= max_tokens:
                return f"request {i}: usage.completion_tokens {used!r}"
            return None

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            problems = [p for p in pool.map(one, range(total)) if p]
        elapsed = time.monotonic() - started
    record_property("concurrency_10x100_s", round(elapsed, 3))
    assert not problems, f"{len(problems)}/{total} requests failed; first: {problems[:5]}"


# -- the official client ------------------------------------------------------------------------


@pytest.fixture
def sdk_texts(openai_client: Any, inference_server: InferenceServer) -> Iterator[Any]:
    """The openai client, after checking it lists the served model."""
    ids = [model.id for model in openai_client.models.list()]
    assert inference_server.model in ids, f"openai client: models.list() gave {ids}"
    yield openai_client


def test_openai_client_completions(
    completions: None, sdk_texts: Any, inference_server: InferenceServer
) -> None:
    """The official openai client completes, and its stream adds up to the same text."""
    kwargs = {
        "model": inference_server.model,
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0.0,
        "seed": SEED,
    }
    whole = sdk_texts.completions.create(**kwargs)
    assert whole.usage is not None and whole.usage.completion_tokens <= 12, f"{whole.usage}"
    pieces = [
        c.choices[0].text for c in sdk_texts.completions.create(**kwargs, stream=True) if c.choices
    ]
    streamed = "".join(pieces)
    assert streamed == whole.choices[0].text, _text_diff(
        "SDK streamed", streamed, "SDK non-streamed", whole.choices[0].text
    )


def test_openai_client_chat(
    chat: None,
    sdk_texts: Any,
    inference_server: InferenceServer,
    engine_identity: tuple[str, str | None],
    chat_extra: dict[str, Any],
) -> None:
    """The official client's chat call and its stream (with usage) agree."""
    kwargs: dict[str, Any] = {
        "model": inference_server.model,
        "messages": MESSAGES,
        "max_tokens": 12,
        "temperature": 0.0,
        "seed": SEED,
    }
    if chat_extra:
        kwargs["extra_body"] = chat_extra
    whole = sdk_texts.chat.completions.create(**kwargs)
    text = whole.choices[0].message.content
    assert isinstance(text, str), f"content is {text!r}"
    chunks = list(
        sdk_texts.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text, _text_diff("SDK streamed", streamed, "SDK non-streamed", text)
    usage = [c.usage for c in chunks if c.usage is not None]
    if not usage:
        events = [c.model_dump() for c in chunks]
        excuse(engine_identity, "stream:include_usage", events)
    assert usage, "the SDK stream carried no usage chunk despite include_usage"
    assert usage[-1].completion_tokens == whole.usage.completion_tokens, (
        f"streamed usage {usage[-1]} != non-streamed {whole.usage}"
    )


def test_openai_client_raises_bad_request(
    completions: None,
    sdk_texts: Any,
    inference_server: InferenceServer,
    engine_identity: tuple[str, str | None],
) -> None:
    """An invalid request surfaces in the client as openai.BadRequestError (HTTP 400)."""
    import openai

    try:
        sdk_texts.completions.create(model=inference_server.model, prompt=PROMPT, max_tokens=-1)
    except openai.APIStatusError as exc:
        if not isinstance(exc, openai.BadRequestError):
            excuse(engine_identity, "sdk:bad request", exc.response)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_texts.completions.create(model=inference_server.model, prompt=PROMPT, max_tokens=-1)
    assert caught.value.status_code == 400, f"status {caught.value.status_code}"
