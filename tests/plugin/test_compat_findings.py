"""The feature checks' findings on scripted answers: each check red on the answer it exists to
catch, with the evidence in its message (no engine; httpx.MockTransport answers)."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat import adapters, caching, embeddings, reasoning, structured
from pytest_gpuinfer.compat.findings import Outcome
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.compat.target import CompatTarget

Handler = Callable[[str, dict[str, Any]], tuple[int, Any]]


def client_for(handler: Handler) -> httpx.Client:
    """An httpx client whose requests ``handler(path, body)`` answers."""

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        status, payload = handler(request.url.path, body)
        if isinstance(payload, str):
            return httpx.Response(status, text=payload)
        return httpx.Response(status, json=payload)

    return httpx.Client(base_url="http://fake", transport=httpx.MockTransport(answer))


def target_for(handler: Handler) -> CompatTarget:
    """A CompatTarget over ``handler`` with no local tokenizer and no tokenize route."""
    client = client_for(handler)
    probe = ServerProbe("http://fake", "m", transport=client._transport)
    return CompatTarget(client=client, model="m", identity=("fake", None), probe=probe)


def chat(content: Any, **message: Any) -> dict[str, Any]:
    """A chat completion answer with one message."""
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def test_guided_regex_ignored_fails_with_the_output() -> None:
    """A server that writes free text for a guided regex fails the guided check."""
    target = target_for(lambda path, body: (200, chat("free text")))
    finding = structured.guided_output(target, "regex")
    assert finding.outcome is Outcome.FAILURE
    assert "'free text' is not a text matching [ab]{3}-[0-9]{2}" in finding.detail
    assert '"free text"' in finding.evidence


def test_json_schema_output_breaking_the_schema_fails() -> None:
    """A json_schema answer outside the schema's enums fails, naming the broken rule."""
    target = target_for(lambda path, body: (200, chat('{"answer": "maybe", "score": 1}')))
    finding = structured.json_schema_output(target)
    assert finding.outcome is Outcome.FAILURE
    assert "'maybe' is not one of ['yes', 'no']" in finding.detail


def test_reasoning_split_that_loses_the_answer_fails() -> None:
    """The chat answer must split the raw text at the first end tag; a lost answer fails."""
    finding = reasoning._judge_split(
        "reasoning:forced split",
        "4</think>44",
        {"reasoning": "4", "content": None},
        {"choices": []},
    )
    assert finding.outcome is Outcome.FAILURE
    assert "content '' != the raw text after </think> '44'" in finding.detail
    assert "raw completion '4</think>44'" in finding.evidence


def test_reasoning_left_in_content_fails() -> None:
    """Thinking on, but the reasoning field missing: the field check fails."""
    target = target_for(lambda path, body: (200, chat("<think>hm</think>ok")))
    finding = reasoning.field_shapes(target)
    assert finding.outcome is Outcome.FAILURE and "no reasoning text" in finding.detail


def embedding(values: list[float], index: int = 0, encoded: bool = False) -> dict[str, Any]:
    """One embeddings data entry, as floats or as base64 float32."""
    vector: Any = values
    if encoded:
        vector = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return {"object": "embedding", "index": index, "embedding": vector}


