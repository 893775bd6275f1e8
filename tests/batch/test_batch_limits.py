"""Batch limits: the largest batch size and prompt length that complete, each failure classified.

The memory suite's boundary search (doubling, then bisection) runs over batch jobs on the
session's offline engine, whose KV cache is capped (``OFFLINE_KV_BLOCKS``) so the batch-size limit
is reached in seconds. After every failing probe a small canary job must complete: the engine
recovered, or the search stops and says it did not. Each search is judged on its failure class:
past the KV cache, rows are preempted (a graceful class); past the context, a clean rejection.
A failed job, a timeout (a hang) or a dead engine past the boundary fails the test, naming the
value and what was seen.
"""

from __future__ import annotations

from dataclasses import asdict

from pytest_gpuinfer.batch.analysis import batch_boundary
from pytest_gpuinfer.batch.engines import BatchJob
from pytest_gpuinfer.memory.boundary import (
    GRACEFUL,
    BoundaryResult,
    Outcome,
    class_verdict,
    recommend_batch,
)
from pytest_gpuinfer.metrics.verdicts import Verdict
from pytest_gpuinfer.plugin.batch_fixtures import OFFLINE_KV_BLOCKS

LONG_PROMPT = 120
"""With 32 output tokens a row crosses a 128-token KV block while decoding: two blocks per row."""
OUTPUT_TOKENS = 32
MAX_MODEL_LEN = 1024


def test_largest_batch_size(
    offline_batch_engine, batch_rows, batch_settings, batch_report, gpuinfer_verdicts
):
    """Past the KV cache's capacity rows are preempted: the limit and its class are found."""
    canary = BatchJob(batch_rows(2, 16), max_tokens=4, batch_size=2, time_limit_s=60)
    result = batch_boundary(
        offline_batch_engine,
        "batch size",
        lambda size: BatchJob(
            batch_rows(size, LONG_PROMPT),
            max_tokens=OUTPUT_TOKENS,
            batch_size=size,
            time_limit_s=90,
        ),
        canary,
        start=8,
        max_value=batch_settings.size(256, 1024),
    )
    text = result.describe() + "\n" + recommend_batch(result)
    verdict = class_verdict(result, GRACEFUL, source="past the KV cache rows are preempted")
    batch_report("batch-size-limit", _Doc(result.dimension, result, text, verdict), text=text)
    assert result.first_failure is not None, f"no limit found below {result.max_value}\n{text}"
    gpuinfer_verdicts.check([verdict], text)
    # Two blocks per row: the capped cache holds about OFFLINE_KV_BLOCKS / 2 rows at once.
    assert result.safe_value is not None and result.safe_value <= OFFLINE_KV_BLOCKS, text


def test_longest_prompt(offline_batch_engine, batch_rows, batch_report, gpuinfer_verdicts):
    """Prompts past the context length are refused cleanly (a clean rejection), and recovered."""
    canary = BatchJob(batch_rows(2, 16), max_tokens=4, batch_size=2, time_limit_s=60)
    result = batch_boundary(
        offline_batch_engine,
        "prompt tokens",
        lambda tokens: BatchJob(batch_rows(2, tokens), max_tokens=8, batch_size=2, time_limit_s=60),
        canary,
        start=128,
        max_value=2 * MAX_MODEL_LEN,
    )
    text = result.describe()
    verdict = class_verdict(result, {Outcome.CLIENT_ERROR}, source="vLLM refuses past the context")
    batch_report("prompt-length-limit", _Doc(result.dimension, result, text, verdict), text=text)
    assert result.first_failure is not None, text
    gpuinfer_verdicts.check([verdict], text)
    assert result.exact, text
    assert result.safe_value is not None and MAX_MODEL_LEN - 16 <= result.safe_value < MAX_MODEL_LEN


class _Doc:
    """A boundary result as a report document, with its failure-class verdict."""

    def __init__(self, name: str, result: BoundaryResult, text: str, verdict: Verdict) -> None:
        self.name, self.result, self.text, self.verdict = name, result, text, verdict

    def to_dict(self) -> dict[str, object]:
        """Dimension, safe value, first failure, probes with their classes, the verdict."""
        return {
            "kind": "batch-limit",
            "safe_value": self.result.safe_value,
            "text": self.text,
            "verdicts": [self.verdict.to_dict()],
            **asdict(self.result),
        }
