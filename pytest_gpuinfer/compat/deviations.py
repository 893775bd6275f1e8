"""Known engine deviations: what a given engine version does instead of what a check expects.

Each entry names the engine, the versions it was observed on, the check, what the engine does,
and a predicate that recognises exactly that behaviour in the evidence (a response, or a
stream's decoded events). Only evidence matching the predicate is excused; anything else still
fails, and an engine that behaves correctly passes. ``GPUINFER_COMPAT_STRICT=1`` turns every
excuse off.

Documented absences are the other half: messages by which an engine says that a capability is
switched off (vLLM: ``tool_choice="required" requires --tool-call-parser to be set``). A 400
with such a message is an absent capability, not a broken one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from pytest_gpuinfer.compat.findings import (
    Deviation,
    Finding,
    Outcome,
    error_message,
    json_or_none,
)

# -- known engine deviations -------------------------------------------------------------------


def _clamped_completion(response: httpx.Response) -> bool:
    """200 with fewer completion tokens than asked: vLLM shrank max_tokens to the room left."""
    body = json_or_none(response)
    if response.status_code != 200 or not isinstance(body, dict):
        return False
    return int((body.get("usage") or {}).get("completion_tokens", -1)) == 3


def _max_tokens_zero_message(response: httpx.Response) -> bool:
    """400 whose message is vLLM's 'max_tokens must be at least 1, got 0'."""
    return response.status_code == 400 and "at least 1, got 0" in response.text


def _empty_500(response: httpx.Response) -> bool:
    """HTTP 500 with an empty error message (vLLM's answer to an integer top_k >= 2**64)."""
    body = json_or_none(response)
    error = body.get("error") if isinstance(body, dict) else None
    return response.status_code == 500 and isinstance(error, dict) and not error.get("message")


def _fastapi_detail_400(response: httpx.Response) -> bool:
    """400 with FastAPI's {'detail': ...} body instead of an OpenAI error object."""
    body = json_or_none(response)
    return (
        response.status_code == 400
        and isinstance(body, dict)
        and "detail" in body
        and "error" not in body
    )


def _pydantic_500(response: httpx.Response) -> bool:
    """HTTP 500 whose OpenAI-shaped message is a pydantic validation error of the body."""
    body = json_or_none(response)
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
    body = json_or_none(response)
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
    body = json_or_none(response)
    error = body.get("error") if isinstance(body, dict) else None
    return (
        response.status_code == 500
        and isinstance(error, dict)
        and error.get("message") == ""
        and error.get("type") == "internal_server_error"
    )


def _finding_shows(*fragments: str) -> Callable[[Any], bool]:
    """A predicate on a failure finding (or a probed feature) whose text holds every fragment."""

    def matches(evidence: Any) -> bool:
        text = " ".join(
            str(getattr(evidence, name, "")) for name in ("detail", "evidence", "reason")
        )
        return bool(text.strip()) and all(fragment in text for fragment in fragments)

    return matches


def _add_lora_500(response: httpx.Response) -> bool:
    """HTTP 500 whose message is vLLM's failed add_lora call (the weights' shapes)."""
    return response.status_code == 500 and "add_lora" in error_message(response)


