"""Bad input: every malformed or out-of-range request gets a 4xx JSON error, never a 5xx or a
dropped connection, and the server answers GET /health 200 after each one.

Hypothesis generates the requests (its profile bounds the example count: ``ci`` 30, ``dev`` 100,
capped at MAX_EXAMPLES here); a fixed list of named cases runs on every target as well.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat.calls import require_healthy
from pytest_gpuinfer.compat.deviations import KNOWN_DEVIATIONS, STRICT_ENV, known_deviation
from pytest_gpuinfer.compat.findings import error_message
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.plugin.compat_outcomes import excuse
from pytest_gpuinfer.plugin.extras import require
from pytest_gpuinfer.targets import InferenceServer

from .compat_helpers import at_most

hypothesis = require("hypothesis")
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hyp_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MAX_EXAMPLES = max(1, min((hyp_settings.default or hyp_settings()).max_examples, 50))
"""Examples per fuzz test: the loaded profile's count, at most 50 (each costs two requests)."""

FUZZ = hyp_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
PATHS = st.sampled_from([COMPLETIONS, CHAT])

INVALID_UTF8 = (
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\xbc",
    b"\xc0\xaf",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
    b"\xe2\x82",
)
"""Byte sequences that are not UTF-8: bad lead bytes, lone continuations, overlong, truncated."""

NOT_A_NUMBER = st.text(alphabet="bcdghjkmpqsuvwxz#%&*", min_size=1, max_size=12)
"""Strings no JSON-number coercion accepts (no letters of true/false/yes/no/on/off/inf/nan)."""


def _base(path: str, model: str) -> dict[str, Any]:
    """A valid small request for ``path``."""
    body: dict[str, Any] = {"model": model, "max_tokens": 2, "temperature": 0.0}
    if path == CHAT:
        body["messages"] = [{"role": "user", "content": "Hello"}]
    else:
        body["prompt"] = "Hello"
    return body


def _send(client: httpx.Client, path: str, payload: bytes, label: str) -> httpx.Response:
    """POST raw bytes as JSON; a dropped connection fails the test with the request named."""
    try:
        return client.post(path, content=payload, headers={"content-type": "application/json"})
    except httpx.HTTPError as exc:
        pytest.fail(
            f"{label}: the connection failed ({type(exc).__name__}: {exc}) instead of a "
            f"4xx; request {payload[:300]!r}",
            pytrace=False,
        )


def _expect_client_error(
    client: httpx.Client,
    path: str,
    payload: bytes,
    label: str,
    known_deviation: Callable[[httpx.Response], None] = lambda response: None,
    success_allowed: bool = False,
) -> httpx.Response:
    """The request gets a 4xx with a JSON error body, and /health is 200 afterwards."""
    response = _send(client, path, payload, label)
    shown = payload[:300]
    if response.status_code >= 500:
        require_healthy(client, f"{label} ({path} {shown[:120]!r})")
    known_deviation(response)
    if success_allowed and response.status_code == 200:
        require_healthy(client, f"{label} ({path} {shown[:120]!r})")
        return response
    assert response.status_code < 500, (
        f"{label}: HTTP {response.status_code} (server error) for {path} {shown!r}: "
        f"{response.text[:300]}"
    )
    assert 400 <= response.status_code < 500, (
        f"{label}: HTTP {response.status_code} for bad input {path} {shown!r} (expected 4xx); "
        f"answer {response.text[:200]!r}"
    )
    try:
        body = response.json()
    except ValueError:
        pytest.fail(
            f"{label}: the {response.status_code} body is not JSON: {response.text[:200]!r}",
            pytrace=False,
        )
    assert isinstance(body, dict) and any(k in body for k in ("error", "detail", "message")), (
        f"{label}: the {response.status_code} body carries no error: {str(body)[:200]}"
    )
    assert error_message(response).strip(), f"{label}: empty error message: {body}"
    require_healthy(client, f"{label} ({path} {shown[:120]!r})")
    return response


def _deviation(identity: tuple[str, str | None], check: str) -> Callable[[httpx.Response], None]:
    """A ``known_deviation`` hook for :func:`_expect_client_error` naming ``check``."""
    return lambda response: excuse(identity, check, response)


def _dump(body: Any) -> bytes:
    """JSON bytes of ``body`` (NaN and Infinity written as JavaScript literals)."""
    return json.dumps(body, allow_nan=True).encode()


@pytest.fixture(scope=at_most("module"))
def target(inference_server: InferenceServer, probe: ServerProbe) -> InferenceServer:
    """The server, once both request routes are known to answer."""
    probe.completions().require()
    probe.chat().require()
    return inference_server


