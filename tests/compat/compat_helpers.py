"""Request helpers and token counting shared by the compat tests (imported as compat_helpers)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.targets.probe import error_message

SCOPES = ("function", "class", "module", "package", "session")


def server_scope(fixture_name: str, config: pytest.Config) -> Any:
    """The scope of ``inference_server`` (--server-scope), for fixtures that hold on to it."""
    from pytest_gpuinfer.plugin.fixtures import gpuinfer_settings_of

    return gpuinfer_settings_of(config).server_scope


def at_most(scope: str) -> Callable[[str, pytest.Config], Any]:
    """A dynamic scope: ``scope`` or the server's scope, whichever is narrower."""

    def pick(fixture_name: str, config: pytest.Config) -> Any:
        server = server_scope(fixture_name, config)
        return min(scope, server, key=SCOPES.index)

    return pick


COLD_START_KEY = pytest.StashKey[dict[str, float]]()
"""Where the cold-start test leaves its figures for the terminal summary line."""


@dataclass
class TokenCounter:
    """Counts tokens the way the server will: completions add BOS, chat applies the template."""

    source: str
    prompt_ids: Callable[[str], list[int]]
    chat_ids: Callable[[Sequence[dict[str, Any]]], list[int]] | None
    notes: list[str] = field(default_factory=list)

    def count(self, prompt: str) -> int:
        """Tokens of a completions prompt, special tokens included."""
        return len(self.prompt_ids(prompt))

    def count_chat(self, messages: Sequence[dict[str, Any]]) -> int:
        """Tokens of chat messages after the chat template with the generation prompt."""
        if self.chat_ids is None:
            pytest.skip(f"cannot count chat tokens with {self.source}: {'; '.join(self.notes)}")
        return len(self.chat_ids(messages))


def local_counter(tokenizer: Any) -> TokenCounter:
    """A counter on the transformers tokenizer (chat through its chat template)."""

    def prompt_ids(text: str) -> list[int]:
        return list(tokenizer(text).input_ids)

    chat_ids: Callable[[Sequence[dict[str, Any]]], list[int]] | None = None
    notes: list[str] = []
    if getattr(tokenizer, "chat_template", None):

        def chat_ids(messages: Sequence[dict[str, Any]]) -> list[int]:
            rendered = tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
            return list(tokenizer(rendered, add_special_tokens=False).input_ids)
    else:
        notes.append("the tokenizer has no chat template")
    return TokenCounter("the local tokenizer (transformers)", prompt_ids, chat_ids, notes)


# -- request helpers ---------------------------------------------------------------------------