def _unconstrained_with_reasoning(evidence: Any) -> bool:
    """Guided output not applied on a server that runs a reasoning parser."""
    return (
        isinstance(evidence, dict)
        and evidence.get("matched") is False
        and evidence.get("reasoning") is True
    )


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
        "lora:broken adapter (weights that do not fit the model)",
        "vLLM answers HTTP 500 'Call to add_lora method failed: Worker failed with error "
        "'The size of tensor a (...) must match the size of tensor b (...)'' instead of a 4xx "
        "when a runtime-loaded adapter's weights do not fit the model; the adapter is not "
        "listed and the server stays healthy",
        _add_lora_500,
    ),
    Deviation(
        "vllm",
        ("0.32.0",),
        "structured:completions regex",
        "with --reasoning-parser set, vLLM applies no structured output on /v1/completions: "
        "the grammar waits for the end of reasoning, which a plain completion never marks "
        "(chat with thinking off, and servers without a reasoning parser, are constrained)",
        _unconstrained_with_reasoning,
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
        ("tools:required", "tools:named", "tools:streamed"),
        "llama-cpp-python, serving the model's own chat template, ignores tools and "
        "tool_choice: 200 with free text and no tool_calls (its tool calls need a "
        "function-calling --chat_format)",
        _finding_shows("no tool_calls in the message"),
    ),
    *_llamacpp(
        (
            "tools:malformed:function without a name",
            "tools:malformed:tools is not a list",
            "tools:result turn",
        ),
        f"{_LLAMACPP_VALIDATION_500} (here for tool definitions, and for an assistant turn "
        "with tool_calls and no content, which its message schema does not allow)",
        _finding_shows("HTTP 500", "validation error"),
    ),
    *_llamacpp(
        ("tools:malformed:tool_choice names a tool not offered",),
        "llama-cpp-python answers a tool_choice naming a tool that is not offered with HTTP "
        "500 'Tool choice ... not found in tools.' instead of a 4xx",
        _finding_shows("HTTP 500", "not found in tools"),
    ),
    *_llamacpp(
        ("structured outputs",),
        "llama-cpp-python rejects response_format type 'json_schema' with HTTP 500 (a pydantic "
        "error: \"Input should be 'text' or 'json_object'\"); it takes a schema only as "
        "json_object with a 'schema' field",
        _finding_shows("Input should be 'text' or 'json_object'"),
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


def excuse(identity: tuple[str, str | None], check: str, evidence: Any) -> Finding | None:
    """A DEVIATION finding when this engine version is known to fail ``check`` AND the evidence
    shows exactly that; None otherwise (the check goes on and judges the evidence itself)."""
    deviation = known_deviation(identity, check, evidence)
    if deviation is None:
        return None
    engine, version = identity
    return Finding(
        check,
        Outcome.DEVIATION,
        f"known {engine} {version} deviation ({STRICT_ENV}=1 to fail instead): "
        f"{deviation.observed}",
        deviation=deviation,
    )


def excuse_all(identity: tuple[str, str | None], check: str, evidence: list[Any]) -> Finding | None:
    """A DEVIATION finding when every piece of evidence shows a documented deviation of
    ``check``; None when any does not."""
    found = [known_deviation(identity, check, item) for item in evidence]
    if not evidence or not all(found):
        return None
    engine, version = identity
    observed = "; ".join(dict.fromkeys(d.observed for d in found if d is not None))
    return Finding(
        check,
        Outcome.DEVIATION,
        f"known {engine} {version} deviation ({STRICT_ENV}=1 to fail instead), all "
        f"{len(evidence)} cases: {observed}",
        deviation=found[0],
    )


@dataclass(frozen=True)
class DocumentedAbsence:
    """An engine's own statement that a capability is switched off on this server."""

    engine: str
    capability: str
    pattern: re.Pattern[str]
    """Matched against the error message of the answer."""
    how_to_enable: str
    statuses: frozenset[int] = frozenset(range(400, 500))
    """The statuses the statement comes with (a 4xx, unless the engine is known to say it with
    another)."""


DOCUMENTED_ABSENCES: tuple[DocumentedAbsence, ...] = (
    DocumentedAbsence(
        "vllm",
        "chat completions",
        re.compile(r"chat template", re.I),
        "serve a model whose tokenizer has a chat template, or pass --chat-template",
    ),
    DocumentedAbsence(
        "vllm",
        "tool calls",
        re.compile(r"requires --tool-call-parser|requires --enable-auto-tool-choice"),
        "serve with --enable-auto-tool-choice --tool-call-parser NAME",
    ),
    DocumentedAbsence(
        "vllm",
        "embeddings",
        re.compile(r"does not support (the )?[Ee]mbedding|not an embedding model"),
        "serve a pooling model (--runner pooling --convert embed)",
    ),
    DocumentedAbsence(
        "llamacpp",
        "embeddings",
        re.compile(r"must be created with embedding=True"),
        "start llama-cpp-python's server with --embedding true (it answers HTTP 500 saying so)",
        frozenset({500}),
    ),
    DocumentedAbsence(
        "vllm",
        "LoRA adapters",
        re.compile(r"LoRA is not enabled|--enable-lora"),
        "serve with --enable-lora --lora-modules NAME=PATH",
    ),
)


def documented_absence(capability: str, response: httpx.Response) -> DocumentedAbsence | None:
    """The engine statement in an answer that ``capability`` is switched off, if it is one."""
    message = error_message(response)
    for absence in DOCUMENTED_ABSENCES:
        if (
            absence.capability == capability
            and response.status_code in absence.statuses
            and absence.pattern.search(message)
        ):
            return absence
    return None
