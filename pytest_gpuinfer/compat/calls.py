"""Requests the compat checks send, and how their answers are read (SSE, health, finish reasons).

Every helper here either returns what it read or raises :class:`~.findings.Unmet` with a failure
finding that carries the response, so a check never goes on with an answer it cannot use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from pytest_gpuinfer.compat.findings import (
    Finding,
    Unmet,
    describe_response,
    error_message,
    json_or_none,
    short,
)


def fail(check: str, detail: str, evidence: str = "") -> Unmet:
    """The Unmet to raise for a failure (``raise fail(...)``)."""
    return Unmet(Finding.failed(check, detail, evidence))


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST ``body``; a dropped connection or timeout is a failure naming the request."""
    try:
        return client.post(path, json=body)
    except httpx.HTTPError as exc:
        raise fail(
            f"POST {path}",
            f"no answer: {type(exc).__name__}: {exc}",
            f"request: {short(json.dumps(body), 400)}",
        ) from None


def post_ok(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` and return the JSON object answered with 200, else a failure with the
    server's message and the request."""
    response = post(client, path, body)
    if response.status_code != 200:
        raise fail(
            f"POST {path}",
            f"answered {response.status_code}: {error_message(response)}\n"
            f"request: {short(json.dumps(body), 500)}",
            describe_response(response),
        )
    data = json_or_none(response)
    if not isinstance(data, dict):
        raise fail(
            f"POST {path}",
            "answered 200 with a body that is not a JSON object",
            describe_response(response),
        )
    return data


def choices_of(body: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The answer's non-empty ``choices`` list, else a failure showing the body."""
    choices = body.get("choices")
    if (
        not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, dict) for c in choices)
    ):
        raise fail(f"POST {path}", "answered 200 without choices", short(json.dumps(body), 600))
    return choices


def sse_events(lines: Iterator[str], label: str = "stream") -> list[dict[str, Any]]:
    """Decode SSE lines into JSON events; the stream must end with ``data: [DONE]``."""
    events: list[dict[str, Any]] = []
    done = False
    for line in lines:
        if not line or line.startswith(":"):
            continue
        if not line.startswith("data:"):
            raise fail(label, f"not an SSE data line: {line[:200]!r}")
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            done = True
            continue
        if done:
            raise fail(label, f"data after [DONE]: {payload[:200]!r}")
        try:
            event = json.loads(payload)
        except ValueError:
            raise fail(label, f"SSE data is not JSON: {payload[:300]!r}") from None
        if isinstance(event, dict) and "error" in event:
            raise fail(label, "the stream carried an error event", payload[:500])
        if not isinstance(event, dict):
            raise fail(label, f"SSE event is not a JSON object: {payload[:200]!r}")
        events.append(event)
    if not done:
        raise fail(label, "the stream did not end with data: [DONE]")
    return events


def stream_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streaming request and return its decoded SSE events (well-formedness checked)."""
    label = f"streaming POST {path}"
    try:
        with client.stream("POST", path, json={**body, "stream": True}) as response:
            if response.status_code != 200:
                response.read()
                raise fail(
                    label,
                    f"answered {response.status_code}: {error_message(response)}",
                    describe_response(response),
                )
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise fail(label, f"content-type {content_type!r}, not text/event-stream")
            return sse_events(response.iter_lines(), label)
    except httpx.HTTPError as exc:
        raise fail(label, f"no complete answer: {type(exc).__name__}: {exc}") from None


def health_after(client: httpx.Client, after: str) -> Finding:
    """The server still answers: GET /health 200, or GET /v1/models 200 where /health is absent.

    /health is not an OpenAI route: a server without it (404/405) is judged by /v1/models
    listing a model, the same rule the readiness wait uses.
    """
    check = f"healthy after {after}"
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
        return Finding.failed(check, f"{route} did not answer: {type(exc).__name__}: {exc}")
    if response.status_code != 200:
        return Finding.failed(
            check, f"{route} answered {response.status_code}", describe_response(response)
        )
    if route == "/v1/models":
        data = json_or_none(response)
        if not (isinstance(data, dict) and data.get("data")):
            return Finding.failed(check, "/v1/models lists no model", describe_response(response))
    return Finding.passed(check, f"{route} answered 200")


def require_healthy(client: httpx.Client, after: str) -> None:
    """Raise the failure when the server no longer answers after ``after``."""
    finding = health_after(client, after)
    if not finding.ok:
        raise Unmet(finding)


def check_finish(
    choice: dict[str, Any],
    completion_tokens: int,
    max_tokens: int,
    *,
    retry: Callable[[int], tuple[str | None, int]] | None = None,
) -> None:
    """finish_reason is "length" exactly when completion_tokens reached max_tokens, else "stop".

    A real model may end on EOS as the last allowed token: engines report "stop" with
    completion_tokens == max_tokens. ``retry(n)`` re-asks the same temperature-0 request with
    max_tokens n and returns (finish_reason, completion_tokens); stopping at the same count
    when one more token is allowed proves the stop was natural.
    """
    check = "finish_reason"
    finish = choice.get("finish_reason")
    if completion_tokens > max_tokens:
        raise fail(check, f"completion_tokens {completion_tokens} > max_tokens {max_tokens}")
    if finish == "stop" and completion_tokens == max_tokens and retry is not None:
        again = retry(max_tokens + 1)
        if again != ("stop", completion_tokens):
            raise fail(
                check,
                f"'stop' with completion_tokens == max_tokens {max_tokens}, but with max_tokens "
                f"{max_tokens + 1} the same request gave {again} instead of stopping at "
                f"{completion_tokens} again: the 'stop' should have been 'length'",
            )
        return
    expected = "length" if completion_tokens == max_tokens else "stop"
    if finish != expected:
        raise fail(
            check,
            f"finish_reason {finish!r} but completion_tokens {completion_tokens} "
            f"{'==' if expected == 'length' else '<'} max_tokens {max_tokens} "
            f"(expected {expected!r})",
        )


def finish_retry(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> Callable[[int], tuple[str | None, int]]:
    """A ``retry`` for :func:`check_finish`: the same request with another max_tokens."""

    def again(max_tokens: int) -> tuple[str | None, int]:
        answer = post_ok(client, path, {**body, "max_tokens": max_tokens})
        choice = choices_of(answer, path)[0]
        return choice.get("finish_reason"), int((answer.get("usage") or {})["completion_tokens"])

    return again