def test_base64_that_decodes_to_other_values_fails() -> None:
    """base64 must decode to the float vector; other values fail with the difference."""

    def handler(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        encoded = body.get("encoding_format") == "base64"
        values = [0.5, 0.25] if encoded else [0.5, 0.75]
        return 200, {
            "object": "list",
            "data": [embedding(values, encoded=encoded)],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }

    finding = embeddings.base64_equals_float(target_for(handler))
    assert (
        finding.outcome is Outcome.FAILURE
        and "differs from the floats by 5.00e-01" in finding.detail
    )


def test_batch_vector_that_differs_from_the_single_fails() -> None:
    """A text embedded alone must equal its vector in a batch."""

    def handler(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        shift = 1.0 if len(inputs) > 1 else 0.0
        data = [embedding([float(i) + shift, 1.0], i) for i in range(len(inputs))]
        return 200, {"object": "list", "data": data, "usage": {"prompt_tokens": 9}}

    finding = embeddings.single_equals_batch(target_for(handler))
    assert finding.outcome is Outcome.FAILURE and "differs from its batch vector" in finding.detail


def completion(text: str, ids: list[int] | None = None) -> dict[str, Any]:
    """A completion answer with one choice."""
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "token_ids": ids, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_adapter_that_changes_nothing_fails() -> None:
    """An adapter whose outputs equal the base model's was not applied."""
    target = target_for(lambda path, body: (200, completion(" same")))
    finding = adapters.differs_and_stable(target, "m-lora")
    assert finding.outcome is Outcome.FAILURE and "the adapter was not applied" in finding.detail


def test_broken_adapter_loaded_and_listed_fails() -> None:
    """A broken adapter the server accepts (200, then listed) fails the refusal check."""
    models = {"object": "list", "data": [{"id": "m"}]}

    def handler(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path == adapters.LOAD:
            models["data"].append({"id": body["lora_name"], "parent": "m"})
            return 200, "Success"
        if path == "/v1/models":
            return 200, models
        return 200, {}

    target = target_for(handler)
    finding, _ = adapters.broken_refused(target, __import__("pathlib").Path("/nope"), "no such dir")
    assert finding.outcome is Outcome.FAILURE and "was loaded and listed" in finding.detail


def metrics_text(hits: float, drafts: float = 0.0, accepted: float = 0.0) -> str:
    """vLLM-style Prometheus counters."""
    return (
        "# TYPE vllm:prefix_cache_hits counter\n"
        f'vllm:prefix_cache_hits_total{{model_name="m"}} {hits}\n'
        "# TYPE vllm:spec_decode_num_draft_tokens counter\n"
        f'vllm:spec_decode_num_draft_tokens_total{{model_name="m"}} {drafts}\n'
        "# TYPE vllm:spec_decode_num_accepted_tokens counter\n"
        f'vllm:spec_decode_num_accepted_tokens_total{{model_name="m"}} {accepted}\n'
    )


def test_prefix_cache_that_never_hits_fails() -> None:
    """Identical outputs but a hit counter that never rises: the cache did not work."""

    def handler(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return (200, metrics_text(0.0)) if path == "/metrics" else (200, completion(" x", [7, 8]))

    finding = caching.prefix_cache_identical(client_for(handler), "m")
    assert finding.outcome is Outcome.FAILURE and "hit no cached tokens" in finding.detail


def test_prefix_cache_that_changes_the_output_fails() -> None:
    """Output from the cache must equal output without it."""
    calls = {"n": 0, "hits": 0.0}

    def handler(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path == "/metrics":
            return 200, metrics_text(calls["hits"])
        calls["n"] += 1
        calls["hits"] += 128.0 if calls["n"] > 1 else 0.0
        return 200, completion(" x", [7, calls["n"]])

    finding = caching.prefix_cache_identical(client_for(handler), "m")
    assert finding.outcome is Outcome.FAILURE and "output from the cache [7, 2]" in finding.detail


def test_speculative_decoding_that_changes_outputs_fails() -> None:
    """Greedy outputs with speculative decoding must equal those without."""
    plain = client_for(lambda path, body: (200, completion(" a", [1, 2])))
    counter = {"drafts": 0.0}

    def speculative(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path == "/metrics":
            counter["drafts"] += 3.0
            return 200, metrics_text(0.0, counter["drafts"], counter["drafts"] / 3)
        return 200, completion(" b", [1, 3])

    finding = caching.speculative_identical(plain, "m", client_for(speculative), "m")
    assert finding.outcome is Outcome.FAILURE
    assert "greedy outputs changed with speculative decoding" in finding.detail


def test_speculative_server_that_drafts_nothing_fails() -> None:
    """Equal outputs are not enough: the speculative server must have drafted tokens."""
    same = lambda path, body: (  # noqa: E731
        (200, metrics_text(0.0)) if path == "/metrics" else (200, completion(" a", [1, 2]))
    )
    finding = caching.speculative_identical(client_for(same), "m", client_for(same), "m")
    assert finding.outcome is Outcome.FAILURE and "drafted no tokens" in finding.detail


@pytest.mark.parametrize(
    ("status", "body", "available", "broken"),
    [
        (404, {"detail": "Not Found"}, False, False),
        (501, {"error": {"message": "not implemented"}}, False, False),
        (400, {"error": {"message": "bad"}}, False, True),
        (422, {"detail": [{"msg": "field required"}]}, False, True),
        (200, {"choices": []}, False, True),
    ],
)
def test_probe_calls_only_404_405_501_absent(
    status: int, body: Any, available: bool, broken: bool
) -> None:
    """400, 422 and a 200 without choices on a valid request are broken, not absent."""
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    found = ServerProbe("http://fake", "m", transport=transport).completions()
    assert (found.available, found.broken) == (available, broken), found


@pytest.mark.parametrize(
    ("message", "broken"),
    [
        ('tool_choice="required" requires --tool-call-parser to be set', False),
        ("tools are not allowed here", True),
    ],
)
def test_tool_probe_absent_only_where_the_engine_says_so(message: str, broken: bool) -> None:
    """A 400 on tools is absent only with the engine's own statement that they are off."""

    def answer(request: httpx.Request) -> httpx.Response:
        if b'"tools"' in request.content:
            return httpx.Response(400, json={"error": {"message": message}})
        return httpx.Response(200, json=chat("hi"))

    from pytest_gpuinfer.compat import tools

    found = tools.probe(ServerProbe("http://fake", "m", transport=httpx.MockTransport(answer)))
    assert not found.available and found.broken is broken, found


def test_chat_features_follow_a_broken_chat() -> None:
    """With chat itself broken, the tool probe is broken too (not absent)."""
    from pytest_gpuinfer.compat import tools

    transport = httpx.MockTransport(lambda request: httpx.Response(500, json={"error": {}}))
    found = tools.probe(ServerProbe("http://fake", "m", transport=transport))
    assert found.broken and "needs chat completions" in found.reason, found


def test_a_base_model_without_a_chat_template_has_no_chat() -> None:
    """vLLM's 400 about a missing chat template says chat is off: absent, not broken."""
    message = (
        "As of transformers v4.44, default chat template is no longer allowed, so you must "
        "provide a chat template if the tokenizer does not define one."
    )

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            return httpx.Response(400, json={"error": {"message": message}})
        return httpx.Response(200, json=completion(" x"))

    probe = ServerProbe("http://fake", "m", transport=httpx.MockTransport(answer))
    chat = probe.chat()
    assert not chat.available and not chat.broken and "--chat-template" in chat.reason
