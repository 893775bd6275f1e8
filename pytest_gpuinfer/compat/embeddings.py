"""Embeddings: ``/v1/embeddings`` on a model served for pooling.

Shape and dimension, one input and a batch agree, the same input gives the same vector,
``encoding_format: base64`` carries the same floats, an input over the context is a 4xx about
the length, and ``/v1/models`` lists what is served. A generating server has no such route
(404): the checks then skip, naming how to serve a pooling model.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

from pytest_gpuinfer.compat import calls
from pytest_gpuinfer.compat.findings import (
    Feature,
    Finding,
    describe_response,
    error_message,
    short,
)
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.compat.target import CompatTarget

EMBEDDINGS = "/v1/embeddings"
TEXTS = ["The queue is empty.", "Tokens stream back to the client.", "3.14159"]
TOLERANCE = 1e-4
"""Largest difference allowed between two computations of one vector (batching reorders sums)."""


def probe(server: ServerProbe) -> Feature:
    """``POST /v1/embeddings`` returns a vector for one input."""

    def shape(body: Any) -> str | None:
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list) and data and isinstance(data[0].get("embedding"), list):
            return None
        return "without data[0].embedding"

    return server.request_once(
        "embeddings",
        "POST",
        EMBEDDINGS,
        {"model": server.model, "input": "Hello"},
        shape=shape,
        capability="embeddings",
    )


def embed(target: CompatTarget, inputs: Any, **extra: Any) -> dict[str, Any]:
    """The answer to one embeddings request (a failure with the response when not 200)."""
    return calls.post_ok(
        target.client, EMBEDDINGS, {"model": target.model, "input": inputs, **extra}
    )


def vectors(body: dict[str, Any], count: int, check: str) -> list[list[float]]:
    """The float vectors of an answer in index order; a failure when the shape is wrong."""
    data = body.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise calls.fail(
            check,
            f"{len(data) if isinstance(data, list) else data!r} entries for {count} inputs",
            short(json.dumps(body), 600),
        )
    ordered = sorted(data, key=lambda entry: entry.get("index", -1))
    indexes = [entry.get("index") for entry in ordered]
    if indexes != list(range(count)):
        raise calls.fail(check, f"indexes {indexes}, expected {list(range(count))}")
    found: list[list[float]] = []
    for entry in ordered:
        vector = entry.get("embedding")
        if (
            not isinstance(vector, list)
            or not vector
            or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in vector)
        ):
            raise calls.fail(
                check,
                f"entry {entry.get('index')} has no finite float vector",
                short(json.dumps(entry), 300),
            )
        found.append([float(x) for x in vector])
    return found


def largest_difference(a: list[float], b: list[float]) -> float:
    """The largest absolute difference between two vectors of one length (inf otherwise)."""
    if len(a) != len(b):
        return math.inf
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def shape_and_dimension(target: CompatTarget, expected_dimension: int | None) -> Finding:
    """One vector per input, every one of one dimension (the model's hidden size when known),
    with usage counting the prompt tokens and ``object`` fields as OpenAI writes them."""
    check = "embeddings:shape"
    body = embed(target, TEXTS)
    found = vectors(body, len(TEXTS), check)
    dimensions = {len(v) for v in found}
    if len(dimensions) != 1:
        return Finding.failed(check, f"vectors of several dimensions: {sorted(dimensions)}")
    dimension = dimensions.pop()
    if expected_dimension is not None and dimension != expected_dimension:
        return Finding.failed(
            check, f"dimension {dimension}, the model's hidden size is {expected_dimension}"
        )
    if body.get("object") != "list" or any(e.get("object") != "embedding" for e in body["data"]):
        return Finding.failed(
            check, "object fields are not 'list' / 'embedding'", short(json.dumps(body)[:600])
        )
    usage = body.get("usage") or {}
    if not isinstance(usage.get("prompt_tokens"), int) or usage["prompt_tokens"] < len(TEXTS):
        return Finding.failed(check, f"usage {usage} does not count the prompt tokens")
    return Finding.passed(check, f"{len(found)} vectors of dimension {dimension}")


def single_equals_batch(target: CompatTarget) -> Finding:
    """Each text embedded alone gives the vector it gets inside a batch."""
    check = "embeddings:single vs batch"
    batch = vectors(embed(target, TEXTS), len(TEXTS), check)
    for index, text in enumerate(TEXTS):
        alone = vectors(embed(target, text), 1, check)[0]
        gap = largest_difference(alone, batch[index])
        if gap > TOLERANCE:
            return Finding.failed(
                check, f"{text!r} alone differs from its batch vector by {gap:.2e}"
            )
    return Finding.passed(check, f"{len(TEXTS)} texts agree within {TOLERANCE:g}")


def deterministic(target: CompatTarget) -> Finding:
    """The same input twice gives the same vector."""
    check = "embeddings:deterministic"
    first, second = (vectors(embed(target, TEXTS[0]), 1, check)[0] for _ in range(2))
    gap = largest_difference(first, second)
    if gap > TOLERANCE:
        return Finding.failed(check, f"two calls differ by {gap:.2e}")
    return Finding.passed(check, f"equal within {TOLERANCE:g}")


def decode_base64(encoded: str) -> list[float]:
    """Little-endian float32 values from OpenAI's base64 embedding encoding."""
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def base64_equals_float(target: CompatTarget) -> Finding:
    """``encoding_format: base64`` decodes to the float vector."""
    check = "embeddings:base64"
    floats = vectors(embed(target, TEXTS[1]), 1, check)[0]
    body = embed(target, TEXTS[1], encoding_format="base64")
    encoded = (body.get("data") or [{}])[0].get("embedding")
    if not isinstance(encoded, str):
        return Finding.failed(
            check, f"the base64 embedding is {type(encoded).__name__}", short(json.dumps(body), 300)
        )
    try:
        decoded = decode_base64(encoded)
    except (ValueError, struct.error) as exc:
        return Finding.failed(check, f"not base64 float32: {exc}")
    gap = largest_difference(decoded, floats)
    if gap > TOLERANCE:
        return Finding.failed(
            check,
            f"decoded base64 differs from the floats by {gap:.2e} "
            f"({len(decoded)} vs {len(floats)} values)",
        )
    return Finding.passed(check, f"{len(decoded)} values equal")


def over_context_rejected(target: CompatTarget, max_context: int) -> Finding:
    """An input longer than the context is a 4xx that talks about the length; the server lives."""
    check = "embeddings:over the context"
    response = calls.post(
        target.client, EMBEDDINGS, {"model": target.model, "input": "word " * (max_context + 8)}
    )
    message = error_message(response)
    if not 400 <= response.status_code < 500:
        return Finding.failed(
            check, f"answered {response.status_code} instead of a 4xx", describe_response(response)
        )
    if not any(word in message.lower() for word in ("context", "length", "token")):
        return Finding.failed(check, f"the 4xx does not talk about the length: {message!r}")
    healthy = calls.health_after(target.client, "an over-long embeddings input")
    return (
        healthy if not healthy.ok else Finding.passed(check, f"{response.status_code}: {message}")
    )


def models_list(target: CompatTarget) -> Finding:
    """``/v1/models`` lists the served pooling model."""
    check = "embeddings:models"
    response = target.client.get("/v1/models")
    body = response.json() if response.status_code == 200 else None
    ids = [e.get("id") for e in (body or {}).get("data") or [] if isinstance(e, dict)]
    if target.model not in ids:
        return Finding.failed(check, f"{target.model!r} not in {ids}", describe_response(response))
    return Finding.passed(check, f"lists {target.model!r}")
