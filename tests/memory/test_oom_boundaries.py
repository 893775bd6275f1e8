"""OOM boundaries of a real engine: the largest prompt, max_tokens and batch it handles.

Each search doubles then bisects (a logarithmic number of probes, each counted), classifies
every probe (ok, clean 4xx, 5xx, timeout, crash, preemption storm), and checks after each
failing probe that a canary request still succeeds. Each search is judged on the failure class
it is named for: past the context a clean 4xx; past the KV cache a graceful refusal (a clean 4xx
or a preemption storm). A 5xx, a hang (timeout) or a crash anywhere past the boundary fails it,
naming the value and what was seen. The table of safe limits lands in the ``gpuinfer memory``
section of the terminal summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_gpuinfer.compat.probe import ProbeError, ServerProbe
from pytest_gpuinfer.compat.tokens import exact_length_prompt
from pytest_gpuinfer.memory.boundary import (
    GRACEFUL,
    TABLE_HEADER,
    BoundaryResult,
    Outcome,
    class_verdict,
    recommend_batch,
    search_boundary,
)
from pytest_gpuinfer.memory.http_probes import OpenAIBoundaryProbes
from pytest_gpuinfer.plugin.ci import in_ci
from pytest_gpuinfer.plugin.verdicts import VerdictGate
from pytest_gpuinfer.targets import InferenceServer

IN_CI = in_ci()
PROBE_TIMEOUT_S = 60.0
BATCH_MAX = 64 if IN_CI else 128
BATCH_PROMPT_TOKENS = 200
BATCH_MAX_TOKENS = 256


def probe_budget(start: int, max_value: int) -> int:
    """Doubling (log2(max / start) + 1 probes) plus bisection (at most log2(max) probes)."""
    return math.ceil(math.log2(max_value / start)) + 1 + math.ceil(math.log2(max_value))


@pytest.fixture(scope="module")
def probes(small_kv_server: InferenceServer) -> OpenAIBoundaryProbes:
    """Boundary probes against the small-KV server (vLLM's ignore_eos: full-length outputs)."""
    return OpenAIBoundaryProbes(
        small_kv_server.base_url,
        small_kv_server.model,
        headers=small_kv_server.auth_headers(),
        timeout_s=PROBE_TIMEOUT_S,
        alive=small_kv_server.alive,
        extra_body={"ignore_eos": True},
    )


@pytest.fixture(scope="module")
def prompt_of_length(small_kv_server: InferenceServer) -> Iterator[Callable[[int], str]]:
    """Prompts of exactly n tokens as the server counts them (its /tokenize route)."""
    tokenizer = ServerProbe(
        small_kv_server.base_url, small_kv_server.model, headers=small_kv_server.auth_headers()
    )
    tokenizer.tokenize_route().require()

    def build(n: int) -> str:
        return exact_length_prompt(lambda text: len(tokenizer.tokenize(text)), n)

    yield build
    tokenizer.close()


CONTEXT_REFUSAL = frozenset({Outcome.CLIENT_ERROR})
"""Past the context vLLM refuses the request with a 400 and stays up."""


def check_search(result: BoundaryResult, server: InferenceServer) -> None:
    """A search must stay within its probe budget and leave the server running."""
    budget = probe_budget(result.start, result.max_value)
    assert result.probe_count <= budget, f"{result.probe_count} probes > budget {budget}"
    assert server.alive(), f"the server died during the search:\n{server.log_tail(40)}"


def test_prompt_length_limit_is_the_max_context(
    small_kv_server: InferenceServer,
    probes: OpenAIBoundaryProbes,
    prompt_of_length: Callable[[int], str],
    memory_report: Callable[..., None],
    gpuinfer_report: Any,
    gpuinfer_verdicts: VerdictGate,
) -> None:
    max_len = small_kv_server.max_model_len
    assert max_len, "the server did not report max_model_len in /v1/models"

    def build(n: int) -> str:
        try:
            return prompt_of_length(n)
        except ProbeError as exc:
            pytest.fail(f"could not build a {n}-token prompt: {exc}", pytrace=False)

    result = search_boundary(
        "prompt tokens",
        probes.prompt_length_probe(build),
        start=16,
        max_value=2 * max_len,
        canary=probes.canary,
        log_tail=small_kv_server.log_tail,
        progress=gpuinfer_report.progress().update,
    )
    verdict = class_verdict(result, CONTEXT_REFUSAL, source="vLLM refuses past --max-model-len")
    memory_report(f"{TABLE_HEADER}\n{result.describe()}", result, [verdict])
    check_search(result, small_kv_server)
    assert result.first_failure is not None, result.describe()
    gpuinfer_verdicts.check([verdict], result.describe())
    # one output token is asked for, so the longest prompt is the context minus at most one
    assert result.safe_value is not None and max_len - 1 <= result.safe_value <= max_len, (
        f"prompt limit {result.safe_value} is not within one token of the context {max_len}\n"
        + result.describe()
    )


def test_max_tokens_limit(
    small_kv_server: InferenceServer,
    probes: OpenAIBoundaryProbes,
    prompt_of_length: Callable[[int], str],
    memory_report: Callable[..., None],
    gpuinfer_report: Any,
    gpuinfer_verdicts: VerdictGate,
) -> None:
    max_len = small_kv_server.max_model_len
    assert max_len
    prompt_tokens = 8
    result = search_boundary(
        "max_tokens",
        probes.max_tokens_probe(prompt_of_length(prompt_tokens)),
        start=16,
        max_value=2 * max_len,
        canary=probes.canary,
        log_tail=small_kv_server.log_tail,
        progress=gpuinfer_report.progress().update,
    )
    verdict = class_verdict(result, CONTEXT_REFUSAL, source="vLLM refuses past --max-model-len")
    memory_report(f"{TABLE_HEADER}\n{result.describe()}", result, [verdict])
    check_search(result, small_kv_server)
    assert result.first_failure is not None, result.describe()
    gpuinfer_verdicts.check([verdict], result.describe())
    # vLLM refuses max_tokens above the context and caps the rest to what the context leaves
    assert result.safe_value is not None
    assert max_len - prompt_tokens <= result.safe_value <= max_len, result.describe()


def test_batch_limit_with_its_class(
    small_kv_server: InferenceServer,
    probes: OpenAIBoundaryProbes,
    prompt_of_length: Callable[[int], str],
    memory_report: Callable[..., None],
    gpuinfer_report: Any,
    gpuinfer_verdicts: VerdictGate,
) -> None:
    result = search_boundary(
        "batch size",
        probes.batch_probe(prompt_of_length(BATCH_PROMPT_TOKENS), BATCH_MAX_TOKENS),
        start=1,
        max_value=BATCH_MAX,
        canary=probes.canary,
        log_tail=small_kv_server.log_tail,
        progress=gpuinfer_report.progress().update,
    )
    recommendation = recommend_batch(result)
    verdict = class_verdict(
        result,
        GRACEFUL,
        source="a batch too big for the KV cache is refused or queued, not a crash",
    )
    memory_report(
        f"{TABLE_HEADER}\n{result.describe()}\n{recommendation}\n"
        f"(prompt {BATCH_PROMPT_TOKENS} tokens, max_tokens {BATCH_MAX_TOKENS}, "
        f"KV cache of {small_kv_server.max_model_len}-token context server: see conftest)",
        result,
        [verdict],
    )
    check_search(result, small_kv_server)
    assert result.first_failure is not None, (
        f"no batch size up to {BATCH_MAX} failed against a 20-block KV cache:\n" + result.describe()
    )
    gpuinfer_verdicts.check([verdict], result.describe())
    assert result.exact and result.safe_value is not None, result.describe()
