"""Reasoning: the reasoning parser's split of thinking and answer, and the template's switch.

What random weights allow us to check honestly:

- the field shapes: with thinking on, the message carries the reasoning in its own field
  (``reasoning``, as vLLM 0.32 names it, or ``reasoning_content``, the older name) and not in
  ``content``;
- ``enable_thinking: false`` reaches the chat template: the prompt grows by the closed think
  block, and the answer has no reasoning;
- the parser's split of a forced output: with ``allowed_token_ids`` (vLLM) the model may write
  only one ordinary token and the end-of-thinking tag; ``/v1/completions`` on the same prompt
  (no parser) shows the raw text, and the chat answer must split it at the first end tag, with
  nothing lost;
- streamed reasoning and content add up to the non-streamed ones.

What they do not allow: whether the model reasons well, or decides on its own when to stop
thinking. A random model never ends its thinking unless forced, so its answers are all
reasoning.
"""

from __future__ import annotations

import json
import string
from typing import Any

from pytest_gpuinfer.compat import calls
from pytest_gpuinfer.compat.findings import Feature, Finding, Unmet, short
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.compat.target import CompatTarget

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
REASONING_FIELDS = ("reasoning", "reasoning_content")
THINK_END = "</think>"
MESSAGES = [{"role": "user", "content": "Think it over: is the queue empty?"}]
THINKING_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
FORCED_CANDIDATES = tuple(string.digits + string.ascii_letters)
"""Ordinary tokens tried beside the end tag until the forced output holds both (on the
built-in Qwen3-shaped model about one in thirteen does)."""


def reasoning_of(message: dict[str, Any]) -> tuple[str | None, Any]:
    """(field name, value) of the message's reasoning field; (None, None) without one."""
    for name in REASONING_FIELDS:
        if message.get(name) is not None:
            return name, message[name]
    return None, None


def probe(server: ServerProbe) -> Feature:
    """The server splits reasoning from content (its answer carries a reasoning field)."""

    def ok(body: Any) -> str | None:
        choices = body.get("choices") if isinstance(body, dict) else None
        message = choices[0].get("message") if choices else None
        if isinstance(message, dict) and reasoning_of(message)[0] is not None:
            return None
        return (
            "with no reasoning field in the message (vLLM: serve with --reasoning-parser "
            "NAME for a reasoning model)"
        )

    return server.chat_feature_once(
        "reasoning",
        {"max_tokens": 2},
        ok,
        shape=lambda body: (
            None if isinstance(body, dict) and body.get("choices") else "without choices"
        ),
    )


def thinking_off(target: CompatTarget) -> dict[str, Any]:
    """Request fields that switch a reasoning model's thinking off (empty for the others)."""
    if not probe(target.probe).available:
        return {}
    return {"chat_template_kwargs": {"enable_thinking": False}}


def _message(body: dict[str, Any]) -> dict[str, Any]:
    """The first choice's message."""
    return calls.choices_of(body, CHAT)[0].get("message") or {}


def field_shapes(target: CompatTarget) -> Finding:
    """Thinking on: the reasoning is a string in its own field, and it is not in ``content``."""
    check = "reasoning:fields"
    body = calls.post_ok(target.client, CHAT, target.chat_request(MESSAGES, max_tokens=12))
    message = _message(body)
    name, value = reasoning_of(message)
    content = message.get("content")
    if name is None or not isinstance(value, str) or not value:
        return Finding.failed(
            check, "no reasoning text with thinking on", short(json.dumps(body), 600)
        )
    if content is not None and not isinstance(content, str):
        return Finding.failed(check, f"content is {content!r}", short(json.dumps(body), 600))
    if content and value in content:
        return Finding.failed(
            check, "the reasoning is repeated in content", short(json.dumps(body), 600)
        )
    return Finding.passed(check, f"{name}: {len(value)} characters; content {content!r}")


def thinking_switch(target: CompatTarget) -> Finding:
    """``enable_thinking: false`` reaches the template (the prompt grows by the closed think
    block) and the answer then has no reasoning, only content."""
    check = "reasoning:enable_thinking false"
    on = calls.post_ok(target.client, CHAT, target.chat_request(MESSAGES, max_tokens=4))
    off = calls.post_ok(
        target.client, CHAT, target.chat_request(MESSAGES, max_tokens=4, **THINKING_OFF)
    )
    grown = int(off["usage"]["prompt_tokens"]) - int(on["usage"]["prompt_tokens"])
    if grown <= 0:
        return Finding.failed(
            check,
            f"the prompt with enable_thinking false is {grown} tokens longer: the template "
            "ignored the switch",
        )
    message = _message(off)
    name, value = reasoning_of(message)
    if value:
        return Finding.failed(
            check, f"{name} is {value!r} with thinking off", short(json.dumps(off), 600)
        )
    if not isinstance(message.get("content"), str):
        return Finding.failed(
            check,
            f"content is {message.get('content')!r} with thinking off",
            short(json.dumps(off), 600),
        )
    return Finding.passed(check, f"the prompt grew by {grown} tokens; answer in content only")


