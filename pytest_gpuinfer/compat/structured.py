"""Structured outputs: ``response_format`` (json_schema, json_object) and vLLM's guided options.

Every schema here admits only short outputs (enums, a fixed regex, a two-word choice), so
``max_tokens`` cannot cut a valid one off; whitespace padding is biased away (see ``target``).
An invalid schema must be a 4xx, never a 500 or a hang.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pytest_gpuinfer.compat import calls, reasoning
from pytest_gpuinfer.compat.findings import Feature, Finding, describe_response, short
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.compat.target import CompatTarget

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MAX_TOKENS = 48
MESSAGES = [{"role": "user", "content": "Is the queue empty? Answer in JSON."}]

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "score": {"type": "integer", "enum": [1, 2, 3]},
    },
    "required": ["answer", "score"],
    "additionalProperties": False,
}
INVALID_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "not-a-json-schema-type"}},
}

GUIDED: dict[str, tuple[dict[str, Any], str]] = {
    "regex": ({"regex": "[ab]{3}-[0-9]{2}"}, "a text matching [ab]{3}-[0-9]{2}"),
    "choice": ({"choice": ["north", "south"]}, "exactly 'north' or 'south'"),
    "grammar": ({"grammar": 'root ::= "x" ("a" | "b") "y"'}, "xay or xby"),
}
"""vLLM's guided options (``structured_outputs``): request and what the output must be."""


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A ``response_format`` asking for ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}


def probe(server: ServerProbe) -> Feature:
    """The server takes ``response_format`` json_schema (one token is enough to know)."""
    return server.chat_feature_once(
        "structured outputs",
        {"response_format": _json_schema(VERDICT_SCHEMA)},
        shape=_has_choices,
    )


def json_object_probe(server: ServerProbe) -> Feature:
    """The server takes ``response_format`` json_object (one token is enough to know)."""
    return server.chat_feature_once(
        "JSON mode", {"response_format": {"type": "json_object"}}, shape=_has_choices
    )


def guided_probe(server: ServerProbe) -> Feature:
    """vLLM's ``structured_outputs`` extension is honoured: a guided choice comes back as one
    of the choices (a server that ignores the field writes free text)."""

    def ok(body: Any) -> str | None:
        text = _first_text(body)
        return None if text in ("north", "south") else f"free text {text!r} (the field was ignored)"

    return server.chat_feature_once(
        "guided decoding (structured_outputs)",
        {
            "structured_outputs": GUIDED["choice"][0],
            "max_tokens": 6,
            "chat_template_kwargs": {"enable_thinking": False},
        },
        ok,
        shape=_has_choices,
    )


def _has_choices(body: Any) -> str | None:
    """The problem with an answer that should carry a choice, or None."""
    choices = body.get("choices") if isinstance(body, dict) else None
    return None if isinstance(choices, list) and choices else "without choices"


