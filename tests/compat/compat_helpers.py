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
    from pytest_gpuinfer.plugin.state import RUN_STATE

    state = config.stash.get(RUN_STATE, None)
    return state.settings.server_scope if state is not None else "session"


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
    """GET /health must answer 200; the message names what happened just before."""
    try:
        response = client.get("/health", timeout=30.0)
    except httpx.HTTPError as exc:
        pytest.fail(
            f"/health did not answer after {after}: {type(exc).__name__}: {exc}", pytrace=False
        )
    assert response.status_code == 200, (
        f"/health answered {response.status_code} after {after}: {response.text[:300]}"
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
    """HTTP 500 (vLLM's answer to an integer top_k >= 2**64)."""
    return response.status_code == 500


def _fastapi_detail_400(response: httpx.Response) -> bool:
    """400 with FastAPI's {'detail': ...} body instead of an OpenAI error object."""
    body = _json_or_none(response)
    return (
        response.status_code == 400
        and isinstance(body, dict)
        and "detail" in body
        and "error" not in body
    )


@dataclass(frozen=True)
class Deviation:
    """A check a given engine version is known to fail, what it does instead, and how to tell."""

    engine: str
    versions: tuple[str, ...]
    check: str
    observed: str
    matches: Callable[[httpx.Response], bool]
    """True when a response shows exactly this deviation (anything else still fails)."""


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

STRICT_ENV = "GPUINFER_COMPAT_STRICT"
"""Set to 1 to report known deviations as plain failures instead of expected failures."""


def xfail_if_known_deviation(
    identity: tuple[str, str | None], check: str, response: httpx.Response
) -> None:
    """xfail when this engine version is known to fail ``check`` AND the response shows it.

    Only the documented behaviour is excused: a different failure of the same check (a 500
    where the known deviation is a 200, say) still fails the test.
    """
    if os.environ.get(STRICT_ENV, "") not in ("", "0"):
        return
    engine, version = identity
    for deviation in KNOWN_DEVIATIONS:
        known = deviation.engine == engine and version in deviation.versions
        if deviation.check == check and known and deviation.matches(response):
            pytest.xfail(
                f"known {engine} {version} deviation ({STRICT_ENV}=1 to fail instead): "
                f"{deviation.observed}"
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
