"""Feature probes for OpenAI-compatible servers, cached per server, plus token-count helpers.

A compat check must never pass silently on a server that lacks a feature: it probes first, then
skips with the probe's reason when the feature is absent, and fails when the probe itself hit a
server error (the feature exists but is broken). Probes send small real requests (``max_tokens``
1) and remember the answer for the rest of the run.

    probe = probe_for(inference_server)
    probe.tokenize_route().require()      # skips with the reason, or fails if it answered 5xx
    ids = probe.tokenize("héllo", add_special_tokens=False)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import httpx

if TYPE_CHECKING:
    from pytest_gpuinfer.targets import InferenceServer

__all__ = [
    "Feature",
    "ProbeError",
    "ServerProbe",
    "exact_length_prompt",
    "first_difference",
    "probe_for",
]

ABSENT_STATUSES = frozenset({400, 404, 405, 415, 422, 501})
"""Answers meaning "this server does not offer that": unknown route, unsupported parameter."""


class ProbeError(RuntimeError):
    """A probe helper could not get the answer it needs (the message says what came back)."""


class ServerFault(ProbeError):
    """A probe helper got a 5xx: the feature exists but is broken, so the check must fail."""


def _answer_error(label: str, response: httpx.Response) -> ProbeError:
    """The error for a non-200 answer: ServerFault for a 5xx, ProbeError otherwise."""
    kind = ServerFault if response.status_code >= 500 else ProbeError
    return kind(f"{label} answered {response.status_code}: {error_message(response)}")


@dataclass(frozen=True)
class Feature:
    """What a probe learned: available, absent (skip), or broken (fail), with the evidence."""

    name: str
    available: bool
    reason: str
    broken: bool = False

    def require(self) -> None:
        """Return when available; skip with the reason when absent; fail when broken."""
        import pytest

        if self.available:
            return
        if self.broken:
            pytest.fail(f"{self.name}: the probe hit a server error: {self.reason}", pytrace=False)
        pytest.skip(f"{self.name} not supported by this target: {self.reason}")

    def __bool__(self) -> bool:
        return self.available


def _short(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters, for messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def error_message(response: httpx.Response) -> str:
    """The error text a server put in its body (OpenAI ``error.message``, FastAPI ``detail``)."""
    try:
        body = response.json()
    except ValueError:
        return _short(response.text)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _short(error["message"])
        if isinstance(error, str):
            return _short(error)
        if "detail" in body:
            return _short(
                json.dumps(body["detail"])
                if not isinstance(body["detail"], str)
                else body["detail"]
            )
        if isinstance(body.get("message"), str):
            return _short(body["message"])
    return _short(response.text)


class ServerProbe:
    """Probes one server's optional features once each and caches the answers."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers or {},
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
        )
        self._cache: dict[str, Feature] = {}
        self._facts: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the probe's HTTP connections."""
        self._client.close()

    # -- generic machinery -------------------------------------------------------------------

    def _cached(self, name: str, run: Callable[[], Feature]) -> Feature:
        """Run a probe once; later calls return the remembered answer."""
        with self._lock:
            if name in self._cache:
                return self._cache[name]
        feature = run()
        with self._lock:
            return self._cache.setdefault(name, feature)

    def _request(
        self,
        name: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        ok: Callable[[Any], str | None],
    ) -> Feature:
        """Send one probe request; ``ok(body)`` returns None when the answer shows the feature."""
        label = f"{method} {path}"
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            return Feature(name, False, f"{label} failed: {type(exc).__name__}: {exc}", broken=True)
        if response.status_code in ABSENT_STATUSES:
            return Feature(
                name, False, f"{label} answered {response.status_code}: {error_message(response)}"
            )
        if response.status_code != 200:
            return Feature(
                name,
                False,
                f"{label} answered {response.status_code}: {error_message(response)}",
                broken=response.status_code >= 500,
            )
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = response.text
        problem = ok(parsed)
        if problem is not None:
            return Feature(name, False, f"{label} answered 200 but {problem}")
        return Feature(name, True, f"{label} answered 200 as expected")

    def _completion(self, extra: dict[str, Any]) -> dict[str, Any]:
        """A one-token completion request body with ``extra`` fields."""
        return {
            "model": self.model,
            "prompt": "Hello",
            "max_tokens": 1,
            "temperature": 0.0,
            **extra,
        }

    def _chat(self, extra: dict[str, Any]) -> dict[str, Any]:
        """A one-token chat request body with ``extra`` fields."""
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 1,
            "temperature": 0.0,
            **extra,
        }

    # -- routes ------------------------------------------------------------------------------

    def completions(self) -> Feature:
        """``POST /v1/completions`` answers a one-token request."""
        return self._cached(
            "completions",
            lambda: self._request(
                "completions",
                "POST",
                "/v1/completions",
                self._completion({}),
                lambda b: None if _choices(b) else "without choices",
            ),
        )

    def chat(self) -> Feature:
        """``POST /v1/chat/completions`` answers (a base model without a chat template: absent)."""
        return self._cached(
            "chat completions",
            lambda: self._request(
                "chat completions",
                "POST",
                "/v1/chat/completions",
                self._chat({}),
                lambda b: None if _choices(b) else "without choices",
            ),
        )

    def tokenize_route(self) -> Feature:
        """vLLM-style ``POST /tokenize`` returns token ids for a prompt."""

        def ok(body: Any) -> str | None:
            if isinstance(body, dict) and isinstance(body.get("tokens"), list):
                return None
            return f"without a 'tokens' list: {_short(str(body), 200)}"

        return self._cached(
            "/tokenize",
            lambda: self._request(
                "/tokenize", "POST", "/tokenize", {"model": self.model, "prompt": "Hello"}, ok
            ),
        )

    def tokenize_chat_route(self) -> Feature:
        """``POST /tokenize`` also accepts chat ``messages`` (applies the chat template)."""

        def ok(body: Any) -> str | None:
            if isinstance(body, dict) and isinstance(body.get("tokens"), list):
                return None
            return f"without a 'tokens' list: {_short(str(body), 200)}"

        body = {"model": self.model, "messages": [{"role": "user", "content": "Hello"}]}
        return self._cached(
            "/tokenize with messages",
            lambda: self._request("/tokenize with messages", "POST", "/tokenize", body, ok),
        )

    def detokenize_route(self) -> Feature:
        """vLLM-style ``POST /detokenize`` turns token ids back into text."""

        def run() -> Feature:
            first = self.tokenize_route()
            if not first.available:
                return Feature(
                    "/detokenize",
                    False,
                    f"needs /tokenize first: {first.reason}",
                    broken=first.broken,
                )
            ids = self.tokenize("Hello", add_special_tokens=False)
            return self._request(
                "/detokenize",
                "POST",
                "/detokenize",
                {"model": self.model, "tokens": ids},
                lambda b: (
                    None
                    if isinstance(b, dict) and isinstance(b.get("prompt"), str)
                    else f"without a 'prompt' string: {_short(str(b), 200)}"
                ),
            )

        return self._cached("/detokenize", run)

    def metrics_route(self) -> Feature:
        """``GET /metrics`` serves Prometheus text."""

        def run() -> Feature:
            try:
                response = self._client.get("/metrics")
            except httpx.HTTPError as exc:
                return Feature("/metrics", False, f"GET /metrics failed: {exc}", broken=True)
            if response.status_code in ABSENT_STATUSES:
                return Feature("/metrics", False, f"GET /metrics answered {response.status_code}")
            if response.status_code != 200:
                return Feature(
                    "/metrics",
                    False,
                    f"GET /metrics answered {response.status_code}",
                    broken=response.status_code >= 500,
                )
            return Feature("/metrics", True, "GET /metrics answered 200")

        return self._cached("/metrics", run)

    def version_route(self) -> Feature:
        """``GET /version`` reports the engine version (vLLM does)."""
        return self._cached(
            "/version",
            lambda: self._request(
                "/version",
                "GET",
                "/version",
                None,
                lambda b: (
                    None
                    if isinstance(b, dict) and isinstance(b.get("version"), str)
                    else f"without a 'version' string: {_short(str(b), 200)}"
                ),
            ),
        )

    def owned_by(self) -> str | None:
        """The ``owned_by`` of the served model in ``/v1/models`` (vLLM says "vllm")."""
        with self._lock:
            if "owned_by" in self._facts:
                return self._facts["owned_by"]
        owner: str | None = None
        try:
            response = self._client.get("/v1/models")
            if response.status_code == 200:
                for entry in response.json().get("data") or []:
                    if isinstance(entry, dict) and entry.get("id") == self.model:
                        value = entry.get("owned_by")
                        owner = value if isinstance(value, str) else None
        except (httpx.HTTPError, ValueError, AttributeError):
            owner = None
        with self._lock:
            self._facts["owned_by"] = owner
        return owner

    # -- request features ----------------------------------------------------------------------

    def completion_logprobs(self) -> Feature:
        """Completions honour ``logprobs`` (the server returns per-token logprobs)."""

        def ok(body: Any) -> str | None:
            choices = _choices(body)
            logprobs = choices[0].get("logprobs") if choices else None
            if isinstance(logprobs, dict) and logprobs.get("tokens"):
                return None
            return "with no logprobs in the choice (the parameter was ignored)"

        return self._cached(
            "completion logprobs",
            lambda: self._request(
                "completion logprobs",
                "POST",
                "/v1/completions",
                self._completion({"logprobs": 1}),
                ok,
            ),
        )

    def chat_logprobs(self) -> Feature:
        """Chat completions honour ``logprobs: true`` with ``top_logprobs``."""

        def ok(body: Any) -> str | None:
            choices = _choices(body)
            logprobs = choices[0].get("logprobs") if choices else None
            if isinstance(logprobs, dict) and logprobs.get("content"):
                return None
            return "with no logprobs.content in the choice (the parameter was ignored)"

        return self._cached(
            "chat logprobs",
            lambda: self._request(
                "chat logprobs",
                "POST",
                "/v1/chat/completions",
                self._chat({"logprobs": True, "top_logprobs": 1}),
                ok,
            ),
        )

    def return_token_ids(self) -> Feature:
        """vLLM's ``return_token_ids`` extension puts generated token ids in each choice."""

        def ok(body: Any) -> str | None:
            choices = _choices(body)
            if choices and isinstance(choices[0].get("token_ids"), list):
                return None
            return "with no token_ids in the choice"

        return self._cached(
            "return_token_ids",
            lambda: self._request(
                "return_token_ids",
                "POST",
                "/v1/completions",
                self._completion({"return_token_ids": True}),
                ok,
            ),
        )

    # -- helpers built on probes ---------------------------------------------------------------

    def tokenize(self, prompt: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``prompt`` from ``/tokenize`` (raises ProbeError when it fails)."""
        response = self._client.post(
            "/tokenize",
            json={"model": self.model, "prompt": prompt, "add_special_tokens": add_special_tokens},
        )
        return _token_list(response, "POST /tokenize")

    def tokenize_chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of chat ``messages`` after the chat template, with the generation prompt."""
        response = self._client.post(
            "/tokenize",
            json={"model": self.model, "messages": list(messages), "add_generation_prompt": True},
        )
        return _token_list(response, "POST /tokenize (messages)")

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens`` from ``/detokenize`` (raises ProbeError when it fails)."""
        response = self._client.post(
            "/detokenize", json={"model": self.model, "tokens": list(tokens)}
        )
        if response.status_code != 200:
            raise _answer_error("POST /detokenize", response)
        body = response.json()
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise ProbeError(f"POST /detokenize answered without a prompt: {_short(str(body))}")
        return str(body["prompt"])

    def usage_prompt_tokens(self, prompt: str) -> int:
        """The ``usage.prompt_tokens`` the server reports for ``prompt`` (one-token completion)."""
        response = self._client.post("/v1/completions", json=self._completion({"prompt": prompt}))
        if response.status_code != 200:
            raise _answer_error("POST /v1/completions", response)
        usage = response.json().get("usage") or {}
        if not isinstance(usage.get("prompt_tokens"), int):
            raise ProbeError(f"the completion carried no usage.prompt_tokens: {usage}")
        return int(usage["prompt_tokens"])


def _choices(body: Any) -> list[dict[str, Any]]:
    """The ``choices`` list of an OpenAI response body, or an empty list."""
    if isinstance(body, dict) and isinstance(body.get("choices"), list):
        return [c for c in body["choices"] if isinstance(c, dict)]
    return []


def _token_list(response: httpx.Response, label: str) -> list[int]:
    """The ``tokens`` list of a ``/tokenize`` answer, or ProbeError saying what came back."""
    if response.status_code != 200:
        raise _answer_error(label, response)
    body = response.json()
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ProbeError(f"{label} answered without a list of token ids: {_short(str(body))}")
    return [int(t) for t in tokens]


_PROBES: dict[tuple[str, str, str, int | None], ServerProbe] = {}
_PROBES_LOCK = threading.Lock()


def probe_for(server: InferenceServer) -> ServerProbe:
    """The cached probe for ``server`` (one per base URL, model, credentials and process)."""
    headers = server.auth_headers()
    pid = server.process.pid if server.process is not None else None
    key = (server.base_url, server.model, headers.get("Authorization", ""), pid)
    with _PROBES_LOCK:
        probe = _PROBES.get(key)
        if probe is None:
            probe = _PROBES[key] = ServerProbe(server.base_url, server.model, headers=headers)
        return probe


def exact_length_prompt(
    count: Callable[[str], int],
    target: int,
    *,
    words: Sequence[str] = (" the", " a", " and", " of", " is", " x", " 1"),
) -> str:
    """A prompt ``count`` says is exactly ``target`` tokens long: one one-token word repeated."""
    # ``count`` gives the token count as the server sees it (special tokens included); a word
    # qualifies when each repetition adds exactly one token, and the final prompt is re-counted.
    tried: list[str] = []
    for word in words:
        head = word.strip()
        base = count(head)
        if count(head + word * 3) - base != 3:
            tried.append(f"{word!r} is not one token per repetition")
            continue
        repeats = target - base
        if repeats < 0:
            raise ProbeError(f"a {target}-token prompt is shorter than the word {head!r} alone")
        for _ in range(3):
            text = head + word * repeats
            got = count(text)
            if got == target:
                return text
            repeats += target - got
        tried.append(f"{word!r} repeated gives {got} tokens, not {target}")
    raise ProbeError(f"could not build a prompt of exactly {target} tokens: {'; '.join(tried)}")


def first_difference(left: str, right: str) -> int:
    """Index of the first differing character (the shorter length when one is a prefix)."""
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return index
    return min(len(left), len(right))


def fail_with(message: str) -> NoReturn:
    """Fail the current test without a traceback (for messages that already say everything)."""
    import pytest

    pytest.fail(message, pytrace=False)
