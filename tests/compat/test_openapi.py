"""OpenAPI: the server's /openapi.json names the routes we test; schemathesis fuzzes them.

The schemathesis run is optional (it is not a dependency): it generates schema-violating bodies
for the inference routes and requires a 4xx for each, with the server still up afterwards. Only
cases whose body schemathesis itself marks invalid count: its negative mode may instead break a
header and leave the body valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat.calls import require_healthy
from pytest_gpuinfer.compat.deviations import known_deviation
from pytest_gpuinfer.plugin.compat_outcomes import excuse_all
from pytest_gpuinfer.plugin.extras import require
from pytest_gpuinfer.targets import InferenceServer

from .compat_helpers import at_most

ROUTES = ("/v1/completions", "/v1/chat/completions")
FUZZED = (*ROUTES, "/tokenize", "/detokenize", "/extras/tokenize", "/extras/detokenize")
"""Routes fuzzed by schemathesis (never admin routes such as sleep, pause or scaling)."""
MAX_EXAMPLES = 30
"""At most this many schemathesis cases per route (fewer when the hypothesis profile says so)."""


@pytest.fixture(scope=at_most("module"))
def openapi_doc(session_http: httpx.Client) -> dict[str, Any]:
    """The server's OpenAPI document; skips when it publishes none."""
    response = session_http.get("/openapi.json")
    if response.status_code in (401, 403, 404, 405):
        pytest.skip(f"GET /openapi.json answered {response.status_code}: no OpenAPI document")
    assert response.status_code == 200, f"GET /openapi.json answered {response.status_code}"
    try:
        doc = response.json()
    except ValueError:
        pytest.fail(f"/openapi.json is not JSON: {response.text[:200]!r}", pytrace=False)
    assert isinstance(doc, dict), f"/openapi.json is not an object: {str(doc)[:200]}"
    return doc


def test_openapi_lists_the_inference_routes(openapi_doc: dict[str, Any]) -> None:
    """/openapi.json is an OpenAPI 3 document with POST on the completion routes."""
    version = str(openapi_doc.get("openapi", ""))
    assert version.startswith("3."), f"/openapi.json declares openapi {version!r}, not 3.x"
    paths = openapi_doc.get("paths") or {}
    missing = [route for route in ROUTES if "post" not in (paths.get(route) or {})]
    assert not missing, f"/openapi.json lacks POST {missing}; it has {sorted(paths)[:30]}"