def post_ok(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` and return the JSON answer, failing with the server's message if not 200."""
    response = client.post(path, json=body)
    if response.status_code != 200:
        pytest.fail(
            f"POST {path} answered {response.status_code}: {error_message(response)}\n"
            f"request: {json.dumps(body)[:500]}",
            pytrace=False,
        )
    data = response.json()
    assert isinstance(data, dict), f"POST {path} answered a non-object: {str(data)[:300]}"
    return data


def sse_events(lines: Iterator[str]) -> list[dict[str, Any]]:
    """Decode SSE lines into JSON events; the stream must end with ``data: [DONE]``."""
    events: list[dict[str, Any]] = []
    done = False
    for line in lines:
        if not line or line.startswith(":"):
            continue
        assert line.startswith("data:"), f"not an SSE data line: {line[:200]!r}"
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            done = True
            continue
        assert not done, f"data after [DONE]: {payload[:200]!r}"
        try:
            event = json.loads(payload)
        except ValueError:
            pytest.fail(f"SSE data is not JSON: {payload[:300]!r}", pytrace=False)
        if isinstance(event, dict) and "error" in event:
            pytest.fail(f"the stream carried an error event: {payload[:500]}", pytrace=False)
        assert isinstance(event, dict), f"SSE event is not a JSON object: {payload[:200]!r}"
        events.append(event)
    assert done, "the stream did not end with data: [DONE]"
    return events


def stream_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streaming request and return its decoded SSE events (well-formedness checked)."""
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        if response.status_code != 200:
            response.read()
            pytest.fail(
                f"streaming POST {path} answered {response.status_code}: {error_message(response)}",
                pytrace=False,
            )
        content_type = response.headers.get("content-type", "")
        assert content_type.startswith("text/event-stream"), (
            f"streaming answer has content-type {content_type!r}, not text/event-stream"
        )
        return sse_events(response.iter_lines())


def assert_healthy(client: httpx.Client, after: str) -> None:
    """The server still answers: GET /health 200, or GET /v1/models 200 where /health is absent.

    /health is not an OpenAI route: a server without it (404/405) is judged by /v1/models
    listing a model, the same rule the readiness wait uses.
    """
    route = "/health"
    try:
        try:
            response = client.get(route, timeout=30.0)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            # The server closed the kept-alive connection after its last answer (llama.cpp does
            # after a 500); health is a question for a fresh connection.
            with httpx.Client(base_url=client.base_url, headers=client.headers) as fresh:
                response = fresh.get(route, timeout=30.0)
        if response.status_code in (404, 405):
            route = "/v1/models"
            response = client.get(route, timeout=30.0)
    except httpx.HTTPError as exc:
        pytest.fail(
            f"{route} did not answer after {after}: {type(exc).__name__}: {exc}", pytrace=False
        )
    assert response.status_code == 200, (
        f"{route} answered {response.status_code} after {after}: {response.text[:300]}"
    )
    if route == "/v1/models":
        data = _json_or_none(response)
        assert isinstance(data, dict) and data.get("data"), (
            f"/v1/models lists no model after {after}: {response.text[:300]}"
        )


def check_finish(
    choice: dict[str, Any],
    completion_tokens: int,
    max_tokens: int,
    *,
    retry: Callable[[int], tuple[str | None, int]] | None = None,
) -> None:
    """finish_reason is "length" exactly when completion_tokens reached max_tokens, else "stop"."""
    # A real model may end on EOS as the last allowed token: engines report "stop" with
    # completion_tokens == max_tokens. ``retry(n)`` re-asks the same temperature-0 request with
    # max_tokens n and returns (finish_reason, completion_tokens); stopping at the same count
    # when one more token is allowed proves the stop was natural.
    finish = choice.get("finish_reason")
    assert completion_tokens <= max_tokens, (
        f"completion_tokens {completion_tokens} > max_tokens {max_tokens}"
    )
    if finish == "stop" and completion_tokens == max_tokens and retry is not None:
        again = retry(max_tokens + 1)
        assert again == ("stop", completion_tokens), (
            f"finish_reason 'stop' with completion_tokens == max_tokens {max_tokens}, but with "
            f"max_tokens {max_tokens + 1} the same request gave {again} instead of stopping at "
            f"{completion_tokens} again: the 'stop' should have been 'length'"
        )
        return
    expected = "length" if completion_tokens == max_tokens else "stop"
    assert finish == expected, (
        f"finish_reason {finish!r} but completion_tokens {completion_tokens} "
        f"{'==' if expected == 'length' else '<'} max_tokens {max_tokens} (expected {expected!r})"
    )


def finish_retry(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> Callable[[int], tuple[str | None, int]]:
    """A ``retry`` for :func:`check_finish`: the same request with another max_tokens."""

    def again(max_tokens: int) -> tuple[str | None, int]:
        answer = post_ok(client, path, {**body, "max_tokens": max_tokens})
        return answer["choices"][0].get("finish_reason"), int(answer["usage"]["completion_tokens"])

    return again


# -- known engine deviations -------------------------------------------------------------------


def _json_or_none(response: httpx.Response) -> Any:
    """The response body as JSON, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _clamped_completion(response: httpx.Response) -> bool:
    """200 with fewer completion tokens than asked: vLLM shrank max_tokens to the room left."""
    body = _json_or_none(response)
    if response.status_code != 200 or not isinstance(body, dict):
        return False
    return int((body.get("usage") or {}).get("completion_tokens", -1)) == 3


def _max_tokens_zero_message(response: httpx.Response) -> bool:
    """400 whose message is vLLM's 'max_tokens must be at least 1, got 0'."""
    return response.status_code == 400 and "at least 1, got 0" in response.text


def _empty_500(response: httpx.Response) -> bool:
    """HTTP 500 with an empty error message (vLLM's answer to an integer top_k >= 2**64)."""
    body = _json_or_none(response)
    error = body.get("error") if isinstance(body, dict) else None
    return response.status_code == 500 and isinstance(error, dict) and not error.get("message")


def _fastapi_detail_400(response: httpx.Response) -> bool:
    """400 with FastAPI's {'detail': ...} body instead of an OpenAI error object."""
    body = _json_or_none(response)
    return (
        response.status_code == 400
        and isinstance(body, dict)
        and "detail" in body
        and "error" not in body
    )


def _pydantic_500(response: httpx.Response) -> bool:
    """HTTP 500 whose OpenAI-shaped message is a pydantic validation error of the body."""
    body = _json_or_none(response)
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return (
        response.status_code == 500
        and isinstance(message, str)
        and "validation error" in message
        and "'loc': ('body'" in message
    )


def _plain_text_500(response: httpx.Response) -> bool:
    """HTTP 500 with the plain-text body "Internal Server Error" (not JSON at all)."""
    return (
        response.status_code == 500
        and response.headers.get("content-type", "").startswith("text/plain")
        and response.text.strip() == "Internal Server Error"
    )


def _generated_200(response: httpx.Response) -> bool:
    """HTTP 200 with choices: the request was served as if it were valid."""
    body = _json_or_none(response)
    return (
        response.status_code == 200
        and isinstance(body, dict)
        and isinstance(body.get("choices"), list)
    )


def _rejected_as_500_or_served(response: httpx.Response) -> bool:
    """One of llama-cpp-python's two answers to an invalid value: pydantic 500, or served."""
    return _pydantic_500(response) or _generated_200(response)


def _bad_body_500(response: httpx.Response) -> bool:
    """llama-cpp-python's answers to a body its schema rejects: a 500 either way, or served."""
    return _pydantic_500(response) or _plain_text_500(response) or _generated_200(response)


def _decode_failed_500(response: httpx.Response) -> bool:
    """HTTP 500 whose message is llama.cpp's "llama_decode returned 1" (no room in the cache)."""
    return response.status_code == 500 and "llama_decode returned 1" in error_message(response)


def _no_usage_in_stream(events: Any) -> bool:
    """A decoded stream in which no chunk carries usage (include_usage was ignored)."""
    return (
        isinstance(events, list)
        and bool(events)
        and not any(
            isinstance(event, dict) and isinstance(event.get("usage"), dict) for event in events
        )
    )


def _one_choice(response: Any) -> bool:
    """An answer (decoded JSON) with exactly one choice although n > 1 was asked."""
    return isinstance(response, dict) and len(response.get("choices") or []) == 1


def _empty_internal_error(response: httpx.Response) -> bool:
    """HTTP 500 with an OpenAI error whose message is empty (type internal_server_error)."""
    body = _json_or_none(response)
    error = body.get("error") if isinstance(body, dict) else None
    return (
        response.status_code == 500
        and isinstance(error, dict)
        and error.get("message") == ""
        and error.get("type") == "internal_server_error"
    )


@dataclass(frozen=True)
class Deviation:
    """A check a given engine version is known to fail, what it does instead, and how to tell."""

    engine: str
    versions: tuple[str, ...]
    check: str
    observed: str
    matches: Callable[[Any], bool]
    """True when the evidence (a response, or a stream's decoded events) shows exactly this
    deviation; anything else still fails."""


KNOWN_DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "vllm",
        ("0.32.0",),
        "limits:prompt+max_tokens=context+1",
        "vLLM clamps max_tokens to the room left in the context instead of answering 400: a "
        "prompt of context-3 tokens with max_tokens=4 returns 200 with 3 completion tokens and "
        "finish_reason 'length' (get_max_tokens in vllm/entrypoints/serve/utils/api_utils.py)",
        _clamped_completion,
    ),
    Deviation(
        "vllm",
        ("0.32.0",),
        "limits:prompt=context,max_tokens=1",
        "vLLM answers 400 but with 'max_tokens must be at least 1, got 0' (it clamped max_tokens "
        "to 0 first), a message that does not mention the context length",
        _max_tokens_zero_message,
    ),
    Deviation(
        "vllm",
        ("0.32.0",),
        "bad-input:top_k=2**64",
        "vLLM answers HTTP 500 with an empty message for an integer top_k >= 2**64 (2**63 is "
        "accepted as 200); the server stays healthy",
        _empty_500,
    ),
    Deviation(
        "vllm",
        ("0.32.0",),
        "error-shape:invalid UTF-8",
        "vLLM answers 400 with FastAPI's {'detail': 'There was an error parsing the body'} "
        "instead of an OpenAI {'error': {...}} body when the request is not valid UTF-8",
        _fastapi_detail_400,
    ),
)
"""Deviations observed on specific engine versions; the checks stay strict everywhere else."""

LLAMACPP = ("0.3.36",)
"""llama-cpp-python versions whose llama.cpp server deviations below were observed."""

_LLAMACPP_VALIDATION_500 = (
    "llama-cpp-python answers a body that fails its own pydantic validation with HTTP 500 (an "
    "OpenAI error object whose message is the validation error and a server traceback) "
    "instead of a 4xx"
)
_LLAMACPP_ACCEPTS = (
    "llama-cpp-python serves the request with 200 instead of rejecting it: it does not check "
    "the model name, empty prompts or messages, n, logprobs, max_tokens above the context "
    "(or 0, meaning unlimited) or temperature outside [0, 2]"
)
_LLAMACPP_PLAIN_500 = (
    "llama-cpp-python answers a body that is not JSON (truncated, not UTF-8) with a plain-text "
    "HTTP 500 'Internal Server Error' (its error handler re-parses the body and fails) and "
    "closes the connection"
)


def _llamacpp(
    checks: tuple[str, ...], observed: str, matches: Callable[[Any], bool]
) -> tuple[Deviation, ...]:
    """One llama.cpp deviation entry per check it applies to."""
    return tuple(Deviation("llamacpp", LLAMACPP, check, observed, matches) for check in checks)


KNOWN_DEVIATIONS += (
    *_llamacpp(
        (
            "bad-input:negative max_tokens",
            "bad-input:prompt is an object",
            "bad-input:max_tokens is a word",
            "bad-input:messages is a string",
            "error-shape:negative max_tokens",
            "fuzz:wrong types",
            "sdk:bad request",
        ),
        _LLAMACPP_VALIDATION_500,
        _pydantic_500,
    ),
    *_llamacpp(
        (
            "bad-input:max_tokens 2**64",
            "bad-input:temperature -1",
            "bad-input:temperature 1e9",
            "bad-input:unknown model",
            "bad-input:empty messages",
            "bad-input:empty prompt",
            "bad-input:n=0",
            "bad-input:logprobs 1000",
            "error-shape:unknown model",
            "fuzz:unknown model",
        ),
        _LLAMACPP_ACCEPTS,
        _generated_200,
    ),
    *_llamacpp(
        ("fuzz:max_tokens", "fuzz:sampling", "fuzz:empty"),
        f"{_LLAMACPP_VALIDATION_500} for some values; {_LLAMACPP_ACCEPTS} for the others",
        _rejected_as_500_or_served,
    ),
    *_llamacpp(
        (
            "bad-input:truncated JSON",
            "bad-input:invalid UTF-8",
            "error-shape:truncated JSON",
            "error-shape:invalid UTF-8",
            "fuzz:invalid utf-8",
        ),
        _LLAMACPP_PLAIN_500,
        _plain_text_500,
    ),
    *_llamacpp(
        ("schemathesis", "fuzz:malformed json"),
        f"{_LLAMACPP_VALIDATION_500}; {_LLAMACPP_PLAIN_500}; {_LLAMACPP_ACCEPTS}",
        _bad_body_500,
    ),
    *_llamacpp(
        ("stream:include_usage",),
        "llama-cpp-python ignores stream_options.include_usage: no chunk of the stream carries "
        "usage",
        _no_usage_in_stream,
    ),
    *_llamacpp(
        ("n=3",),
        "llama-cpp-python ignores n: one choice comes back for n=3",
        _one_choice,
    ),
    *_llamacpp(
        ("limits:prompt+max_tokens=context",),
        "llama-cpp-python answers HTTP 500 'llama_decode returned 1' when prompt + max_tokens "
        "fill the context exactly: the last token finds no room in the KV cache",
        _decode_failed_500,
    ),
    *_llamacpp(
        ("limits:prompt+max_tokens=context+1",),
        "llama-cpp-python, like vLLM, clamps max_tokens to the room left in the context "
        "instead of answering 400: a prompt of context-3 tokens with max_tokens=4 returns 200 "
        "with 3 completion tokens",
        _clamped_completion,
    ),
    *_llamacpp(
        ("limits:max_tokens>context",),
        "llama-cpp-python accepts max_tokens above the context length (200) and generates "
        "until the context is full",
        _generated_200,
    ),
    *_llamacpp(
        ("prompt list",),
        "llama-cpp-python answers a list of prompts with HTTP 500 and an empty error message "
        "(it supports a single prompt per request)",
        _empty_internal_error,
    ),
)


GENERATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "llamacpp": {"repeat_penalty": 1.0},
}
"""Per engine family, sampling settings whose defaults differ from OpenAI's, set to OpenAI's.

llama.cpp applies repeat_penalty 1.1 unless told otherwise, so its temperature-0 tokens are not
the most probable ones its logprobs report; checks that compare the two send these settings
explicitly instead of excusing the difference."""


def openai_defaults(identity: tuple[str, str | None]) -> dict[str, Any]:
    """The request fields that make this engine sample with OpenAI's defaults."""
    return dict(GENERATION_DEFAULTS.get(identity[0], {}))


STRICT_ENV = "GPUINFER_COMPAT_STRICT"
"""Set to 1 to report known deviations as plain failures instead of expected failures."""


def known_deviation(
    identity: tuple[str, str | None], check: str, evidence: Any
) -> Deviation | None:
    """The documented deviation of this engine version that ``evidence`` shows, or None."""
    if os.environ.get(STRICT_ENV, "") not in ("", "0"):
        return None
    engine, version = identity
    for deviation in KNOWN_DEVIATIONS:
        known = deviation.engine == engine and version in deviation.versions
        if deviation.check == check and known and deviation.matches(evidence):
            return deviation
    return None


def xfail_if_known_deviation(identity: tuple[str, str | None], check: str, response: Any) -> None:
    """xfail when this engine version is known to fail ``check`` AND the response shows it.

    Only the documented behaviour is excused: a different failure of the same check (a 500
    where the known deviation is a 200, say) still fails the test.
    """
    deviation = known_deviation(identity, check, response)
    if deviation is not None:
        engine, version = identity
        pytest.xfail(
            f"known {engine} {version} deviation ({STRICT_ENV}=1 to fail instead): "
            f"{deviation.observed}"
        )


def xfail_if_all_known(identity: tuple[str, str | None], check: str, evidence: list[Any]) -> None:
    """xfail when every piece of evidence shows a documented deviation of ``check``."""
    found = [known_deviation(identity, check, item) for item in evidence]
    if evidence and all(found):
        engine, version = identity
        observed = "; ".join(dict.fromkeys(d.observed for d in found if d is not None))
        pytest.xfail(
            f"known {engine} {version} deviation ({STRICT_ENV}=1 to fail instead), all "
            f"{len(evidence)} cases: {observed}"
        )


# -- engine subprocesses (offline LLM, run_batch) ---------------------------------------------

ENGINE_FLAGS: dict[str, tuple[str, bool]] = {
    "--dtype": ("dtype", True),
    "--quantization": ("quantization", True),
    "--tokenizer": ("tokenizer", True),
    "--kv-cache-dtype": ("kv_cache_dtype", True),
    "--trust-remote-code": ("trust_remote_code", False),
    "--enforce-eager": ("enforce_eager", False),
}
"""Server flags that change what the model computes; offline runs must repeat them."""


def model_flags(engine_args: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """The model-affecting flags among the server's engine args, as CLI args and LLM kwargs."""
    argv: list[str] = []
    kwargs: dict[str, Any] = {}
    args = list(engine_args)
    for i, arg in enumerate(args):
        flag, _, inline = arg.partition("=")
        if flag not in ENGINE_FLAGS:
            continue
        name, takes_value = ENGINE_FLAGS[flag]
        if not takes_value:
            argv.append(flag)
            kwargs[name] = True
            continue
        value = inline or (args[i + 1] if i + 1 < len(args) else "")
        argv += [flag, value]
        kwargs[name] = value
    return argv, kwargs


@dataclass
class SubprocessResult:
    """How an engine subprocess ended: exit code (None if killed at the timeout) and its log."""

    returncode: int | None
    seconds: float
    log: str


def run_engine_process(
    argv: Sequence[str], *, env: dict[str, str], log_path: Any, timeout_s: float
) -> SubprocessResult:
    """Run an engine command in its own process group; the whole group is gone on return."""
    import time

    from pytest_gpuinfer.targets.process import ManagedProcess, read_log_tail

    started = time.monotonic()
    process = ManagedProcess(argv, log_path=log_path, env=env)
    try:
        while process.returncode() is None and time.monotonic() - started < timeout_s:
            time.sleep(0.5)
        code = process.returncode()
    finally:
        process.stop(grace_s=10.0)
    return SubprocessResult(code, time.monotonic() - started, read_log_tail(log_path, 60))
