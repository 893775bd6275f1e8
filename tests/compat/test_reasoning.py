"""Reasoning: thinking and answer in separate fields, enable_thinking honoured through the chat
template, the parser's split of a forced output, streamed equal to non-streamed.

Runs where the server splits reasoning from content (probed; vLLM: --reasoning-parser, which
``--model builtin:qwen3`` sets). Random weights never end their thinking on their own, so what
is checked is the server's handling, not the model's reasoning (see compat.reasoning).
"""

from __future__ import annotations

import pytest

from pytest_gpuinfer.compat import reasoning
from pytest_gpuinfer.compat.target import CompatTarget
from pytest_gpuinfer.plugin.compat_outcomes import require, verdict


@pytest.fixture
def reasoning_target(compat_target: CompatTarget) -> CompatTarget:
    """The target, after the probe showed that it returns reasoning in its own field."""
    require(reasoning.probe(compat_target.probe), identity=compat_target.identity)
    return compat_target


def test_reasoning_has_its_own_field(reasoning_target: CompatTarget) -> None:
    """Thinking on: the reasoning is text in its own field and not in content."""
    verdict(reasoning_target.identity, reasoning.field_shapes(reasoning_target))


def test_enable_thinking_false_reaches_the_template(reasoning_target: CompatTarget) -> None:
    """enable_thinking false: a longer prompt (closed think block) and no reasoning."""
    verdict(reasoning_target.identity, reasoning.thinking_switch(reasoning_target))


def test_parser_splits_a_forced_output(reasoning_target: CompatTarget) -> None:
    """A forced output is split at the first end-of-thinking tag, nothing lost."""
    require(reasoning_target.probe.completions())
    require(reasoning_target.probe.tokenize_chat_route())
    verdict(reasoning_target.identity, reasoning.forced_split(reasoning_target))


def test_streamed_reasoning_equals_non_streamed(reasoning_target: CompatTarget) -> None:
    """Streamed reasoning and content deltas add up to the non-streamed message."""
    verdict(reasoning_target.identity, reasoning.streamed_equals_whole(reasoning_target))