@pytest.mark.parametrize("route", FUZZED)
def test_schemathesis_negative_bodies_get_4xx(
    route: str,
    openapi_doc: dict[str, Any],
    inference_server: InferenceServer,
    session_http: httpx.Client,
    engine_identity: tuple[str, str | None],
) -> None:
    """Bodies that violate the server's own schema get a 4xx, never a 5xx, for each route."""
    schemathesis = require("schemathesis")
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hyp_settings

    if not hasattr(schemathesis, "openapi") or not hasattr(schemathesis, "GenerationMode"):
        pytest.skip("this schemathesis version lacks the 4.x Python API used here")
    if "post" not in ((openapi_doc.get("paths") or {}).get(route) or {}):
        pytest.skip(f"/openapi.json has no POST {route}")
    schema = schemathesis.openapi.from_dict(openapi_doc)
    operation = schema[route]["POST"]
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
    headers = inference_server.auth_headers()
    lax_valid = lax_body_check(openapi_doc, route)
    problems: list[str] = []
    answers: list[httpx.Response] = []

    @hyp_settings(
        max_examples=max(
            1, min((hyp_settings.default or hyp_settings()).max_examples, MAX_EXAMPLES)
        ),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def fuzz(case: Any) -> None:
        if not violates_body_schema(case) or lax_valid(case.body):
            # Schemathesis made another part invalid (a header, say) and marks this body
            # valid, or the body breaks the schema only in ways pydantic's lax mode accepts
            # (true for 1, "2" for 2): it is no schema-violating body, its answer proves nothing.
            counts["valid body"] += 1
            return
        counts["violating"] += 1
        response = case.call(base_url=inference_server.base_url, headers=headers, timeout=60)
        if not 400 <= response.status_code < 500:
            answers.append(
                httpx.Response(
                    response.status_code,
                    headers=[(k, v) for k, vs in response.headers.items() for v in vs],
                    content=response.content,
                )
            )
            problems.append(
                f"HTTP {response.status_code} for body {str(case.body)[:200]}: "
                f"{response.text[:200]}"
            )
        require_healthy(session_http, f"schemathesis case on {route}")

    counts = {"violating": 0, "valid body": 0}
    fuzz()
    assert counts["violating"], (
        f"none of the {counts['valid body']} cases schemathesis generated for POST {route} had a "
        "schema-violating body: the check tested nothing"
    )
    if problems:
        excuse_all(engine_identity, "schemathesis", answers)
        # Show first the answers no documented deviation explains.
        unexplained = [
            problem
            for problem, answer in zip(problems, answers, strict=True)
            if known_deviation(engine_identity, "schemathesis", answer) is None
        ]
        problems = unexplained + [p for p in problems if p not in unexplained]
    assert not problems, (
        f"{len(problems)} of {counts['violating']} schema-violating bodies on POST {route} were "
        f"not rejected with 4xx; first: {problems[:3]}"
    )


LAX_BOOLEAN_STRINGS = frozenset(
    ("0", "1", "f", "t", "n", "y", "no", "yes", "on", "off", "true", "false")
)
"""Strings pydantic's lax mode reads as booleans (as it reads the integers 0 and 1)."""


def lax_body_check(doc: dict[str, Any], route: str) -> Callable[[Any], bool]:
    """Whether a body is valid for ``route`` with pydantic's lax types (1 for true, "2" for 2,
    0, 1.0 or "yes" for a boolean)."""
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import SchemaError
    from referencing import Registry, Resource
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    content = ((doc["paths"][route]["post"].get("requestBody") or {}).get("content")) or {}
    schema = (content.get("application/json") or {}).get("schema")
    if not isinstance(schema, dict):
        return lambda body: False
    registry: Registry[Any] = Registry().with_resource(
        "urn:openapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )

    def numeric(value: Any, integer: bool) -> bool:
        if isinstance(value, bool):
            return True
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return False
            return not integer or number.is_integer()
        if isinstance(value, float):
            return not integer or value.is_integer()
        return isinstance(value, int)

    def boolean(value: Any) -> bool:
        if isinstance(value, bool):
            return True
        if isinstance(value, int | float):
            return value in (0, 1)  # pydantic reads 0.0 and 1.0 as booleans too
        return isinstance(value, str) and value.lower() in LAX_BOOLEAN_STRINGS

    checker = Draft202012Validator.TYPE_CHECKER.redefine_many(
        {
            "integer": lambda _, value: numeric(value, True),
            "number": lambda _, value: numeric(value, False),
            "boolean": lambda _, value: boolean(value),
        }
    )
    lax = validators.extend(Draft202012Validator, type_checker=checker)
    rooted = {"$ref": "urn:openapi" + schema["$ref"]} if "$ref" in schema else schema
    validator = lax(rooted, registry=registry)

    def valid(body: Any) -> bool:
        if isinstance(body, bytes | bytearray) or body is None:
            return False
        try:
            return bool(validator.is_valid(body))
        except (SchemaError, Unresolvable):
            return False

    return valid


def violates_body_schema(case: Any) -> bool:
    """True when schemathesis generated this case's body in negative (schema-violating) mode."""
    from schemathesis.core.parameters import ParameterLocation

    meta = getattr(case, "meta", None)
    return meta is not None and bool(meta.is_negative_at(ParameterLocation.BODY))


def test_only_bodies_schemathesis_marks_invalid_count_as_violating() -> None:
    """A negative case whose body schemathesis marks valid is not counted as violating."""
    schemathesis = require("schemathesis")
    jsonschema = require("jsonschema")
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hyp_settings

    body_schema = {
        "type": "object",
        "required": ["prompt"],
        "properties": {"prompt": {"type": "string"}},
        "additionalProperties": False,
    }
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/v1/completions": {
                "post": {
                    "parameters": [
                        {
                            "name": "X-Key",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": body_schema}},
                    },
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
    }
    operation = schemathesis.openapi.from_dict(doc)["/v1/completions"]["POST"]
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
    seen = {True: 0, False: 0}

    @hyp_settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(strategy)
    def classify(case: Any) -> None:
        violating = violates_body_schema(case)
        seen[violating] += 1
        if not violating:
            jsonschema.validate(case.body, body_schema)

    classify()
    assert seen[False] > 0, f"no case with a valid body and an invalid header was drawn: {seen}"


def test_lax_numbers_are_not_counted_as_schema_violations() -> None:
    """Booleans and numeric strings for numbers, 0/1, 0.0/1.0 and yes/no for booleans, are
    lax-valid; other type errors are not."""
    require("jsonschema")
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/v1/completions": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/R"}}
                        }
                    },
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
        "components": {
            "schemas": {
                "R": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "prompt": {"type": "string"},
                        "max_tokens": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                        "min_p": {"type": "number"},
                        "echo": {"type": "boolean"},
                    },
                }
            }
        },
    }
    valid = lax_body_check(doc, "/v1/completions")
    assert valid({"prompt": "x", "max_tokens": True, "min_p": False})
    assert valid({"prompt": "x", "max_tokens": "12", "min_p": "0.5"})
    assert valid({"prompt": "x", "echo": 0}) and valid({"prompt": "x", "echo": "yes"})
    # vLLM answered 200 to return_tokens_as_token_ids 0.0 in a CI run (2026-12-07): pydantic
    # reads 0.0 and 1.0 as booleans, so such a body is no schema violation
    assert valid({"prompt": "x", "echo": 0.0}) and valid({"prompt": "x", "echo": 1.0})
    assert not valid({"prompt": "x", "echo": 2}) and not valid({"prompt": "x", "echo": "maybe"})
    assert not valid({"prompt": "x", "echo": 0.5})
    assert not valid({"prompt": "x", "max_tokens": "many"})
    assert not valid({"prompt": "x", "max_tokens": 1.5})
    assert not valid({"prompt": "x", "max_tokens": [1]})
    assert not valid({"max_tokens": 1})
    assert not valid(b"\x00")
