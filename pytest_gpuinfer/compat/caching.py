"""Prefix caching and speculative decoding: greedy outputs identical with the feature on and off,
and the engine's own counters showing that it worked.

- Prefix caching: a prompt that starts with a fresh nonce cannot be in the cache, so its first
  request runs without it (off) and the identical second request reuses it (on). vLLM counts
  ``vllm:prefix_cache_hits_total`` (tokens served from the cache); the prompt spans several
  cache blocks (vLLM's CPU build uses 128-token blocks) so whole blocks can hit.
- Speculative decoding: two servers of one model, one with a speculative method (n-gram prompt
  lookup needs no draft model), the other without; vLLM counts drafted and accepted tokens
  (``vllm:spec_decode_num_draft_tokens_total``, ``..._accepted_tokens_total``). A repetitive
  prompt and a random model's loops give the n-gram proposer something to accept.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import httpx

from pytest_gpuinfer.compat import calls
from pytest_gpuinfer.compat.findings import Feature, Finding
from pytest_gpuinfer.compat.probe import ServerProbe

COMPLETIONS = "/v1/completions"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
SPEC_DRAFTS = "vllm:spec_decode_num_draft_tokens_total"
SPEC_ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
CACHE_CONFIG = "vllm:cache_config_info"

NGRAM_SPECULATION = {
    "method": "ngram",
    "num_speculative_tokens": 3,
    "prompt_lookup_min": 1,
    "prompt_lookup_max": 3,
}
"""vLLM's n-gram prompt lookup: no draft model, runs on the CPU build as on GPUs."""

PREFIX_WORDS = 24
"""Sentences of filler after the nonce: 300 to 500 tokens, more than two 128-token blocks."""

SPEC_PROMPTS = (
    "one two three one two three one two three one two three one two three",
    "The queue is empty. The queue is empty. The queue is empty. The queue is",
)
MAX_TOKENS = 32


def counters(client: httpx.Client) -> dict[str, float]:
    """Summed values of every sample in ``/metrics`` by name (empty when it cannot be read)."""
    from pytest_gpuinfer.metrics.engine_gauges import parse_metrics

    try:
        response = client.get("/metrics")
    except Exception:
        return {}
    if response.status_code != 200:
        return {}
    try:
        metrics = parse_metrics(response.text)
    except ValueError:
        return {}
    return {name: sum(float(s.value) for s in samples) for name, samples in metrics.items()}


def prefix_caching_enabled(client: httpx.Client) -> bool | None:
    """vLLM's ``cache_config_info`` label enable_prefix_caching, or None when not published."""
    from pytest_gpuinfer.metrics.engine_gauges import parse_metrics

    try:
        samples = parse_metrics(client.get("/metrics").text).get(CACHE_CONFIG) or []
    except (httpx.HTTPError, ValueError):
        return None
    for sample in samples:
        value = sample.labels.get("enable_prefix_caching")
        if value is not None:
            return value == "True"
    return None


def prefix_probe(server: ServerProbe) -> Feature:
    """The server caches prefixes and counts the hits in ``/metrics``."""

    def run() -> Feature:
        found = counters(server.client)
        if PREFIX_HITS not in found:
            return Feature(
                "prefix caching",
                False,
                f"/metrics has no {PREFIX_HITS} (no prefix-cache counters to read)",
            )
        if prefix_caching_enabled(server.client) is False:
            return Feature(
                "prefix caching",
                False,
                "switched off (vllm:cache_config_info enable_prefix_caching=False)",
            )
        return Feature("prefix caching", True, f"/metrics counts {PREFIX_HITS}")

    return server.cached("prefix caching", run)


def speculative_probe(server: ServerProbe) -> Feature:
    """The server decodes speculatively (``/metrics`` counts drafted tokens)."""

    def run() -> Feature:
        if SPEC_DRAFTS in counters(server.client):
            return Feature("speculative decoding", True, f"/metrics counts {SPEC_DRAFTS}")
        return Feature(
            "speculative decoding",
            False,
            f"/metrics has no {SPEC_DRAFTS} (vLLM: serve with --speculative-config)",
        )

    return server.cached("speculative decoding", run)