def forced_split(target: CompatTarget) -> Finding:
    """The parser splits a forced output at the first end-of-thinking tag, losing nothing."""
    check = "reasoning:forced split"
    end_id = target.token_id(THINK_END)
    if end_id is None:
        return Finding.absent(check, f"{THINK_END!r} is not a single token of this model")
    prompt = target.probe.tokenize_chat(MESSAGES)
    for word in FORCED_CANDIDATES:
        other = target.token_id(word)
        if other is None:
            continue
        allowed = {"allowed_token_ids": [other, end_id], "max_tokens": 12}
        raw = _raw_text(target, prompt, allowed)
        before, tag, after = raw.partition(THINK_END)
        if not (tag and before and after.replace(THINK_END, "")):
            continue
        body = calls.post_ok(target.client, CHAT, target.chat_request(MESSAGES, **allowed))
        return _judge_split(check, raw, _message(body), body)
    return Finding.absent(
        check,
        f"no forced output held both thinking and answer with any of the "
        f"{len(FORCED_CANDIDATES)} candidate tokens (letters and digits)",
    )


def _raw_text(target: CompatTarget, prompt: list[int], extra: dict[str, Any]) -> str:
    """The raw completion of the chat prompt's token ids (no parser), tags kept."""
    body = calls.post_ok(
        target.client,
        COMPLETIONS,
        {
            "model": target.model,
            "prompt": prompt,
            "temperature": 0.0,
            "skip_special_tokens": False,
            **extra,
        },
    )
    text = calls.choices_of(body, COMPLETIONS)[0].get("text")
    if not isinstance(text, str):
        raise Unmet(Finding.failed("reasoning:raw text", f"text is {text!r}"))
    return text


def _judge_split(check: str, raw: str, message: dict[str, Any], body: Any) -> Finding:
    """Reasoning is the raw text before the first end tag; content holds the rest, tags aside."""
    before, _, after = raw.partition(THINK_END)
    name, reasoning = reasoning_of(message)
    content = message.get("content") or ""
    expected_reasoning = before.removeprefix("<think>").strip()
    evidence = f"raw completion {raw!r}; chat answer {short(json.dumps(body), 500)}"
    if (reasoning or "").strip() != expected_reasoning:
        return Finding.failed(
            check,
            f"{name or 'reasoning'} {reasoning!r} != the raw text before {THINK_END} "
            f"{expected_reasoning!r}",
            evidence,
        )
    if THINK_END in (reasoning or "") or "<think>" in content:
        return Finding.failed(check, "a think tag leaked into the other field", evidence)
    if content.replace(THINK_END, "").strip() != after.replace(THINK_END, "").strip():
        return Finding.failed(
            check, f"content {content!r} != the raw text after {THINK_END} {after!r}", evidence
        )
    return Finding.passed(check, f"split {raw!r} into {reasoning!r} and {content!r}")


def streamed_equals_whole(target: CompatTarget) -> Finding:
    """Streamed reasoning and content deltas add up to the non-streamed message."""
    check = "reasoning:streamed"
    request = target.chat_request(MESSAGES, max_tokens=12)
    whole = _message(calls.post_ok(target.client, CHAT, request))
    events = calls.stream_events(target.client, CHAT, request)
    deltas = [c.get("delta") or {} for e in events for c in e.get("choices") or []]
    name, reasoning = reasoning_of(whole)
    streamed_reasoning = "".join(d.get(field) or "" for d in deltas for field in REASONING_FIELDS)
    streamed_content = "".join(d.get("content") or "" for d in deltas)
    if streamed_reasoning != (reasoning or ""):
        return Finding.failed(
            check, f"streamed reasoning {streamed_reasoning!r} != non-streamed {reasoning!r}"
        )
    if streamed_content != (whole.get("content") or ""):
        return Finding.failed(
            check, f"streamed content {streamed_content!r} != non-streamed {whole.get('content')!r}"
        )
    return Finding.passed(check, f"equal ({name})")
