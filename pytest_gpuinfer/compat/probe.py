"""Feature probes for OpenAI-compatible servers, cached per server, plus tokenizer helpers.

A compat check must never pass silently on a server that lacks a feature, nor skip on one that
is broken: it probes first with a small real request (``max_tokens`` 1) and the answer decides.
Only 404, 405 and 501 (no such route, method, or implementation), or an engine's own statement
that the feature is switched off (``deviations.DOCUMENTED_ABSENCES``), make a feature absent; a
200 that ignores an optional parameter (``logprobs``, ``n``) means the server does not offer it.
Any other answer to a valid request (400, 422, a 5xx, a 200 without choices, a dropped
connection) makes the feature broken, and the check that needs it fails with the response.

    probe = probe_for(inference_server)
    probe.tokenize_route().require()      # raises Unmet: absent (skip) or broken (fail)
    ids = probe.tokenize("héllo", add_special_tokens=False)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from pytest_gpuinfer.compat.findings import (
    ABSENT_STATUSES,
    Feature,
    Finding,
    Outcome,
    Unmet,
    error_message,
    short,
)
from pytest_gpuinfer.targets.responsiveness import WatchedTransport, watch_for

if TYPE_CHECKING:
    from pytest_gpuinfer.targets.base import InferenceServer

__all__ = [
    "TOKENIZE_DIALECTS",
    "ProbeError",
    "ServerFault",
    "ServerProbe",
    "TokenizeDialect",
    "probe_for",
]


CONTEXT_LENGTH_FIELDS = ("max_model_len", "context_length", "max_context_length")
"""Fields of a /v1/models entry that carry the served context length (vLLM: max_model_len)."""


@dataclass(frozen=True)
class TokenizeDialect:
    """How one engine family spells its (non-OpenAI) tokenize and detokenize routes."""

    name: str
    tokenize_path: str
    text_key: str
    """The request field carrying the text."""
    special_key: str | None
    """The request field switching special tokens (BOS) on or off; None: always added."""
    detokenize_path: str
    detokenized_key: str
    """The response field carrying the detokenized text."""
    chat: bool = False
    """The tokenize route also takes chat ``messages``."""

    def body(self, text: str, model: str) -> dict[str, Any]:
        """A tokenize request body for ``text``."""
        return {"model": model, self.text_key: text}


TOKENIZE_DIALECTS = (
    TokenizeDialect(
        "vLLM", "/tokenize", "prompt", "add_special_tokens", "/detokenize", "prompt", True
    ),
    TokenizeDialect(
        "llama.cpp server", "/tokenize", "content", "add_special", "/detokenize", "content"
    ),
    TokenizeDialect(
        "llama-cpp-python", "/extras/tokenize", "input", None, "/extras/detokenize", "text"
    ),
)
"""Tried in order; the first that returns token ids for "Hello" is the server's."""


class ProbeError(Unmet):
    """A probe helper could not get the answer it needs; the finding says why (the capability
    is absent, or the server answered wrongly: a failure)."""

    def __init__(self, message: str, *, absent: bool = False) -> None:
        outcome = Outcome.ABSENT if absent else Outcome.FAILURE
        super().__init__(Finding("server probe", outcome, message))


class ServerFault(ProbeError):
    """A probe helper got a 5xx or no answer: the feature exists but is broken."""


