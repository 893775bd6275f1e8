"""Tool calling: forced calls whose arguments follow the schema, streamed calls, none, bad tools.

The tools are strict (``"strict": true``, OpenAI's way to ask that arguments follow the schema)
and their schemas admit only short arguments (enums), so guided decoding makes a valid call
possible even for a random-weight model and ``max_tokens`` cannot cut a valid one off. Thinking
is switched off on reasoning servers (see ``target``): a call is only forced after thinking.
"""

from __future__ import annotations

import json
from typing import Any

from pytest_gpuinfer.compat import calls, reasoning
from pytest_gpuinfer.compat.findings import Feature, Finding, describe_response, short
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.compat.target import CompatTarget

CHAT = "/v1/chat/completions"
MAX_TOKENS = 64
"""Room for the longest valid call of the tools below with its markup."""

FORECAST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "days": {"type": "integer", "enum": [1, 2, 3]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CLOCK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_forecast",
            "description": "Weather forecast for a city.",
            "parameters": FORECAST_SCHEMA,
            "strict": True,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The current time in a time zone.",
            "parameters": CLOCK_SCHEMA,
            "strict": True,
        },
    },
]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
MESSAGES = [{"role": "user", "content": "What will the weather be in Paris tomorrow?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


def probe(server: ServerProbe) -> Feature:
    """The server takes ``tools`` with ``tool_choice: "required"`` (one token is enough)."""
    return server.chat_feature_once(
        "tool calls",
        {"tools": TOOLS, "tool_choice": "required"},
        shape=lambda body: None if _message(body) is not None else "without a message",
        capability="tool calls",
    )


def _message(body: Any) -> dict[str, Any] | None:
    """The first choice's message, or None."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        return message if isinstance(message, dict) else None
    return None


def tool_request(target: CompatTarget, tool_choice: Any, **extra: Any) -> dict[str, Any]:
    """A greedy chat request offering TOOLS, shaped for forced JSON on random weights."""
    fields: dict[str, Any] = {
        "tools": TOOLS,
        "tool_choice": tool_choice,
        "max_tokens": MAX_TOKENS,
        **reasoning.thinking_off(target),
        **target.compact_json(),
    }
    fields.update(extra)
    return target.chat_request(MESSAGES, **fields)


def validate_arguments(name: str, arguments: Any) -> str | None:
    """Why a call's ``arguments`` (a JSON string) break its tool's schema, or None."""
    import jsonschema

    if name not in SCHEMAS:
        return f"calls {name!r}, which is not one of the offered tools {sorted(SCHEMAS)}"
    if not isinstance(arguments, str):
        return f"arguments are {type(arguments).__name__}, not a JSON string"
    try:
        value = json.loads(arguments)
    except ValueError as exc:
        return f"arguments {arguments!r} are not JSON ({exc})"
    try:
        jsonschema.validate(value, SCHEMAS[name])
    except jsonschema.ValidationError as exc:
        return f"arguments {arguments!r} break the schema of {name}: {exc.message}"
    return None


def _calls_of(body: dict[str, Any], check: str) -> list[dict[str, Any]] | Finding:
    """The tool calls of the first choice, or the failure naming what came instead."""
    choice = calls.choices_of(body, CHAT)[0]
    message = choice.get("message") or {}
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list) and tool_calls:
        return tool_calls
    # A random model never ends its turn, so "length" after complete calls is normal; without
    # any parsed call, it means the call itself was not forced to completion.
    cut = (
        f"; max_tokens {MAX_TOKENS} ran out although every valid call of these tools fits"
        if choice.get("finish_reason") == "length"
        else ""
    )
    return Finding.failed(
        check,
        f"no tool_calls in the message (content {message.get('content')!r}, finish_reason "
        f"{choice.get('finish_reason')!r}){cut}",
        short(json.dumps(body), 800),
    )


def _call_problems(tool_calls: list[dict[str, Any]], allowed: set[str]) -> list[str]:
    """What is wrong with each call: shape, a tool not allowed, arguments off the schema."""
    problems: list[str] = []
    for index, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            problems.append(f"call {index} has no function object: {call!r}")
            continue
        if call.get("type") != "function" or not call.get("id"):
            problems.append(f"call {index} lacks type 'function' or an id: {call!r}")
        name = function.get("name")
        if name not in allowed:
            problems.append(f"call {index} names {name!r}, expected one of {sorted(allowed)}")
            continue
        problem = validate_arguments(str(name), function.get("arguments"))
        if problem:
            problems.append(f"call {index}: {problem}")
    return problems


def forced_call(target: CompatTarget, tool_choice: Any) -> Finding:
    """``tool_choice`` "required" or a named function: calls to allowed tools whose arguments
    validate against the function's JSON schema."""
    named = isinstance(tool_choice, dict)
    check = f"tools:{'named' if named else 'required'}"
    allowed = {tool_choice["function"]["name"]} if named else set(SCHEMAS)
    body = calls.post_ok(target.client, CHAT, tool_request(target, tool_choice))
    tool_calls = _calls_of(body, check)
    if isinstance(tool_calls, Finding):
        return tool_calls
    problems = _call_problems(tool_calls, allowed)
    if problems:
        return Finding.failed(check, "; ".join(problems), short(json.dumps(body), 800))
    names = [c["function"]["name"] for c in tool_calls]
    return Finding.passed(check, f"{len(tool_calls)} valid call(s): {names}")


def assemble_stream(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls rebuilt from streamed deltas: id, name and argument pieces by call index."""
    built: dict[int, dict[str, Any]] = {}
    for event in events:
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            for piece in delta.get("tool_calls") or []:
                index = int(piece.get("index", 0))
                call = built.setdefault(
                    index,
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if piece.get("id"):
                    call["id"] = piece["id"]
                function = piece.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
    return [built[index] for index in sorted(built)]


def streamed_call(target: CompatTarget) -> Finding:
    """Streamed tool-call deltas assemble into the same calls as the non-streamed answer."""
    check = "tools:streamed"
    request = tool_request(target, "required")
    whole = _calls_of(calls.post_ok(target.client, CHAT, request), check)
    if isinstance(whole, Finding):
        return whole
    events = calls.stream_events(target.client, CHAT, request)
    streamed = assemble_stream(events)
    problems = _call_problems(streamed, set(SCHEMAS)) if streamed else ["no tool-call deltas"]
    if problems:
        return Finding.failed(check, "; ".join(problems), short(json.dumps(events), 800))

    def comparable(items: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in items]

    if comparable(streamed) != comparable(whole):
        return Finding.failed(
            check,
            f"streamed calls {comparable(streamed)} != non-streamed {comparable(whole)}",
        )
    return Finding.passed(check, f"{len(streamed)} call(s) equal to the non-streamed answer")


def choice_none(target: CompatTarget) -> Finding:
    """``tool_choice: "none"`` returns a message with content and no tool call."""
    check = "tools:none"
    body = calls.post_ok(target.client, CHAT, tool_request(target, "none", max_tokens=8))
    choice = calls.choices_of(body, CHAT)[0]
    message = choice.get("message") or {}
    if message.get("tool_calls"):
        return Finding.failed(
            check, "tool_choice 'none' returned tool calls", short(json.dumps(body), 800)
        )
    if not isinstance(message.get("content"), str):
        return Finding.failed(
            check, f"content is {message.get('content')!r}, not text", short(json.dumps(body), 800)
        )
    return Finding.passed(check, "no tool call, text content")


MALFORMED_TOOLS: dict[str, dict[str, Any]] = {
    "function without a name": {
        "tools": [{"type": "function", "function": {"parameters": FORECAST_SCHEMA}}],
    },
    "tools is not a list": {"tools": {"type": "function"}},
    "tool_choice names a tool not offered": {
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "not_offered"}},
    },
}
"""Tool definitions every OpenAI-compatible server must reject with a 4xx."""


def malformed_rejected(target: CompatTarget, case: str) -> Finding:
    """A malformed tool definition gets a 4xx with an error message, and the server lives on."""
    check = f"tools:malformed:{case}"
    body = target.chat_request(MESSAGES, max_tokens=4, **MALFORMED_TOOLS[case])
    response = calls.post(target.client, CHAT, body)
    if not 400 <= response.status_code < 500:
        return Finding.failed(
            check, f"answered {response.status_code} instead of a 4xx", describe_response(response)
        )
    healthy = calls.health_after(target.client, f"a malformed tool ({case})")
    if not healthy.ok:
        return healthy
    return Finding.passed(check, f"answered {response.status_code}")


def tool_result_turn(target: CompatTarget) -> Finding:
    """A conversation with an assistant tool call and its tool result is accepted and answered,
    and the result reaches the prompt (more prompt tokens than without it)."""
    check = "tools:result turn"
    arguments = json.dumps({"city": "Paris", "days": 1})
    call: dict[str, Any] = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_forecast", "arguments": arguments},
    }
    turn: list[dict[str, Any]] = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"sky": "clear"})},
    ]
    extra = {"tools": TOOLS, "max_tokens": 4, **reasoning.thinking_off(target)}
    response = calls.post(target.client, CHAT, target.chat_request(turn, **extra))
    if response.status_code != 200:
        return Finding.failed(
            check,
            f"a conversation with a tool call and its result answered {response.status_code}",
            describe_response(response),
        )
    with_result = response.json()
    calls.choices_of(with_result, CHAT)
    without = calls.post_ok(target.client, CHAT, target.chat_request(MESSAGES, **extra))
    grown = int(with_result["usage"]["prompt_tokens"]) - int(without["usage"]["prompt_tokens"])
    if grown <= 0:
        return Finding.failed(
            check,
            f"the tool call and its result added {grown} prompt tokens: the chat template "
            "dropped them",
            short(json.dumps(with_result), 600),
        )
    return Finding.passed(check, f"accepted; the call and result added {grown} prompt tokens")
