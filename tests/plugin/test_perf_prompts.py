"""Exact-length prompts with the built-in model's own tokenizer, and the achieved-length report."""

from __future__ import annotations

import pytest

from pytest_gpuinfer.compat.probe import ProbeError
from pytest_gpuinfer.compat.tokens import exact_length_prompt
from pytest_gpuinfer.load import prompts
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.workload import length_report
from pytest_gpuinfer.models import tinymodel


@pytest.fixture(scope="module")
def counter() -> prompts.LocalTokenizer:
    """The built-in model's tokenizer (tokenizer.json and chat template)."""
    return prompts.LocalTokenizer(tinymodel.ensure_model())


@pytest.mark.parametrize("tokens", [16, 128, 700])
def test_prompts_are_exactly_n_tokens_and_varied(
    counter: prompts.LocalTokenizer, tokens: int
) -> None:
    prompt_set = prompts.build_prompts(counter, tokens, count=16)
    assert prompt_set.exact and prompt_set.measured == [tokens] * 16
    assert [counter.count(p) for p in prompt_set] == [tokens] * 16
    assert len(set(prompt_set)) == 16, "varied prompts repeat"
    assert prompt_set.template_overhead_tokens is not None
    assert counter.count_chat(prompt_set[0]) == tokens + prompt_set.template_overhead_tokens
    assert f"16 x {tokens} tokens (exact" in prompt_set.describe()


def test_same_prompt_and_completions_overhead(counter: prompts.LocalTokenizer) -> None:
    same = prompts.build_prompts(counter, 32, count=4, varied=False, endpoint="completions")
    assert len(set(same)) == 1 and len(same) == 4
    assert same.template_overhead_tokens == counter.count_completion(same[0]) - 32


def test_without_a_tokenizer_the_prompts_say_they_are_approximate() -> None:
    prompt_set = prompts.build_prompts(None, 20, count=3)
    assert not prompt_set.exact and "APPROXIMATE" in prompt_set.describe()
    assert len(prompt_set[0].split()) == 20


def test_probe_reexport_keeps_probe_error() -> None:
    with pytest.raises(ProbeError, match="could not build a prompt of exactly 5 tokens"):
        exact_length_prompt(lambda text: 2 * len(text.split()), 5)


def test_length_report_puts_achieved_lengths_beside_the_asked_ones() -> None:
    """One request ended short: the report counts it and does not call the outputs exact; the
    prompts all differ from their asked length by the same template tokens: exact."""
    records = [
        RequestRecord(
            index=i,
            scheduled=0.0,
            end=1.0,
            prompt_tokens=134,
            completion_tokens=n,
            asked_input_tokens=128,
            asked_output_tokens=32,
        )
        for i, n in enumerate([32, 32, 20])
    ]
    report = length_report(records)
    assert (report.output_short, report.output_long) == (1, 0)
    assert not report.output_exact and report.input_exact
    first, second = report.text().splitlines()
    assert first.startswith("lengths: output tokens asked 32/32/32, achieved 20/32/32")
    assert "1 ended short, 0 ran long" in first and "(exact)" not in first
    assert "prompt tokens asked 128/128/128, sent 134/134/134; sent - asked +6..+6" in second
    exact = [r for r in records if r.completion_tokens == 32]
    assert length_report(exact).output_exact
