"""OpenAPI: the server's /openapi.json names the routes we test; schemathesis fuzzes them.

The schemathesis run is optional (it is not a dependency): it generates schema-violating bodies
for the inference routes and requires a 4xx for each, with /health 200 afterwards.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from compat_helpers import assert_healthy, at_most

from pytest_gpuinfer.targets import InferenceServer

ROUTES = ("/v1/completions", "/v1/chat/completions")
FUZZED = (*ROUTES, "/tokenize", "/detokenize")
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
) -> None:
    """Bodies that violate the server's own schema get a 4xx, never a 5xx, for each route."""
    schemathesis = pytest.importorskip(
        "schemathesis", reason="schemathesis is not installed (optional: pip install schemathesis)"
    )
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
    problems: list[str] = []

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
        response = case.call(base_url=inference_server.base_url, headers=headers, timeout=60)
        if not 400 <= response.status_code < 500:
            problems.append(
                f"HTTP {response.status_code} for body {str(case.body)[:200]}: "
                f"{response.text[:200]}"
            )
        assert_healthy(session_http, f"schemathesis case on {route}")

    fuzz()
    assert not problems, (
        f"{len(problems)} schema-violating bodies on POST {route} were not rejected with 4xx; "
        f"first: {problems[:3]}"
    )