def _answer_error(label: str, response: httpx.Response) -> ProbeError:
    """The error for a non-200 answer: absent on 404/405/501, a failure otherwise."""
    message = f"{label} answered {response.status_code}: {error_message(response)}"
    if response.status_code >= 500 and response.status_code not in ABSENT_STATUSES:
        return ServerFault(message)
    return ProbeError(message, absent=response.status_code in ABSENT_STATUSES)


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
        self._facts: dict[str, Any] = {}
        self._dialect: TokenizeDialect | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the probe's HTTP connections."""
        self._client.close()

    # -- generic machinery -------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """The probe's HTTP client (base URL, credentials and timeouts set)."""
        return self._client

    def cached(self, name: str, run: Callable[[], Feature]) -> Feature:
        """Run a probe once; later calls return the remembered answer."""
        with self._lock:
            if name in self._cache:
                return self._cache[name]
        feature = run()
        with self._lock:
            return self._cache.setdefault(name, feature)

    def request(
        self,
        name: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        ok: Callable[[Any], str | None] = lambda body: None,
        *,
        shape: Callable[[Any], str | None] | None = None,
        capability: str | None = None,
    ) -> Feature:
        """Send one probe request and classify the answer.

        404/405/501, or a 4xx in which the engine says ``capability`` is switched off: absent.
        Any other non-200, or a 200 that ``shape(body)`` finds malformed: broken. A 200 that
        ``ok(body)`` finds without the feature (an optional parameter ignored): absent.
        """
        from pytest_gpuinfer.compat.deviations import documented_absence

        label = f"{method} {path}"
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            return Feature(name, False, f"{label} failed: {type(exc).__name__}: {exc}", broken=True)
        answered = f"{label} answered {response.status_code}: {error_message(response)}"
        if response.status_code in ABSENT_STATUSES:
            return Feature(name, False, answered)
        if response.status_code != 200:
            absence = documented_absence(capability or name, response)
            if absence is not None:
                return Feature(name, False, f"{answered} ({absence.how_to_enable})")
            return Feature(name, False, answered, broken=True)
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = response.text
        malformed = shape(parsed) if shape is not None else None
        if malformed is not None:
            return Feature(
                name,
                False,
                f"{label} answered 200 but {malformed}: {short(response.text, 300)}",
                broken=True,
            )
        problem = ok(parsed)
        if problem is not None:
            return Feature(name, False, f"{label} answered 200 but {problem}")
        return Feature(name, True, f"{label} answered 200 as expected")

    def request_after_chat(
        self,
        name: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        ok: Callable[[Any], str | None] = lambda body: None,
        *,
        shape: Callable[[Any], str | None] | None = None,
        capability: str | None = None,
    ) -> Feature:
        """:meth:`request` for a feature of chat completions: absent or broken as chat itself
        is when the server has no working chat."""
        chat = self.chat()
        if not chat.available:
            return Feature(
                name, False, f"needs chat completions: {chat.reason}", broken=chat.broken
            )
        return self.request(name, method, path, body, ok, shape=shape, capability=capability)

    def request_once(
        self,
        name: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        ok: Callable[[Any], str | None] = lambda body: None,
        *,
        shape: Callable[[Any], str | None] | None = None,
        capability: str | None = None,
    ) -> Feature:
        """:meth:`request`, sent on the first call only and remembered under ``name``."""
        return self.cached(
            name,
            lambda: self.request(name, method, path, body, ok, shape=shape, capability=capability),
        )

    def chat_feature_once(
        self,
        name: str,
        extra: dict[str, Any],
        ok: Callable[[Any], str | None] = lambda body: None,
        *,
        shape: Callable[[Any], str | None] | None = None,
        capability: str | None = None,
    ) -> Feature:
        """A feature of chat completions, probed once with a one-token chat request carrying
        ``extra`` fields (:meth:`request_after_chat`) and remembered under ``name``."""
        return self.cached(
            name,
            lambda: self.request_after_chat(
                name,
                "POST",
                "/v1/chat/completions",
                self.chat_body(extra),
                ok,
                shape=shape,
                capability=capability,
            ),
        )

    def get_route_once(self, path: str) -> Feature:
        """``GET path`` answers 200, probed once and remembered under ``path``: 404/405/501
        make it absent, any other answer or no answer broken."""

        def run() -> Feature:
            try:
                response = self._client.get(path)
            except httpx.HTTPError as exc:
                return Feature(path, False, f"GET {path} failed: {exc}", broken=True)
            if response.status_code == 200:
                return Feature(path, True, f"GET {path} answered 200")
            return Feature(
                path,
                False,
                f"GET {path} answered {response.status_code}",
                broken=response.status_code not in ABSENT_STATUSES,
            )

        return self.cached(path, run)

    def fact_once(self, name: str, read: Callable[[], Any]) -> Any:
        """A fact about the server (not a feature), read on the first call and remembered."""
        with self._lock:
            if name in self._facts:
                return self._facts[name]
        value = read()
        with self._lock:
            self._facts[name] = value
        return value

    def completion_body(self, extra: dict[str, Any]) -> dict[str, Any]:
        """A one-token completion request body with ``extra`` fields."""
        return {
            "model": self.model,
            "prompt": "Hello",
            "max_tokens": 1,
            "temperature": 0.0,
            **extra,
        }

    def chat_body(self, extra: dict[str, Any]) -> dict[str, Any]:
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
        return self.request_once(
            "completions", "POST", "/v1/completions", self.completion_body({}), shape=_needs_choices
        )

    def chat(self) -> Feature:
        """``POST /v1/chat/completions`` answers (a base model without a chat template: absent)."""
        return self.request_once(
            "chat completions",
            "POST",
            "/v1/chat/completions",
            self.chat_body({}),
            shape=_needs_choices,
            capability="chat completions",
        )

    def tokenize_route(self) -> Feature:
        """A tokenize route under any of the names engines use (see TOKENIZE_DIALECTS)."""
        return self.cached("tokenize route", self._find_tokenize_dialect)

    def _find_tokenize_dialect(self) -> Feature:
        """Try each known tokenize dialect; the first that turns "Hello" into token ids wins."""
        answers: list[str] = []
        broken = False
        for dialect in TOKENIZE_DIALECTS:
            label = f"POST {dialect.tokenize_path} ({dialect.name})"
            try:
                response = self._client.post(
                    dialect.tokenize_path, json=dialect.body("Hello", self.model)
                )
            except httpx.HTTPError as exc:
                answers.append(f"{label} failed: {type(exc).__name__}: {exc}")
                broken = True
                continue
            if response.status_code != 200:
                broken = broken or response.status_code >= 500
                answers.append(
                    f"{label} answered {response.status_code}: {error_message(response)}"
                )
                continue
            tokens = _tokens_of(response)
            if not tokens:
                answers.append(
                    f"{label} answered 200 without token ids: {short(response.text, 200)}"
                )
                continue
            with self._lock:
                self._dialect = dialect
            return Feature("tokenize route", True, f"{label} answered 200 with token ids")
        return Feature("tokenize route", False, "; ".join(answers), broken=broken)

    def tokenize_dialect(self) -> TokenizeDialect | None:
        """The tokenize dialect this server speaks (probing once), or None without one."""
        self.tokenize_route()
        return self._dialect

    def tokenize_chat_route(self) -> Feature:
        """The tokenize route also accepts chat ``messages`` (applies the chat template)."""

        def ok(body: Any) -> str | None:
            if isinstance(body, dict) and isinstance(body.get("tokens"), list):
                return None
            return f"without a 'tokens' list: {short(str(body), 200)}"

        def run() -> Feature:
            route = self.tokenize_route()
            dialect = self._dialect
            if dialect is None or not dialect.chat:
                where = f"{dialect.tokenize_path} ({dialect.name})" if dialect else route.reason
                return Feature(
                    "tokenize with messages",
                    False,
                    f"the tokenize route takes no chat messages: {where}",
                    broken=route.broken,
                )
            body = {"model": self.model, "messages": [{"role": "user", "content": "Hello"}]}
            return self.request("tokenize with messages", "POST", dialect.tokenize_path, body, ok)

        return self.cached("tokenize with messages", run)

    def detokenize_route(self) -> Feature:
        """The detokenize route matching the tokenize dialect turns token ids back into text."""

        def run() -> Feature:
            first = self.tokenize_route()
            dialect = self._dialect
            if dialect is None:
                return Feature(
                    "detokenize route",
                    False,
                    f"needs a tokenize route first: {first.reason}",
                    broken=first.broken,
                )
            ids = self.tokenize("Hello", add_special_tokens=dialect.special_key is None)
            key = dialect.detokenized_key
            return self.request(
                "detokenize route",
                "POST",
                dialect.detokenize_path,
                {"model": self.model, "tokens": ids},
                shape=lambda b: (
                    None
                    if isinstance(b, dict) and isinstance(b.get(key), str)
                    else f"without a {key!r} string"
                ),
            )

        return self.cached("detokenize route", run)

    def health_route(self) -> Feature:
        """``GET /health`` answers 200 (not an OpenAI route: many servers lack it)."""
        return self.get_route_once("/health")

    def liveness_path(self) -> str:
        """The route that says the server is up: /health where it exists, else /v1/models."""
        return "/health" if self.health_route().available else "/v1/models"

    def context_length(self) -> Feature:
        """``/v1/models`` reports the served context length (a field such as max_model_len)."""

        def run() -> Feature:
            try:
                response = self._client.get("/v1/models")
                entries = response.json().get("data") or []
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                return Feature(
                    "context length", False, f"GET /v1/models failed: {exc}", broken=True
                )
            for entry in entries:
                if isinstance(entry, dict) and entry.get("id") == self.model:
                    for key in CONTEXT_LENGTH_FIELDS:
                        if isinstance(entry.get(key), int):
                            return Feature(
                                "context length", True, f"/v1/models {key} = {entry[key]}"
                            )
                    return Feature(
                        "context length",
                        False,
                        f"the /v1/models entry has no {'/'.join(CONTEXT_LENGTH_FIELDS)} field "
                        f"(fields: {', '.join(sorted(entry))})",
                    )
            return Feature("context length", False, f"/v1/models does not list {self.model!r}")

        return self.cached("context length", run)

    def metrics_route(self) -> Feature:
        """``GET /metrics`` serves Prometheus text."""
        return self.get_route_once("/metrics")

    def version_route(self) -> Feature:
        """``GET /version`` reports the engine version (vLLM does)."""
        return self.request_once(
            "/version",
            "GET",
            "/version",
            None,
            shape=lambda b: (
                None
                if isinstance(b, dict) and isinstance(b.get("version"), str)
                else "without a 'version' string"
            ),
        )

    def owned_by(self) -> str | None:
        """The ``owned_by`` of the served model in ``/v1/models`` (vLLM says "vllm")."""

        def read() -> str | None:
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
            return owner

        owner: str | None = self.fact_once("owned_by", read)
        return owner

    def openapi_info(self) -> tuple[str | None, str | None]:
        """(title, version) of the server's ``/openapi.json`` info block, when it publishes one."""

        def read() -> tuple[str | None, str | None]:
            title = version = None
            try:
                response = self._client.get("/openapi.json")
                info = response.json().get("info") if response.status_code == 200 else None
                if isinstance(info, dict):
                    title = info.get("title") if isinstance(info.get("title"), str) else None
                    version = info.get("version") if isinstance(info.get("version"), str) else None
            except (httpx.HTTPError, ValueError, AttributeError):
                pass
            return title, version

        info: tuple[str | None, str | None] = self.fact_once("openapi info", read)
        return info

    # -- request features ----------------------------------------------------------------------

    def completion_logprobs(self) -> Feature:
        """Completions honour ``logprobs`` (the server returns per-token logprobs)."""
        return self.request_once(
            "completion logprobs",
            "POST",
            "/v1/completions",
            self.completion_body({"logprobs": 1}),
            _logprobs_with("tokens", "logprobs"),
            shape=_needs_choices,
        )

    def chat_logprobs(self) -> Feature:
        """Chat completions honour ``logprobs: true`` with ``top_logprobs``."""
        return self.request_once(
            "chat logprobs",
            "POST",
            "/v1/chat/completions",
            self.chat_body({"logprobs": True, "top_logprobs": 1}),
            _logprobs_with("content", "logprobs.content"),
            shape=_needs_choices,
        )

    def stream_usage(self) -> Feature:
        """A stream with ``stream_options.include_usage`` ends with a chunk carrying usage."""

        def run() -> Feature:
            body = self.completion_body({"stream": True, "stream_options": {"include_usage": True}})
            label = "POST /v1/completions (stream, include_usage)"
            try:
                with self._client.stream("POST", "/v1/completions", json=body) as response:
                    if response.status_code != 200:
                        response.read()
                        return Feature(
                            "usage in streams",
                            False,
                            f"{label} answered {response.status_code}: {error_message(response)}",
                            broken=response.status_code not in ABSENT_STATUSES,
                        )
                    chunks = [
                        line[5:].strip()
                        for line in response.iter_lines()
                        if line.startswith("data:") and line[5:].strip() != "[DONE]"
                    ]
            except httpx.HTTPError as exc:
                return Feature("usage in streams", False, f"{label} failed: {exc}", broken=True)
            for chunk in chunks:
                try:
                    event = json.loads(chunk)
                except ValueError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("usage"), dict):
                    return Feature("usage in streams", True, f"{label} sent a usage chunk")
            return Feature(
                "usage in streams",
                False,
                f"{label} answered {len(chunks)} chunks, none with usage (include_usage ignored)",
            )

        return self.cached("usage in streams", run)

    def n_choices(self) -> Feature:
        """Completions honour ``n`` (two choices for n=2)."""

        def ok(body: Any) -> str | None:
            count = len(_choices(body))
            return None if count == 2 else f"with {count} choice(s) for n=2 (n was ignored)"

        return self.request_once(
            "n",
            "POST",
            "/v1/completions",
            self.completion_body({"n": 2, "temperature": 1.0, "seed": 1}),
            ok,
            shape=_needs_choices,
        )

    def return_token_ids(self) -> Feature:
        """vLLM's ``return_token_ids`` extension puts generated token ids in each choice."""

        def ok(body: Any) -> str | None:
            choices = _choices(body)
            if choices and isinstance(choices[0].get("token_ids"), list):
                return None
            return "with no token_ids in the choice"

        return self.request_once(
            "return_token_ids",
            "POST",
            "/v1/completions",
            self.completion_body({"return_token_ids": True}),
            ok,
            shape=_needs_choices,
        )

    # -- helpers built on probes ---------------------------------------------------------------

    def _require_dialect(self) -> TokenizeDialect:
        """The tokenize dialect, or ServerFault/ProbeError saying why there is none."""
        dialect = self.tokenize_dialect()
        if dialect is None:
            feature = self.tokenize_route()
            if feature.broken:
                raise ServerFault(f"no working tokenize route: {feature.reason}")
            raise ProbeError(f"no tokenize route: {feature.reason}", absent=True)
        return dialect

    def tokenize(self, prompt: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``prompt`` from the tokenize route (raises ProbeError when it fails)."""
        dialect = self._require_dialect()
        if dialect.special_key is None and not add_special_tokens:
            raise ProbeError(
                f"{dialect.tokenize_path} ({dialect.name}) always adds special tokens; it cannot "
                "tokenize without them",
                absent=True,
            )
        body = dialect.body(prompt, self.model)
        if dialect.special_key is not None:
            body[dialect.special_key] = add_special_tokens
        response = self._client.post(dialect.tokenize_path, json=body)
        return _token_list(response, f"POST {dialect.tokenize_path}")

    def tokenize_chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of chat ``messages`` after the chat template, with the generation prompt."""
        dialect = self._require_dialect()
        response = self._client.post(
            dialect.tokenize_path,
            json={"model": self.model, "messages": list(messages), "add_generation_prompt": True},
        )
        return _token_list(response, f"POST {dialect.tokenize_path} (messages)")

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens`` from the detokenize route (raises ProbeError when it fails)."""
        dialect = self._require_dialect()
        label = f"POST {dialect.detokenize_path}"
        response = self._client.post(
            dialect.detokenize_path, json={"model": self.model, "tokens": list(tokens)}
        )
        if response.status_code != 200:
            raise _answer_error(label, response)
        body = response.json()
        key = dialect.detokenized_key
        if not isinstance(body, dict) or not isinstance(body.get(key), str):
            raise ProbeError(f"{label} answered without a {key!r} string: {short(str(body))}")
        return str(body[key])

    def usage_prompt_tokens(self, prompt: str) -> int:
        """The ``usage.prompt_tokens`` the server reports for ``prompt`` (one-token completion)."""
        response = self._client.post(
            "/v1/completions", json=self.completion_body({"prompt": prompt})
        )
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


def _needs_choices(body: Any) -> str | None:
    """The problem with an answer that should carry at least one choice, or None."""
    return None if _choices(body) else "without choices"


def _logprobs_with(field: str, missing: str) -> Callable[[Any], str | None]:
    """An ``ok`` check: the first choice's ``logprobs`` object has a non-empty ``field``
    (``missing`` names what is absent when it has not: the parameter was ignored)."""

    def ok(body: Any) -> str | None:
        choices = _choices(body)
        logprobs = choices[0].get("logprobs") if choices else None
        if isinstance(logprobs, dict) and logprobs.get(field):
            return None
        return f"with no {missing} in the choice (the parameter was ignored)"

    return ok


def _tokens_of(response: httpx.Response) -> list[int]:
    """The non-empty ``tokens`` id list of a tokenize answer, or an empty list."""
    try:
        body = response.json()
    except ValueError:
        return []
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
        return [int(t) for t in tokens]
    return []


def _token_list(response: httpx.Response, label: str) -> list[int]:
    """The ``tokens`` list of a ``/tokenize`` answer, or ProbeError saying what came back."""
    if response.status_code != 200:
        raise _answer_error(label, response)
    body = response.json()
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ProbeError(f"{label} answered without a list of token ids: {short(str(body))}")
    return [int(t) for t in tokens]


_PROBES: dict[tuple[str, str, str, int | None], ServerProbe] = {}
_PROBES_LOCK = threading.Lock()


def probe_for(server: InferenceServer) -> ServerProbe:
    """The cached probe for ``server`` (one per base URL, model, credentials and process); its
    reads wait at most the run's first-token timeout, and its requests fail at once once the
    server is judged unresponsive (targets.responsiveness)."""
    headers = server.auth_headers()
    pid = server.process.pid if server.process is not None else None
    key = (server.base_url, server.model, headers.get("Authorization", ""), pid)
    with _PROBES_LOCK:
        probe = _PROBES.get(key)
        if probe is None:
            watch = watch_for(server)
            probe = _PROBES[key] = ServerProbe(
                server.base_url,
                server.model,
                headers=headers,
                timeout=watch.wait_s,
                transport=WatchedTransport(watch),
            )
        return probe