@pytest.fixture(scope=at_most("module"))
def huge_tokens(inference_server: InferenceServer) -> int:
    """The smallest max_tokens that certainly exceeds the context."""
    return (inference_server.max_model_len or 2**31) + 1


# -- hypothesis ----------------------------------------------------------------------------------


@FUZZ
@given(path=PATHS, data=st.data())
def test_bad_max_tokens(
    target: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
    huge_tokens: int,
    path: str,
    data: st.DataObject,
) -> None:
    """max_tokens <= 0 or beyond the context is a 4xx."""
    value = data.draw(
        st.one_of(
            st.integers(max_value=0, min_value=-(2**70)),
            st.integers(min_value=huge_tokens, max_value=2**70),
        ),
        label="max_tokens",
    )
    body = {**_base(path, target.model), "max_tokens": value}
    _expect_client_error(
        session_http,
        path,
        _dump(body),
        f"max_tokens={value}",
        _deviation(engine_identity, "fuzz:max_tokens"),
    )


@FUZZ
@given(path=PATHS, data=st.data())
def test_out_of_range_sampling(
    target: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
    path: str,
    data: st.DataObject,
) -> None:
    """temperature outside [0, 2] (NaN and infinities too) and top_p outside (0, 1] are 4xx."""
    field, value = data.draw(
        st.one_of(
            st.tuples(
                st.just("temperature"),
                st.one_of(
                    st.floats(max_value=-1e-6),
                    st.floats(min_value=2.001),
                    st.just(math.nan),
                    st.just(math.inf),
                    st.just(-math.inf),
                ),
            ),
            st.tuples(
                st.just("top_p"),
                st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.001), st.just(math.nan)),
            ),
        ),
        label="field",
    )
    body = {**_base(path, target.model), field: value}
    _expect_client_error(
        session_http,
        path,
        _dump(body),
        f"{field}={value!r}",
        _deviation(engine_identity, "fuzz:sampling"),
    )


@FUZZ
@given(path=PATHS, name=st.text(min_size=1, max_size=40))
def test_unknown_model(
    target: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
    path: str,
    name: str,
) -> None:
    """A model name the server does not serve is a 4xx (OpenAI: 404)."""
    hypothesis.assume(name != target.model)
    body = {**_base(path, target.model), "model": name}
    _expect_client_error(
        session_http,
        path,
        _dump(body),
        f"model={name!r}",
        _deviation(engine_identity, "fuzz:unknown model"),
    )


WRONG_TYPES = st.one_of(
    st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=3),
    st.lists(
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), min_size=1, max_size=3
    ),
    NOT_A_NUMBER,
)


@FUZZ
@given(path=PATHS, data=st.data())
def test_wrong_types(
    target: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
    path: str,
    data: st.DataObject,
) -> None:
    """Numbers, prompts, messages and stop given as values of the wrong type are 4xx."""
    numeric = ["max_tokens", "temperature", "top_p", "n", "seed", "presence_penalty"]
    if path == COMPLETIONS:
        field = data.draw(st.sampled_from([*numeric, "prompt", "stop", "logprobs"]), label="field")
        value = data.draw(
            st.one_of(
                st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=3),
                st.floats(allow_nan=False),
                st.lists(
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                    min_size=1,
                    max_size=3,
                ),
            )
            if field == "prompt"
            else st.one_of(
                st.integers(),
                st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
            )
            if field == "stop"
            else WRONG_TYPES,
            label="value",
        )
    else:
        field = data.draw(st.sampled_from([*numeric, "messages", "stop"]), label="field")
        value = data.draw(
            st.one_of(
                st.text(max_size=10),
                st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                st.lists(st.integers(), min_size=1, max_size=3),
                st.lists(st.text(max_size=5), min_size=1, max_size=3),
                st.lists(
                    st.fixed_dictionaries({"role": st.integers(), "content": st.text(max_size=5)}),
                    min_size=1,
                    max_size=2,
                ),
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "role": st.just("user"),
                            "content": st.dictionaries(
                                st.text(max_size=3), st.integers(), min_size=1, max_size=2
                            ),
                        }
                    ),
                    min_size=1,
                    max_size=2,
                ),
            )
            if field == "messages"
            else st.one_of(
                st.integers(),
                st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
            )
            if field == "stop"
            else WRONG_TYPES,
            label="value",
        )
    body = {**_base(path, target.model), field: value}
    _expect_client_error(
        session_http,
        path,
        _dump(body),
        f"{field}={str(value)[:80]!r}",
        _deviation(engine_identity, "fuzz:wrong types"),
    )