def greedy(client: httpx.Client, model: str, prompt: str) -> list[int] | str:
    """Greedy generation of ``prompt``: token ids where the server returns them, else text."""
    body = calls.post_ok(
        client,
        COMPLETIONS,
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "ignore_eos": True,
            "return_token_ids": True,
        },
    )
    choice = calls.choices_of(body, COMPLETIONS)[0]
    ids = choice.get("token_ids")
    return [int(i) for i in ids] if isinstance(ids, list) and ids else str(choice.get("text"))


def prefix_prompt() -> str:
    """A prompt no earlier request shared: a fresh nonce first, then filler sentences."""
    filler = " ".join(
        f"Sentence {i} says the queue holds {i * 7 % 13} requests." for i in range(PREFIX_WORDS)
    )
    return f"Request {uuid.uuid4().hex}. {filler}"


@dataclass(frozen=True)
class Delta:
    """How much a counter rose across a piece of work."""

    name: str
    before: float
    after: float

    @property
    def rise(self) -> float:
        """after - before."""
        return self.after - self.before


def prefix_cache_identical(client: httpx.Client, model: str) -> Finding:
    """Greedy output without the cache (a fresh prefix) equals the output with it (the same
    prompt again), and the hit counter rose by at least one block's worth of tokens."""
    check = "caching:prefix"
    prompt = prefix_prompt()
    before = counters(client)
    cold = greedy(client, model, prompt)
    middle = counters(client)
    warm = greedy(client, model, prompt)
    after = counters(client)
    cold_hits = Delta(PREFIX_HITS, before.get(PREFIX_HITS, 0.0), middle.get(PREFIX_HITS, 0.0))
    warm_hits = Delta(PREFIX_HITS, middle.get(PREFIX_HITS, 0.0), after.get(PREFIX_HITS, 0.0))
    if cold != warm:
        return Finding.failed(
            check, f"output from the cache {warm!r} != output without it {cold!r}"
        )
    if cold_hits.rise > 0:
        return Finding.failed(
            check,
            f"the fresh prompt already hit the cache ({cold_hits.rise:g} "
            "tokens): the nonce did not make it new",
        )
    if warm_hits.rise <= 0:
        return Finding.failed(
            check,
            f"the repeated prompt hit no cached tokens ({PREFIX_HITS} "
            f"{warm_hits.before:g} -> {warm_hits.after:g})",
        )
    return Finding.passed(
        check, f"identical output; {warm_hits.rise:g} prompt tokens from the cache on the repeat"
    )


def speculative_identical(
    plain: httpx.Client, plain_model: str, speculative: httpx.Client, speculative_model: str
) -> Finding:
    """Greedy outputs of a server with speculative decoding equal those of one without, and the
    speculative one drafted tokens and had some accepted."""
    check = "caching:speculative decoding"
    before = counters(speculative)
    mismatches = []
    for prompt in SPEC_PROMPTS:
        off = greedy(plain, plain_model, prompt)
        on = greedy(speculative, speculative_model, prompt)
        if off != on:
            mismatches.append(
                f"{prompt[:30]!r}: with {json.dumps(on)[:200]} != without {json.dumps(off)[:200]}"
            )
    after = counters(speculative)
    drafts = Delta(SPEC_DRAFTS, before.get(SPEC_DRAFTS, 0.0), after.get(SPEC_DRAFTS, 0.0))
    accepted = Delta(SPEC_ACCEPTED, before.get(SPEC_ACCEPTED, 0.0), after.get(SPEC_ACCEPTED, 0.0))
    if mismatches:
        return Finding.failed(
            check, "greedy outputs changed with speculative decoding: " + "; ".join(mismatches)
        )
    if drafts.rise <= 0:
        return Finding.failed(
            check,
            f"the speculative server drafted no tokens ({SPEC_DRAFTS} "
            f"{drafts.before:g} -> {drafts.after:g})",
        )
    if accepted.rise <= 0:
        return Finding.failed(
            check, f"none of {drafts.rise:g} drafted tokens was accepted on repetitive prompts"
        )
    return Finding.passed(
        check, f"identical outputs; {accepted.rise:g} of {drafts.rise:g} drafted tokens accepted"
    )