def _first_text(body: Any) -> str | None:
    """Content of the first chat choice (or text of a completion choice)."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None
    if "message" in choice:
        content = (choice.get("message") or {}).get("content")
        return content if isinstance(content, str) else None
    text = choice.get("text")
    return text if isinstance(text, str) else None


def _content(body: dict[str, Any], check: str) -> str:
    """The content of a forced answer; a failure when it was cut or is missing."""
    choice = calls.choices_of(body, CHAT)[0]
    content = (choice.get("message") or {}).get("content")
    if choice.get("finish_reason") == "length":
        raise calls.fail(
            check,
            f"max_tokens {MAX_TOKENS} cut the output off, though every valid output fits: "
            f"{content!r}",
            short(json.dumps(body), 600),
        )
    if not isinstance(content, str):
        raise calls.fail(check, f"content is {content!r}", short(json.dumps(body), 600))
    return content


def schema_request(
    target: CompatTarget, response_format: dict[str, Any], favour: dict[int, float] | None = None
) -> dict[str, Any]:
    """A greedy chat request with ``response_format``, shaped for random weights."""
    return target.chat_request(
        MESSAGES,
        response_format=response_format,
        max_tokens=MAX_TOKENS,
        **reasoning.thinking_off(target),
        **target.compact_json(favour),
    )


def json_schema_output(target: CompatTarget) -> Finding:
    """``response_format`` json_schema: the content parses and validates against the schema."""
    import jsonschema

    check = "structured:json_schema"
    body = calls.post_ok(target.client, CHAT, schema_request(target, _json_schema(VERDICT_SCHEMA)))
    content = _content(body, check)
    try:
        jsonschema.validate(json.loads(content), VERDICT_SCHEMA)
    except ValueError as exc:
        return Finding.failed(check, f"content {content!r} is not JSON: {exc}")
    except jsonschema.ValidationError as exc:
        return Finding.failed(check, f"content {content!r} breaks the schema: {exc.message}")
    return Finding.passed(check, f"valid: {content}")


def json_object_output(target: CompatTarget) -> Finding:
    """``response_format`` json_object: the content is a JSON object.

    The closing brace is favoured (``logit_bias`` +100) so a random model ends the object at
    once: with the grammar the answer is ``{}``; a server that ignores ``response_format``
    writes ``}}}}...`` instead, which is not an object.
    """
    check = "structured:json_object"
    brace = target.token_id("}")
    favour = {brace: 100.0} if brace is not None else None
    request = schema_request(target, {"type": "json_object"}, favour)
    content = _content(calls.post_ok(target.client, CHAT, request), check)
    try:
        value = json.loads(content)
    except ValueError as exc:
        return Finding.failed(check, f"content {content!r} is not JSON: {exc}")
    if not isinstance(value, dict):
        return Finding.failed(check, f"content {content!r} is JSON but not an object")
    return Finding.passed(check, f"a JSON object: {content}")


def invalid_schema_rejected(target: CompatTarget) -> Finding:
    """An invalid JSON schema gets a 4xx (not a 500 or a hang), and the server lives on."""
    check = "structured:invalid schema"
    request = schema_request(target, _json_schema(INVALID_SCHEMA))
    response = calls.post(target.client, CHAT, request)
    if not 400 <= response.status_code < 500:
        return Finding.failed(
            check,
            f"an invalid schema answered {response.status_code} instead of a 4xx",
            describe_response(response),
        )
    healthy = calls.health_after(target.client, "an invalid schema")
    return healthy if not healthy.ok else Finding.passed(check, f"{response.status_code}")


def streamed_equals_whole(target: CompatTarget) -> Finding:
    """The streamed content of a json_schema answer equals the non-streamed content."""
    check = "structured:streamed"
    request = schema_request(target, _json_schema(VERDICT_SCHEMA))
    whole = _content(calls.post_ok(target.client, CHAT, request), check)
    events = calls.stream_events(target.client, CHAT, request)
    streamed = "".join(
        (choice.get("delta") or {}).get("content") or ""
        for event in events
        for choice in event.get("choices") or []
    )
    if streamed != whole:
        return Finding.failed(check, f"streamed {streamed!r} != non-streamed {whole!r}")
    return Finding.passed(check, f"equal: {whole}")


def guided_output(target: CompatTarget, kind: str) -> Finding:
    """vLLM's guided ``regex``, ``choice`` and ``grammar``: the output is what they allow."""
    check = f"structured:guided {kind}"
    options, expected = GUIDED[kind]
    request = target.chat_request(
        MESSAGES, structured_outputs=options, max_tokens=16, **reasoning.thinking_off(target)
    )
    body = calls.post_ok(target.client, CHAT, request)
    content = _content(body, check)
    if not _allowed(kind, content):
        return Finding.failed(
            check, f"output {content!r} is not {expected}", short(json.dumps(body), 600)
        )
    return Finding.passed(check, f"{content!r}")


def _allowed(kind: str, text: str) -> bool:
    """True when ``text`` is what the guided option ``kind`` allows."""
    if kind == "regex":
        return re.fullmatch(r"[ab]{3}-[0-9]{2}", text) is not None
    if kind == "choice":
        return text in ("north", "south")
    return text in ("xay", "xby")


def completions_guided(target: CompatTarget) -> tuple[Finding, dict[str, Any]]:
    """vLLM's guided regex on ``/v1/completions``; the evidence for the deviation table too."""
    check = "structured:completions regex"
    request = {
        "model": target.model,
        "prompt": "Label:",
        "max_tokens": 16,
        "temperature": 0.0,
        "structured_outputs": GUIDED["regex"][0],
    }
    body = calls.post_ok(target.client, COMPLETIONS, request)
    text = _first_text(body) or ""
    evidence = {"text": text, "matched": _allowed("regex", text)}
    if not evidence["matched"]:
        return Finding.failed(
            check,
            f"output {text!r} does not match [ab]{{3}}-[0-9]{{2}}",
            short(json.dumps(body), 600),
        ), evidence
    return Finding.passed(check, repr(text)), evidence