@FUZZ
@given(path=PATHS, data=st.data())
def test_malformed_json(
    target: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
    path: str,
    data: st.DataObject,
) -> None:
    """A truncated body, non-JSON text, or a JSON value that is not an object is a 4xx."""
    valid = _dump(_base(path, target.model))
    payload = data.draw(
        st.one_of(
            st.integers(min_value=0, max_value=len(valid) - 1).map(lambda cut: valid[:cut]),
            st.text(max_size=40).filter(_not_json).map(str.encode),
            st.sampled_from([b"null", b"[]", b"42", b'"text"', b"true", b"[{}]"]),
        ),
        label="payload",
    )
    _expect_client_error(
        session_http,
        path,
        payload,
        "malformed JSON",
        _deviation(engine_identity, "fuzz:malformed json"),
    )


def _decodes(raw: bytes) -> bool:
    """True when ``raw`` is valid UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _not_json(text: str) -> bool:
    """True when ``text`` does not parse as JSON at all."""
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@FUZZ
@given(path=PATHS, data=st.data())
def test_invalid_utf8(
    target: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
    path: str,
    data: st.DataObject,
) -> None:
    """Bytes that are not UTF-8 inside the prompt or message text are a 4xx."""
    bad = data.draw(st.lists(st.sampled_from(INVALID_UTF8), min_size=1, max_size=3), label="bad")
    # Pieces that are invalid alone can join into valid UTF-8 (b"\xe2\x82" + b"\x80" is U+2080):
    # only bodies whose joined bytes do not decode are bad input.
    hypothesis.assume(not _decodes(b"".join(bad)))
    left = data.draw(st.text(alphabet="abc xyz", max_size=8), label="left")
    marker = "@@BAD@@"
    body = _base(path, target.model)
    if path == CHAT:
        body["messages"][0]["content"] = left + marker
    else:
        body["prompt"] = left + marker
    payload = _dump(body).replace(marker.encode(), b"".join(bad))
    _expect_client_error(
        session_http,
        path,
        payload,
        f"invalid UTF-8 {b''.join(bad)!r}",
        _deviation(engine_identity, "fuzz:invalid utf-8"),
    )


@FUZZ
@given(path=PATHS, empty=st.sampled_from(["", [], [[]]]))
def test_empty_prompt_or_messages(
    target: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
    path: str,
    empty: Any,
) -> None:
    """An empty prompt (completions) or an empty message list (chat) is a 4xx."""
    body = _base(path, target.model)
    if path == CHAT:
        body["messages"] = []
        label = "messages=[]"
    else:
        body["prompt"] = empty
        label = f"prompt={empty!r}"
    _expect_client_error(
        session_http, path, _dump(body), label, _deviation(engine_identity, "fuzz:empty")
    )


# -- named cases -------------------------------------------------------------------------------

NAMED_CASES: dict[str, tuple[str, dict[str, Any] | bytes]] = {
    "negative max_tokens": (COMPLETIONS, {"max_tokens": -1}),
    "max_tokens 2**64": (CHAT, {"max_tokens": 2**64}),
    "temperature -1": (CHAT, {"temperature": -1.0}),
    "temperature 1e9": (COMPLETIONS, {"temperature": 1e9}),
    "unknown model": (CHAT, {"model": "no-such-model"}),
    "prompt is an object": (COMPLETIONS, {"prompt": {"text": "hi"}}),
    "max_tokens is a word": (CHAT, {"max_tokens": "many"}),
    "messages is a string": (CHAT, {"messages": "Hello"}),
    "empty messages": (CHAT, {"messages": []}),
    "empty prompt": (COMPLETIONS, {"prompt": ""}),
    "n=0": (COMPLETIONS, {"n": 0}),
    "logprobs 1000": (COMPLETIONS, {"logprobs": 1000}),
    "top_k=2**64": (COMPLETIONS, {"top_k": 2**64}),
    "truncated JSON": (COMPLETIONS, b'{"model": "m", "prompt": "Hel'),
    "invalid UTF-8": (CHAT, b"INVALID_UTF8"),
}


SUCCESS_ALLOWED = frozenset({"top_k=2**64"})
"""Cases where a 200 is acceptable too: top_k (a vLLM extension) above the vocabulary size can
reasonably mean "no limit". A 5xx is never acceptable."""


def _named_payload(path: str, spec: dict[str, Any] | bytes, model: str) -> bytes:
    """Bytes to send for a named case."""
    if spec == b"INVALID_UTF8":
        body = _base(path, model)
        body["messages"][0]["content"] = "@@"
        return _dump(body).replace(b"@@", b"\xc3\x28\xff")
    if isinstance(spec, bytes):
        return spec
    return _dump({**_base(path, model), **spec})


@pytest.mark.parametrize("case", list(NAMED_CASES))
def test_named_bad_request(
    case: str,
    target: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
) -> None:
    """Each named bad request gets a 4xx JSON error and leaves the server healthy."""
    path, spec = NAMED_CASES[case]
    _expect_client_error(
        session_http,
        path,
        _named_payload(path, spec, target.model),
        case,
        lambda response: excuse(engine_identity, f"bad-input:{case}", response),
        success_allowed=case in SUCCESS_ALLOWED,
    )


SHAPE_CASES = ("negative max_tokens", "unknown model", "truncated JSON", "invalid UTF-8")


@pytest.mark.parametrize("case", SHAPE_CASES)
def test_error_body_has_openai_shape(
    case: str,
    target: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
) -> None:
    """Errors use the OpenAI shape {"error": {"message": ...}} that SDKs parse."""
    path, spec = NAMED_CASES[case]
    response = _send(session_http, path, _named_payload(path, spec, target.model), case)
    excuse(engine_identity, f"error-shape:{case}", response)
    assert 400 <= response.status_code < 500, f"{case}: HTTP {response.status_code}"
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and isinstance(error.get("message"), str), (
        f"{case}: error body is not OpenAI-shaped {{'error': {{'message': ...}}}}: "
        f"{str(body)[:200]}"
    )


FUZZ_CHECKS = (
    "fuzz:max_tokens",
    "fuzz:sampling",
    "fuzz:unknown model",
    "fuzz:wrong types",
    "fuzz:malformed json",
    "fuzz:invalid utf-8",
    "fuzz:empty",
)
OTHER_CHECKS = (
    "limits:prompt+max_tokens=context+1",
    "limits:prompt=context,max_tokens=1",
    "limits:prompt+max_tokens=context",
    "limits:max_tokens>context",
    "stream:include_usage",
    "n=3",
    "prompt list",
    "schemathesis",
    "sdk:bad request",
    "lora:broken adapter (weights that do not fit the model)",
    "structured:completions regex",
    "structured outputs",
    "tools:required",
    "tools:named",
    "tools:streamed",
    "tools:malformed:function without a name",
    "tools:malformed:tools is not a list",
    "tools:malformed:tool_choice names a tool not offered",
    "tools:result turn",
)
"""Checks outside this module that consult the deviation table."""


def test_known_deviations_are_listed() -> None:
    """Every deviation names a check that exists (no stale entries, no typos)."""
    for deviation in KNOWN_DEVIATIONS:
        kind, _, case = deviation.check.partition(":")
        if kind == "fuzz":
            assert deviation.check in FUZZ_CHECKS, f"deviation {deviation.check!r}: no such fuzz"
        elif deviation.check in OTHER_CHECKS:
            continue
        elif kind == "bad-input":
            assert case in NAMED_CASES, f"deviation {deviation.check!r} names no NAMED_CASES entry"
        elif kind == "error-shape":
            assert case in SHAPE_CASES, f"deviation {deviation.check!r} names no SHAPE_CASES entry"
        else:
            pytest.fail(f"deviation {deviation.check!r} names no check that consults the table")


def test_deviation_needs_the_exact_behaviour_and_strict_mode_fails_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A documented deviation matches only its own evidence, and never with STRICT set."""
    identity = ("llamacpp", "0.3.36")
    validation_500 = httpx.Response(
        500,
        json={"error": {"message": "1 validation error:\n  {'loc': ('body', 'max_tokens')}"}},
    )
    other_500 = httpx.Response(500, json={"error": {"message": "CUDA error"}})
    monkeypatch.delenv(STRICT_ENV, raising=False)
    assert known_deviation(identity, "bad-input:negative max_tokens", validation_500)
    assert not known_deviation(identity, "bad-input:negative max_tokens", other_500)
    assert not known_deviation(
        ("llamacpp", "9.9.9"), "bad-input:negative max_tokens", validation_500
    )
    assert not known_deviation(("vllm", "0.32.0"), "bad-input:negative max_tokens", validation_500)
    monkeypatch.setenv(STRICT_ENV, "1")
    assert not known_deviation(identity, "bad-input:negative max_tokens", validation_500)
